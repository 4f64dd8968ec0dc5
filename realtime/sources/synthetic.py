"""An endless avsynth stream with ground truth: the live input of ``avbind demo``.

avsynth clips are rendered in a background thread, a couple ahead of playback, and played back to
back as one continuous stream: frame ``k`` is at ``k / fps`` and audio comes in 20 ms chunks at
``samples emitted / sample_rate``. Playback is paced like a file (``capture = origin + time /
speed``; ``speed`` 0 or inf: as fast as possible). Clips come from a split the model did not train
on (the test split by default), under a seed other than the default data set's, and each one-second
segment's true class is known, so the demo can score itself as it runs.

Each clip is played as ``avbind eval`` sees it: rendered, written with avsynth's own ``write_mp4``
(H.264 + AAC, the data set's settings) and decoded back by the shared decoder, in the renderer
thread, ahead of playback. Between clips the source reports a discontinuity, so the model starts
every clip from a fresh state, as evaluation does; it waits (boundedly) for the engine to finish
the clip's last step before that reset and for the reset before the next clip, so a boundary
neither drops steps nor shifts the next clip's timeline.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from avbind.models.data.avsynth import (
    CLASS_NAMES,
    SPLITS,
    ClipAnnotation,
    SynthConfig,
    annotate_clip,
    render_clip,
    write_mp4,
)
from avbind.realtime.sources.base import AudioChunk, Source, SourceSink, SourceStatus, VideoFrame
from avbind.realtime.sources.decode import decode_media

CHUNK_S = 0.02  # s of audio per delivered chunk
RENDER_AHEAD = 2  # clips rendered and waiting; bounds memory (a 10 s, 160 px clip is about 19 MB)
POLL_S = 0.1  # s; how often a waiting thread looks at stop
BACKGROUND = len(CLASS_NAMES)  # class index of a segment with no event
BOUNDARY_WAIT_S = 2.0  # s of wall time a clip boundary waits for the engine, at most (then plays on)


@dataclass
class _Clip:
    """One clip after the codec round trip, on the clip's own clock (0 = its first frame)."""

    frames: np.ndarray  # (N, H, W, 3) uint8, decoded
    frame_times: np.ndarray  # (N,) s
    audio: np.ndarray  # (S,) float32, decoded
    audio_start: float  # s: time of audio[0]


def codec_round_trip(frames: np.ndarray, audio: np.ndarray, config: SynthConfig) -> _Clip:
    """``frames`` and ``audio`` as the data set's mp4 holds them: the model was trained and evaluated
    on decoded H.264/AAC, whose blocking and chroma subsampling raw renders lack, so the live stream
    goes through the same ``write_mp4`` and ``decode_media`` (a temporary file: one clip at a time)."""
    handle, path = tempfile.mkstemp(suffix=".mp4", prefix="avbind-synthetic-")
    os.close(handle)
    try:
        write_mp4(path, frames, audio, config.fps, config.sample_rate, config.crf, config.preset)
        media = decode_media(path, config.sample_rate)
    finally:
        os.unlink(path)
    return _Clip(media.frames, media.frame_times, media.audio, media.audio_start)


