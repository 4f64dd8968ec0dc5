"""One live stream inside the engine: its sources, buffers, model state, step cursor and outputs.

The stream decides *which* step is next and *whether* it can run now (see
:mod:`avbind.realtime.sync.stream_aligner` for when input is complete); the scheduler decides how
the steps of all streams are batched into backend calls.

Steps run at the model's step rate on the stream timeline (``k / step_rate_hz``), whatever the
camera's frame rate. When the engine falls behind, steps whose frame is older than ``max_lag_s``
are skipped (counted) rather than queued, so latency stays bounded. A discontinuity (a reconnect,
a seek, a jump in audio timestamps) resets the model state and the buffers.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avbind.realtime.backends.model_file import ModelInfo
from avbind.realtime.buffers.audio_ring import TimestampJump
from avbind.realtime.postprocess.stream_outputs import Message, OutputSettings, StreamOutputs
from avbind.realtime.sources.base import AudioChunk, Source, SourceStatus, VideoFrame
from avbind.realtime.sync.stream_aligner import StepInput, StreamAligner
from avbind.realtime.sync.windows import EPSILON_S


@dataclass(frozen=True)
class StreamSettings:
    audio_wait_s: float = 0.25  # s of wall time a step waits for late audio, then runs degraded
    max_lag_s: float = 0.5  # s: a step whose frame is older than this is skipped if a newer step is ready
    outputs: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        # nan compares false with everything, so it would disable both checks silently; reject it here.
        if not (math.isfinite(self.audio_wait_s) and self.audio_wait_s >= 0):
            raise ValueError(f"audio_wait_s must be a finite number >= 0, got {self.audio_wait_s}")
        if not (math.isfinite(self.max_lag_s) and self.max_lag_s > 0):
            raise ValueError(f"max_lag_s must be a finite number > 0, got {self.max_lag_s}")
        if not isinstance(self.outputs, OutputSettings):
            raise ValueError(f"outputs must be OutputSettings, got {type(self.outputs).__name__}")


@dataclass
class StreamCounters:
    steps: int = 0
    steps_skipped: int = 0  # the engine fell behind: skipped instead of queued
    resets: int = 0  # discontinuities: state, buffers and outputs reset
    source_errors: int = 0  # error statuses from sources


class _SourceSink:
    """Delivers one source's data into its stream, remembering which source it was."""

    def __init__(self, stream: Stream, source: Source) -> None:
        self.stream, self.source = stream, source

    def on_video(self, frame: VideoFrame) -> None:
        self.stream.reconnecting.discard(id(self.source))  # data again: whatever was lost is back
        self.stream.aligner.add_frame(frame)
        self.stream.wake.set()

    def on_audio(self, chunk: AudioChunk) -> None:
        stream = self.stream
        stream.reconnecting.discard(id(self.source))
        try:
            stream.aligner.add_audio(chunk)
        except TimestampJump as jump:
            stream.request_reset(f"{self.source.name}: audio {jump}", chunk.time)
            stream.aligner.samples.reset()
            stream.aligner.add_audio(chunk)
        stream.wake.set()

    def on_status(self, status: SourceStatus) -> None:
        self.stream.source_status(self.source, status)


