"""Cut each step's frame and audio window out of one stream's buffers, and decide when to.

The rules are those of :mod:`avbind.realtime.sync.windows`, the same ones training used: the step
at time ``t`` takes the latest frame at or before ``t`` and the log-mel window that ends at
``t + end_offset``. Live, the question is *when* that input is complete:

* video: once a frame at or after ``t`` has arrived (no later frame can still change the pick);
* audio: once the samples up to the window's end have arrived, or, if they are late, once the
  lookahead deadline has passed; the step then runs with what is there (silence for the rest)
  and is marked degraded.

Audio samples go into a fixed-memory ring; log-mel frames are computed incrementally (only new
hops, :class:`LogMelStream`) into a second ring the windows are cut from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avbind.realtime.backends.model_file import ModelInfo
from avbind.realtime.buffers.audio_ring import TimedRing, TimestampJump, ring_capacity
from avbind.realtime.buffers.frame_buffer import FrameBuffer
from avbind.realtime.features.frames import square_resize, to_model_input
from avbind.realtime.features.log_mel import LogMelStream
from avbind.realtime.sources.base import AudioChunk, VideoFrame
from avbind.realtime.sync.windows import EPSILON_S, log_mel_window_range

AUDIO_RING_S = 10.0  # s of raw samples kept
LOG_MEL_RING_S = 20.0  # s of log-mel frames kept (>> one window)


@dataclass
class StepInput:
    time: float  # stream time of the step
    capture: float  # monotonic capture time of the newest input it uses
    frame: np.ndarray  # (3, S, S) float32
    log_mel: np.ndarray  # (window_frames, n_mels) float32
    mask: tuple[float, float]  # (video present, audio present)
    degraded: bool  # audio arrived late (lookahead deadline) or partly missing


class StreamAligner:
    def __init__(self, info: ModelInfo, audio_wait_s: float = 0.25, frame_capacity: int = 64) -> None:
        self.info = info
        self.settings = info.features
        self.audio_wait_s = audio_wait_s  # s of wall time a step waits for late audio
        self.floor = float(np.log(self.settings.log_floor))
        self.frames = FrameBuffer(frame_capacity)
        sr = self.settings.sample_rate
        self.samples = TimedRing(sr, ring_capacity(sr, AUDIO_RING_S))
        mel_rate = sr / self.settings.hop
        self.log_mel = TimedRing(mel_rate, ring_capacity(mel_rate, LOG_MEL_RING_S), (self.settings.n_mels,),
                                 fill_value=self.floor)
        self._log_mel_stream = LogMelStream(self.settings)
        self._samples_read = 0
        self._last_audio_capture = 0.0
        self.degraded_steps = 0

    # Called from source threads ------------------------------------------------------------
    def add_frame(self, frame: VideoFrame) -> None:
        self.frames.push(frame)

    def add_audio(self, chunk: AudioChunk) -> None:
        """Raises TimestampJump when the chunk's time jumps; the stream then resets."""
        self.samples.write(chunk.samples, chunk.time)
        self._last_audio_capture = chunk.capture

    # Called from the engine thread ---------------------------------------------------------
    def reset(self) -> None:
        self.frames.clear()
        self.samples.reset()
        self.log_mel.reset()
        self._log_mel_stream.reset()
        self._samples_read = 0

    def reset_audio_features(self) -> None:
        """After an audio timestamp jump: the sample ring restarted, so restart the log-mel after it."""
        self.log_mel.reset()
        self._log_mel_stream.reset()
        self._samples_read = 0

    def pump(self) -> None:
        """Turn newly arrived samples into log-mel frames (each hop transformed once)."""
        if self.samples.start_time is None:
            return
        new, self._samples_read = self.samples.read_new(self._samples_read)
        if len(new):
            self.log_mel.write(self._log_mel_stream.push(new))

    def first_step_index(self, rate: float, video: bool) -> int | None:
        """The first step the buffered data can serve (a stream's steps start with its data).

        Never before time 0: a network stream's audio can arrive ahead of its first video frame
        with a slightly negative time (the timeline starts at the video's start), and a step -1
        would be a segment -1 that no subscriber expects.
        """
        start = self.frames.first_time if video else self.samples.start_time
        return None if start is None else max(0, math.ceil(start * rate - EPSILON_S))

    def _window(self, t: float) -> tuple[int, int]:
        return log_mel_window_range(t, self.settings, self.info.window_frames, self.info.audio_end_offset_s,
                                    self.samples.start_time or 0.0)

    def audio_reached(self, t: float) -> bool:
        if self.samples.start_time is None:
            return False
        return self._window(t)[1] <= self.log_mel.end

    def audio_end_time(self) -> float | None:
        """Stream time up to which audio has arrived."""
        return self.samples.end_time

    def cut(self, t: float, use_video: bool, use_audio: bool, capture: float | None = None) -> StepInput:
        size = self.info.input_size
        frame, have_frame = None, False
        if use_video:
            picked = self.frames.frame_at(t)
            if picked is not None:
                frame = to_model_input(square_resize(picked.rgb, size))
                capture, have_frame = picked.capture, True
        if frame is None:
            frame = np.zeros((3, size, size), np.float32)
        audio_ok = use_audio and self.samples.start_time is not None
        degraded = False
        if audio_ok:
            first, stop = self._window(t)
            window, missing = self.log_mel.read(first, stop)
            if missing:
                degraded = True
                self.degraded_steps += 1
            if missing >= stop - first:
                audio_ok = False
        else:
            window = np.full((self.info.window_frames, self.settings.n_mels), self.floor, np.float32)
        if capture is None:
            capture = self._last_audio_capture
        mask = (1.0 if have_frame else 0.0, 1.0 if audio_ok else 0.0)
        return StepInput(t, capture, frame, window, mask, degraded)


__all__ = ["StepInput", "StreamAligner", "TimestampJump"]
