"""An endless avsynth stream with ground truth: the live input of ``avbind demo``.

avsynth clips are rendered in a background thread, a couple ahead of playback, and played back to
back as one continuous stream: frame ``k`` is at ``k / fps`` and audio comes in 20 ms chunks at
``samples emitted / sample_rate``. Playback is paced like a file (``capture = origin + time /
speed``; ``speed`` 0 or inf: as fast as possible). Clips come from a split the model did not train
on (the test split by default), under a seed other than the default data set's, and each one-second
segment's true class is known, so the demo can score itself as it runs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from avbind.models.data.avsynth import CLASS_NAMES, SPLITS, ClipAnnotation, SynthConfig, annotate_clip, render_clip
from avbind.realtime.sources.base import AudioChunk, Source, SourceSink, SourceStatus, VideoFrame

CHUNK_S = 0.02  # s of audio per delivered chunk
RENDER_AHEAD = 2  # clips rendered and waiting; bounds memory (a 10 s, 160 px clip is about 19 MB)
POLL_S = 0.1  # s; how often a waiting thread looks at stop
BACKGROUND = len(CLASS_NAMES)  # class index of a segment with no event


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
        self._rendered: queue.Queue[tuple[np.ndarray, np.ndarray]] = queue.Queue(maxsize=RENDER_AHEAD)
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
                with self._lock:
                    self.clip_annotations.append(annotation)
                if not self._put((frames, audio)):
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

    def _next_clip(self) -> tuple[np.ndarray, np.ndarray] | Exception | None:
        while not self.stopped:
            try:
                return self._rendered.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def _serve(self, sink: SourceSink, origin: float) -> None:
        chunk = round(CHUNK_S * self.sample_rate)  # samples
        frame_index, sample_index, played = 0, 0, 0  # over the whole stream
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
            frames, audio = clip
            for item in _interleave(frames, audio, frame_index, sample_index, self.fps, self.sample_rate, chunk):
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
            frame_index += len(frames)
            sample_index += len(audio)
            played += 1

    def _due(self, t: float, origin: float) -> float | None:
        """``capture`` for stream time ``t``, after sleeping until then when paced; None: stopped."""
        if not 0 < self.speed < math.inf:
            return None if self.stopped else time.monotonic()
        due = origin + t / self.speed
        if self._stop.wait(max(0.0, due - time.monotonic())):
            return None
        return due


def _interleave(
    frames: np.ndarray, audio: np.ndarray, first_frame: int, first_sample: int, fps: int, sample_rate: int, chunk: int
) -> Iterator[VideoFrame | AudioChunk]:
    """One clip's frames and audio chunks in time order, on the stream's global clock (capture not yet known)."""
    chunks = (
        AudioChunk(samples=audio[s : s + chunk], time=(first_sample + s) / sample_rate, capture=math.nan)
        for s in range(0, len(audio), chunk)
    )
    pictures = (
        VideoFrame(rgb=rgb, time=(first_frame + i) / fps, capture=math.nan) for i, rgb in enumerate(frames)
    )
    yield from heapq.merge(pictures, chunks, key=lambda item: item.time)
