"""What every live source delivers, and how: timestamped frames, audio chunks and status reports.

A source runs its own thread (a camera read loop, a sounddevice callback, a PyAV demux loop) and
pushes into a :class:`SourceSink`; it never blocks on the engine and never raises into it. Failures
become :class:`SourceStatus` reports, so a vanished camera is a message, not a crash.

Two clocks, both in seconds:

* ``time``: the stream timeline, on which steps are scheduled. Media sources use presentation
  timestamps (a file's own PTS, so a file is cut exactly as ``avbind eval`` cuts it); device
  sources use ``time.monotonic() - origin``, so a webcam and a microphone started with the same
  origin share one timeline. It never goes backwards: after a reconnect a source continues from
  the monotonic time since ``origin``.
* ``capture``: ``time.monotonic()`` when the data was captured, received or (for a paced file)
  due to be shown; end-to-end latency is measured from it.
"""

from __future__ import annotations

import threading
from abc import ABC
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VideoFrame:
    rgb: np.ndarray  # (H, W, 3) uint8, full source resolution
    time: float  # s, stream timeline
    capture: float  # s, time.monotonic()


@dataclass(frozen=True)
class AudioChunk:
    samples: np.ndarray  # (n,) float32 mono in [-1, 1], already at the model's sample rate
    time: float  # s, stream timeline of samples[0]
    capture: float  # s, time.monotonic() when the chunk arrived


@dataclass(frozen=True)
class SourceStatus:
    level: str  # "info", "warning" or "error"
    message: str  # one line for people: names the source and the problem
    discontinuity: bool = False  # the timeline jumped (reconnect, seek, lost data): reset model state
    ended: bool = False  # the source will deliver nothing more (end of file, gave up reconnecting)
    reconnecting: bool = False  # the source lost its input and is trying to get it back


class SourceSink(Protocol):
    """Where a source delivers. Called from the source's thread; implementations must not block."""

    def on_video(self, frame: VideoFrame) -> None: ...

    def on_audio(self, chunk: AudioChunk) -> None: ...

    def on_status(self, status: SourceStatus) -> None: ...


@dataclass
class SourceCounters:
    """Monotonic counts a source keeps; the engine reports them in status heartbeats."""

    frames: int = 0  # video frames delivered
    audio_samples: int = 0  # audio samples delivered (model rate)
    audio_overflows: int = 0  # input overflows the device or driver reported, or blocks dropped (events)
    errors: int = 0  # read/decode errors survived
    frames_dropped: int = 0  # video frames decoded too late to be shown in time (decode cannot keep up)
    reconnects: int = 0  # successful reopenings after a failure
    audio_resyncs: int = 0  # audio realigned to its timestamps (they disagreed with the samples counted)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Source(ABC):
    """A producer of video and/or audio for one stream.

    ``start`` returns at once; data then arrives at the sink from the source's own thread until
    ``stop`` or until the source reports ``ended``.
    """

    name: str  # for messages: "webcam 0", "udp://127.0.0.1:5000", ...
    has_video: bool
    has_audio: bool
    stop_wait_s = 5.0  # s stop() waits for the source's thread

    def __init__(self) -> None:
        self.counters = SourceCounters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sink: SourceSink, origin: float) -> None:
        """Begin delivering; ``origin`` is the ``time.monotonic()`` that is time 0 of the stream."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._thread = threading.Thread(target=self._run, args=(sink, origin), name=f"source {self.name}", daemon=True)
        self._thread.start()

    def _run(self, sink: SourceSink, origin: float) -> None:
        try:
            self._serve(sink, origin)
        except Exception as err:  # a bug must not kill the engine: report it and end
            self.counters.errors += 1
            sink.on_status(SourceStatus("error", f"{self.name}: source failed ({err!r})", ended=True))

    def _serve(self, sink: SourceSink, origin: float) -> None:
        """The source's thread: deliver to ``sink`` until the end, a failure or :meth:`stop`.

        Every source that owns a thread implements this; a wrapper of another source overrides
        :meth:`start` and :meth:`stop` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} delivers nothing: implement _serve or override start")

    def stop(self) -> None:
        """Ask the source to stop and wait briefly for its thread; safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.stop_wait_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


@dataclass
class CollectingSink:
    """A sink that keeps everything it is given; for tests and for draining a source offline."""

    frames: list[VideoFrame] = field(default_factory=list)
    audio: list[AudioChunk] = field(default_factory=list)
    statuses: list[SourceStatus] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.ended = threading.Event()

    def on_video(self, frame: VideoFrame) -> None:
        with self._lock:
            self.frames.append(frame)

    def on_audio(self, chunk: AudioChunk) -> None:
        with self._lock:
            self.audio.append(chunk)

    def on_status(self, status: SourceStatus) -> None:
        with self._lock:
            self.statuses.append(status)
        if status.ended:
            self.ended.set()
