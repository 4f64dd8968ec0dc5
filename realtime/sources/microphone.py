"""A sound card input (sounddevice/PortAudio) as an audio-only live source.

The PortAudio callback runs on a real-time audio thread, so it only copies the block, its capture
time and its overflow flag into a bounded queue; a worker thread resamples to the model's rate and
delivers. A slow consumer therefore costs counted, dropped blocks, never a glitching driver.

Timeline: the first block's capture time (``time.monotonic() - origin``) starts the audio run, and
each chunk's ``time`` is that start plus the samples emitted over the rate, so chunks join without
gaps or jitter (the one measurement that anchors the run keeps its few ms of error as an offset).
A block's capture time is PortAudio's ADC time of its first sample mapped onto ``time.monotonic()``
where the host API provides a plausible one, else the callback's arrival minus the block duration.
(ALSA's PulseAudio plugin, for one, claims blocks are 0.3 s old during the first 0.3 s: an ADC time
older than the stream's latency plus a block is not trusted.) When a block's measured time drifts
more than ``MAX_DRIFT_S`` from the continuous timeline (a stalled device, dropped blocks, clock
skew piling up), the run restarts at the measured time with a ``discontinuity`` status.

Overflows are counted as events (a flagged callback, a dropped block), not samples.
"""

from __future__ import annotations

import queue
import time

import numpy as np

from avbind.realtime.sources.base import AudioChunk, Source, SourceSink, SourceStatus
from avbind.realtime.sources.resample import AudioResampler

MAX_DRIFT_S = 0.2  # s; measured block time further than this from the continuous timeline: restart it
ADC_LAG_MARGIN_S = 0.05  # s; an ADC time older than the stream's latency + one block + this is not trusted
POLL_S = 0.1  # s; how often the worker looks at stop and at the stream's health
QUEUE_S = 1.0  # s of audio the worker may fall behind before blocks are dropped


class MicrophoneSource(Source):
    """``device``: a sounddevice index or (part of a) name, None for the default input.

    ``device_rate`` None uses the device's default rate; audio is resampled to ``sample_rate``.
    Channels are averaged to mono. ``stall_warning_s`` without any block gives a warning status.
    """

    has_video = False
    has_audio = True

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate: int = 16_000,
        device_rate: int | None = None,
        channels: int = 1,
        block_s: float = 0.02,
        stall_warning_s: float = 2.0,
    ) -> None:
        super().__init__()
        if block_s <= 0 or channels < 1:
            raise ValueError(f"need block_s > 0 and channels >= 1, got {block_s}, {channels}")
        self.device = device
        self.name = f"microphone {device if device is not None else 'default'}"
        self.sample_rate = int(sample_rate)
        self.device_rate = device_rate  # set from the device when the stream opens, if None
        self.channels = channels
        self.block_s = float(block_s)
        self.stall_warning_s = float(stall_warning_s)
        self._blocks: queue.Queue[tuple[np.ndarray, float, float]] = queue.Queue(
            maxsize=max(2, round(QUEUE_S / self.block_s))
        )
        self._callback_rate = 0  # Hz, for the callback's fallback timestamp
        self._max_adc_lag = 0.0  # s; set when the stream opens

    def _callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """PortAudio's audio thread: copy and queue, nothing else."""
        now = time.monotonic()
        adc, current = time_info.inputBufferAdcTime, time_info.currentTime
        lag = current - adc  # s the block's first sample is old, on PortAudio's stream clock
        usable = adc > 0 and current > 0 and 0 <= lag <= self._max_adc_lag
        captured = now - lag if usable else now - frames / self._callback_rate
        if status.input_overflow:
            self.counters.audio_overflows += 1
        try:
            self._blocks.put_nowait((indata.copy(), captured, now))
        except queue.Full:
            self.counters.audio_overflows += 1

    def _serve(self, sink: SourceSink, origin: float) -> None:
        try:
            import sounddevice  # raises OSError where the PortAudio library is missing

            rate = self.device_rate or round(sounddevice.query_devices(self.device, "input")["default_samplerate"])
            self._callback_rate = rate
            stream = sounddevice.InputStream(
                device=self.device, samplerate=rate, channels=self.channels, dtype="float32",
                blocksize=max(1, round(self.block_s * rate)), callback=self._callback,
            )  # fmt: skip
            self._max_adc_lag = float(stream.latency) + self.block_s + ADC_LAG_MARGIN_S
            stream.start()
        except Exception as err:  # PortAudioError, a missing device (ValueError), no PortAudio (OSError)
            self.counters.errors += 1
            sink.on_status(SourceStatus("error", f"{self.name}: cannot open ({err})", ended=True))
            return
        self.device_rate = rate
        try:
            self._pump(stream, sink, origin)
        finally:
            try:
                stream.stop()
                stream.close()
            except Exception:  # closing a device that vanished may fail too; nothing is left to save
                pass

    def _pump(self, stream: object, sink: SourceSink, origin: float) -> None:
        resampler: AudioResampler | None = None
        run_start = 0.0  # s, stream time of the current run's first sample
        last_block = time.monotonic()
        stall_reported = False
        while not self.stopped:
            try:
                block, captured, arrived = self._blocks.get(timeout=POLL_S)
            except queue.Empty:
                if not stream.active:
                    self.counters.errors += 1
                    sink.on_status(SourceStatus("error", f"{self.name}: input stream stopped", ended=True))
                    return
                silent = time.monotonic() - last_block
                if silent > self.stall_warning_s and not stall_reported:
                    sink.on_status(SourceStatus("warning", f"{self.name}: no audio for {silent:.1f} s"))
                    stall_reported = True
                continue
            last_block, stall_reported = arrived, False
            measured = captured - origin
            if resampler is not None:
                drift = measured - (run_start + resampler.in_samples / self.device_rate)
                if abs(drift) > MAX_DRIFT_S:
                    self._deliver(resampler.flush(), run_start, resampler, arrived, sink)
                    resampler = None
                    self.counters.errors += 1
                    message = f"{self.name}: audio timeline off by {drift:+.2f} s (device stalled or blocks lost)"
                    sink.on_status(SourceStatus("warning", message, discontinuity=True))
            if resampler is None:
                resampler, run_start = AudioResampler(self.device_rate, self.sample_rate), measured
            self._deliver(resampler.resample(block), run_start, resampler, arrived, sink)

    def _deliver(
        self, samples: np.ndarray, run_start: float, resampler: AudioResampler, arrived: float, sink: SourceSink
    ) -> None:
        if not len(samples):
            return
        t = run_start + (resampler.out_samples - len(samples)) / self.sample_rate
        sink.on_audio(AudioChunk(samples=samples, time=t, capture=arrived))
        self.counters.audio_samples += len(samples)