class SyntheticSource(Source):
    """avsynth clips of ``split`` (with ``seed``, frames ``size`` px) as one stream; ``clips`` None: endless.

    Clip ``k`` of the stream is clip ``k mod n`` of the split, so an endless stream repeats after
    the split's ``n`` clips.
    """

    has_video = True
    has_audio = True

    def __init__(
        self, seed: int = 2026, size: int = 160, speed: float = 1.0, clips: int | None = None, split: str = "test"
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if speed < 0 or (clips is not None and clips < 1):
            raise ValueError(f"need speed >= 0 and clips >= 1 or None, got {speed}, {clips}")
        self.config = SynthConfig(seed=seed, size=size)
        self.name = f"avsynth seed {seed} {split}"
        self.speed = float(speed)
        self.clips = clips
        self.split = split
        self.fps, self.sample_rate = self.config.fps, self.config.sample_rate
        self.segments_per_clip = self.config.duration_s  # one-second segments
        counts = dict(zip(SPLITS, (self.config.n_train, self.config.n_val, self.config.n_test), strict=True))
        self._first_index = sum(counts[s] for s in SPLITS[: SPLITS.index(split)])
        self._split_size = counts[split]
        self.clip_annotations: list[ClipAnnotation] = []  # of the clips rendered so far, in stream order
        self._lock = threading.Lock()
        self._rendered: queue.Queue[_Clip | Exception | None] = queue.Queue(maxsize=RENDER_AHEAD)
        self._renderer: threading.Thread | None = None

    def dataset_index(self, clip: int) -> int:
        """avsynth clip index (under ``self.config``) of the stream's clip number ``clip``."""
        return self._first_index + clip % self._split_size

    def truth(self, segment_index: int) -> int:
        """Class index of one-second segment ``segment_index`` of the stream; ``len(CLASS_NAMES)``: background.

        Annotations are planned without rendering, so this answers for any segment of the stream,
        before or after it plays; it raises IndexError past the end of a finite stream.
        """
        clip, segment = divmod(segment_index, self.segments_per_clip)
        if segment_index < 0 or (self.clips is not None and clip >= self.clips):
            raise IndexError(f"segment {segment_index} is not part of this stream")
        with self._lock:
            known = clip < len(self.clip_annotations)
            annotation = self.clip_annotations[clip] if known else None
        annotation = annotation or annotate_clip(self.config, self.dataset_index(clip))
        inside = any(start <= segment < end for start, end in annotation.events)
        return annotation.class_index if inside else BACKGROUND

    def start(self, sink: SourceSink, origin: float) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._renderer = threading.Thread(target=self._render_ahead, name=f"{self.name} renderer", daemon=True)
        self._renderer.start()
        super().start(sink, origin)

    def stop(self) -> None:
        super().stop()
        if self._renderer is not None and self._renderer is not threading.current_thread():
            self._renderer.join(timeout=5.0)

    def _render_ahead(self) -> None:
        """Renderer thread: clips in stream order into the bounded queue; None marks the end."""
        numbers = range(self.clips) if self.clips is not None else itertools.count()
        try:
            for clip in numbers:
                frames, audio, annotation = render_clip(self.config, self.dataset_index(clip))
                decoded = codec_round_trip(frames, audio, self.config)
                del frames, audio
                with self._lock:
                    self.clip_annotations.append(annotation)
                if not self._put(decoded):
                    return
        except Exception as err:  # handed to the playback thread, which reports it
            self._put(err)
            return
        self._put(None)

    def _put(self, item: object) -> bool:
        while not self.stopped:
            try:
                self._rendered.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _next_clip(self) -> _Clip | Exception | None:
        while not self.stopped:
            try:
                return self._rendered.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def _serve(self, sink: SourceSink, origin: float) -> None:
        chunk = round(CHUNK_S * self.sample_rate)  # samples
        played = 0
        progress = _consumer_progress(sink)
        while not self.stopped:
            clip = self._next_clip()
            if isinstance(clip, Exception):
                self.counters.errors += 1
                sink.on_status(SourceStatus("error", f"{self.name}: rendering failed ({clip!r})", ended=True))
                return
            if clip is None:
                if not self.stopped:
                    sink.on_status(SourceStatus("info", f"{self.name}: {played} clips played", ended=True))
                return
            offset = float(played * self.segments_per_clip)  # s: clip k starts at k * duration
            # Pacing starts once content is ready and pauses while a boundary waits: rendering and the
            # codec round trip take a while, and frames delivered late all at once would overflow the
            # engine's frame buffer (frames lost) instead of merely arriving late.
            if played:
                paused = time.monotonic()
                self._boundary(sink, offset, progress, played)
                origin += time.monotonic() - paused
            else:
                origin = max(origin, time.monotonic())
            for item in _interleave(clip, offset, self.sample_rate, chunk):
                t = item.time
                capture = self._due(t, origin)
                if capture is None:
                    return
                if isinstance(item, VideoFrame):
                    sink.on_video(VideoFrame(rgb=item.rgb, time=t, capture=capture))
                    self.counters.frames += 1
                else:
                    sink.on_audio(AudioChunk(samples=item.samples, time=t, capture=capture))
                    self.counters.audio_samples += len(item.samples)
            played += 1

    def _boundary(self, sink: SourceSink, offset: float, progress: _Progress | None, clip: int) -> None:
        """Reset the model between clips, as evaluation runs each clip from a fresh state.

        A reset without a time restarts the consumer's timeline from the next data, so it must land
        after the previous clip's last step ran (else that step is lost) and before the next clip's
        first data (else that data is cleared). Where the sink is an engine stream, wait for both,
        a bounded time: a stalled engine must not stall the source forever.
        """
        if progress is not None:
            self._wait_until(lambda: _cursor_reached(progress, offset))
        resets = progress()[2] if progress is not None else 0
        sink.on_status(SourceStatus("info", f"{self.name}: clip {clip} starts at {offset:g} s", discontinuity=True))
        if progress is not None:
            self._wait_until(lambda: progress()[2] > resets)

    def _wait_until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + BOUNDARY_WAIT_S
        while not self.stopped and not condition() and time.monotonic() < deadline:
            self._stop.wait(0.002)

    def _due(self, t: float, origin: float) -> float | None:
        """``capture`` for stream time ``t``, after sleeping until then when paced; None: stopped."""
        if not 0 < self.speed < math.inf:
            return None if self.stopped else time.monotonic()
        due = origin + t / self.speed
        if self._stop.wait(max(0.0, due - time.monotonic())):
            return None
        return due


_Progress = Callable[[], tuple[float, int | None, int]]  # () -> (step rate, next step or None, resets)


def _consumer_progress(sink: SourceSink) -> _Progress | None:
    """How far the engine stream behind ``sink`` got: () -> (step rate, next step, resets); None:
    the sink is not an engine stream (a test's CollectingSink), so boundaries cannot wait on it."""
    stream = getattr(sink, "stream", None)
    if stream is None or not hasattr(stream, "counters") or not hasattr(stream, "rate"):
        return None
    return lambda: (float(stream.rate), stream.cursor, int(stream.counters.resets))


def _cursor_reached(progress: _Progress, t: float) -> bool:
    """True once the consumer's next step is at or after ``t`` (or it has no cursor: nothing to lose)."""
    rate, cursor, _ = progress()
    return cursor is None or cursor >= math.ceil(t * rate - 1e-6)


def _interleave(clip: _Clip, offset: float, sample_rate: int, chunk: int) -> Iterator[VideoFrame | AudioChunk]:
    """One clip's frames and audio chunks in time order, on the stream's clock (capture not yet known)."""
    audio = clip.audio
    chunks = (
        AudioChunk(samples=audio[s : s + chunk], time=offset + clip.audio_start + s / sample_rate, capture=math.nan)
        for s in range(0, len(audio), chunk)
    )
    pictures = (
        VideoFrame(rgb=rgb, time=offset + float(t), capture=math.nan)
        for rgb, t in zip(clip.frames, clip.frame_times, strict=True)
    )
    yield from heapq.merge(pictures, chunks, key=lambda item: item.time)