class Stream:
    def __init__(
        self, name: str, sources: list[Source], info: ModelInfo, settings: StreamSettings | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        if not sources:
            raise ValueError(f"stream {name!r}: needs at least one source")
        self.name = name
        self.sources = sources
        self.info = info
        self.settings = settings or StreamSettings()
        self.wake = wake or threading.Event()
        self.rate = info.step_rate_hz
        self.aligner = StreamAligner(info, self.settings.audio_wait_s)
        self.outputs = StreamOutputs(info, self.settings.outputs)
        self.counters = StreamCounters()
        self.state: list[np.ndarray] | None = None  # batch-of-1 model state; None = fresh
        self.cursor: int | None = None  # index of the next step; None until data arrives
        self.video_sources = [s for s in sources if s.has_video]
        self.audio_sources = [s for s in sources if s.has_audio]
        self._ended: set[int] = set()  # ids of sources that reported ended
        self.reconnecting: set[int] = set()  # ids of sources that lost their input and are trying again
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[str, str, bool]] = collections.deque()  # (level, message, reset)
        self._reset_after: float | None = None
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)  # s, capture -> publish
        self.finished = False
        self.origin = 0.0
        self.flushed: list[Message] = []  # outputs closed by a reset, waiting to be published

    # Lifecycle -----------------------------------------------------------------------------
    def start(self, origin: float | None = None) -> None:
        self.origin = time.monotonic() if origin is None else origin
        for source in self.sources:
            source.start(_SourceSink(self, source), self.origin)

    def stop(self) -> None:
        for source in self.sources:
            source.stop()

    # Called from source threads ------------------------------------------------------------
    def request_reset(self, reason: str, after: float | None = None) -> None:
        with self._lock:
            self._pending.append(("warning", f"{reason}: state reset", True))
            if after is not None:
                self._reset_after = after if self._reset_after is None else max(self._reset_after, after)
        self.wake.set()

    def source_status(self, source: Source, status: SourceStatus) -> None:
        with self._lock:
            if status.ended:
                self._ended.add(id(source))
            if status.reconnecting and not status.ended:
                self.reconnecting.add(id(source))
            else:
                self.reconnecting.discard(id(source))
            if status.level == "error":
                self.counters.source_errors += 1
            self._pending.append((status.level, status.message, status.discontinuity))
        self.wake.set()

    # Called from the engine thread ---------------------------------------------------------
    def _alive(self, sources: list[Source]) -> bool:
        return any(id(s) not in self._ended for s in sources)

    @property
    def video_alive(self) -> bool:
        return self._alive(self.video_sources)

    @property
    def audio_alive(self) -> bool:
        return self._alive(self.audio_sources)

    def service(self) -> list[tuple[str, str]]:
        """Apply what sources reported and turn new audio into log-mel frames.

        Returns (level, message) pairs to publish as status and the outputs a reset flushed.
        """
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
            reset_after, self._reset_after = self._reset_after, None
        notes = [(level, message) for level, message, _ in pending]
        if any(reset for _, _, reset in pending):
            self._reset(reset_after)
        self.aligner.pump()
        return notes

    def _reset(self, after: float | None) -> None:
        self.flushed += self.outputs.flush(time.monotonic())
        self.counters.resets += 1
        self.state = None
        if after is None:  # the whole timeline restarted (reconnect): forget buffered video too
            self.aligner.reset()
            self.cursor = None
        else:  # audio jumped: keep video, restart the audio features, resume at the jump
            self.aligner.reset_audio_features()
            self.cursor = math.ceil(after * self.rate - EPSILON_S)

    def swap_model(self, info: ModelInfo) -> list[Message]:
        """Go on with another model (engine thread, between steps); returns the outputs it closed.

        The new model takes the same inputs (checked before), so buffers and the cursor stay: the
        timeline goes on without a gap. Its state and class list are another model's, so the state
        starts fresh (counted as a reset) and the open segment and events are closed under the old
        model's labels; a segment cut short this way may be published again, under the same index,
        with the new model's remaining steps, as after an audio jump. Event ids go on from the old
        model's, so a subscriber pairing starts with ends by id never confuses the two models' events.
        """
        closed = self.take_flushed() + self.outputs.flush(time.monotonic())
        self.counters.resets += 1
        self.state = None
        self.info = self.aligner.info = info
        self.outputs = StreamOutputs(info, self.settings.outputs, self.outputs.events.next_id)
        return closed

    def take_flushed(self) -> list[Message]:
        out, self.flushed = self.flushed, []
        return out

    def _start_cursor(self) -> int | None:
        video = bool(self.video_sources) and self.aligner.frames.first_time is not None
        return self.aligner.first_step_index(self.rate, video=video) if (video or self.audio_sources) else None

    def due_step(self, now: float) -> StepInput | None:
        """The next step's input if it can run now (skipping stale steps), else None."""
        if self.finished:
            return None
        if self.cursor is None:
            self.cursor = self._start_cursor()
            if self.cursor is None:
                if not self.video_alive and not self.audio_alive:
                    self.finished = True
                return None
        aligner = self.aligner
        while True:
            t = self.cursor / self.rate
            latest = aligner.frames.latest_time
            video_data = latest is not None and latest >= t - EPSILON_S
            use_video = bool(self.video_sources) and video_data
            audio_data = aligner.audio_reached(t)
            use_audio = bool(self.audio_sources) and aligner.audio_end_time() is not None and (
                audio_data or self.audio_alive)
            if self.video_alive and not video_data:
                return None  # the frame for t has not arrived yet
            if self.video_sources and not use_video and not self.audio_alive:
                use_audio = False  # the video ran out and the audio is a finished source's tail: done
            if not use_video and not use_audio:
                if not self.video_alive and not self.audio_alive:
                    self.finished = True
                return None
            if not use_video and self.audio_alive and not audio_data:
                return None  # an audio-driven step: wait for its window
            frame = aligner.frames.peek_at(t) if use_video else None
            capture = frame.capture if frame is not None else now
            # Skip a step that has waited too long since its input was complete, when a newer one is
            # already servable: bounded latency, no backlog. (Waiting counts from the frame that made
            # the step servable, not from the older frame it shows: a 1 frame/s file never lags.)
            ready = aligner.frames.ready_capture(t) if use_video else None
            waited = now - (capture if ready is None else ready)
            if waited > self.settings.max_lag_s and latest is not None and latest >= t + 1 / self.rate:
                self.cursor += 1
                self.counters.steps_skipped += 1
                continue
            if use_audio and self.audio_alive and not audio_data and now < capture + self.settings.audio_wait_s:
                return None  # wait a bounded time for late audio
            return aligner.cut(t, use_video, use_audio, None if use_video else capture)

    def finish_step(self, step: StepInput, outputs: dict[str, np.ndarray], state: list[np.ndarray]) -> list[Message]:
        index = self.cursor
        self.state = state
        self.cursor += 1
        self.counters.steps += 1
        return self.outputs.push(index, step.time, outputs, step.capture, step.degraded, step.mask)

    def unstepped_audio_s(self) -> float:
        """Seconds of audio past the last step of a stream whose video ended first.

        Steps follow the video when there is one, so a file whose audio runs on after its last
        frame leaves that audio unheard; the stream says so when it ends rather than drop it silently.
        """
        end = self.aligner.audio_end_time()
        if end is None or not self.video_sources or self.cursor is None:
            return 0.0
        return max(0.0, end - self.cursor / self.rate)

    def finish(self) -> list[Message]:
        """Outputs still open when the stream ends."""
        self.finished = True
        return self.outputs.flush(time.monotonic())

    def drops(self) -> dict[str, int]:
        aligner = self.aligner
        device_overflows = sum(s.counters.audio_overflows for s in self.audio_sources)
        return {
            "steps_skipped": self.counters.steps_skipped,
            "frames_evicted": aligner.frames.evicted_unread,
            "frames_dropped": sum(s.counters.frames_dropped for s in self.video_sources),
            "audio_overflows": device_overflows,
            "audio_resyncs": sum(s.counters.audio_resyncs for s in self.audio_sources),
            "audio_overwritten": aligner.samples.counters.overflow_rows,
            "audio_underruns": aligner.log_mel.counters.underrun_rows,
            "degraded_steps": aligner.degraded_steps,
            "resets": self.counters.resets,
        }

    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sources": self.source_names(), "steps": self.counters.steps, **self.drops()}
