"""Event boundaries from class scores over time: a per-class detector with hysteresis.

One definition serves both worlds: the realtime engine feeds it step by step and publishes each
start and end as it happens; offline code runs :func:`detect_events` over a whole score sequence
and gets the same events.

For each class, an event starts when its score rises to ``on`` and has stayed above ``off`` for
``min_duration_s`` (shorter blips are discarded, and the start is published only then, with the
original start time); it ends when the score stays below ``off`` for longer than ``merge_gap_s``
(shorter dips are merged into the event). Two thresholds rather than one stop a score that hovers
around a single threshold from flickering events on and off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DetectorSettings:
    on: float = 0.6  # score that opens an event
    off: float = 0.4  # score below which an event is closing
    min_duration_s: float = 0.6  # s: shorter events are never reported
    merge_gap_s: float = 0.4  # s: dips below ``off`` at most this long do not end an event

    def __post_init__(self) -> None:
        # Checked here, not only in the CLI, so a library user's typo fails at construction with the
        # offending value instead of as a silent detector that never (or always) fires.
        if not 0 < self.off <= self.on <= 1:  # False for nan too
            raise ValueError(f"detector thresholds need 0 < off <= on <= 1, got off={self.off}, on={self.on}")
        for name in ("min_duration_s", "merge_gap_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class EventBoundary:
    kind: str  # "start" or "end"
    event_id: int  # per detector, shared by an event's start and end
    class_index: int
    start: float  # s, stream time the event began
    end: float | None  # s, stream time it ended; None for a start
    confidence: float  # mean score over the event's steps so far
    peak: float  # highest score so far
    capture: float  # monotonic capture time of the step that decided the boundary


@dataclass
class _Track:
    start: float
    last_above: float  # last time the score was >= off
    scores: list[float] = field(default_factory=list)
    announced: bool = False
    event_id: int = -1


class EventDetector:
    """Online detector over ``num_classes`` scores per step (background excluded by the caller)."""

    def __init__(self, num_classes: int, settings: DetectorSettings | None = None, step_s: float = 0.0,
                 first_id: int = 0) -> None:
        """``first_id``: where event ids start; a detector that takes over a stream's events (after a
        model swap) goes on from its predecessor's :attr:`next_id`, so ids stay unique per stream."""
        self.settings = settings or DetectorSettings()
        self.num_classes = num_classes
        self.step_s = step_s  # s: a step stands for [t, t + step_s), so an event ends after its last step
        self._tracks: dict[int, _Track] = {}
        self._next_id = first_id

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def active(self) -> dict[int, float]:
        """Announced open events: class index -> start time."""
        return {c: tr.start for c, tr in self._tracks.items() if tr.announced}

    def push(self, t: float, scores: Sequence[float] | np.ndarray, capture: float = 0.0) -> list[EventBoundary]:
        s = self.settings
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.num_classes,):
            raise ValueError(f"event scores: expected shape ({self.num_classes},), got {scores.shape}")
        out = []
        for c in range(self.num_classes):
            p = float(scores[c])
            track = self._tracks.get(c)
            if track is None:
                if p >= s.on:
                    self._tracks[c] = track = _Track(t, t)
                else:
                    continue
            if p >= s.off:
                track.last_above = t
                track.scores.append(p)
            elif t - track.last_above > s.merge_gap_s or not track.announced:
                if track.announced:
                    out.append(self._boundary("end", c, track, capture, end=self._end_time(track)))
                del self._tracks[c]
                continue
            if not track.announced and self._end_time(track) - track.start >= s.min_duration_s - 1e-9:
                track.announced, track.event_id = True, self._next_id
                self._next_id += 1
                out.append(self._boundary("start", c, track, capture))
        return out

    def flush(self, t: float, capture: float = 0.0) -> list[EventBoundary]:
        """End every open event (end of stream, discontinuity) at its last time above ``off``."""
        out = [self._boundary("end", c, tr, capture, end=self._end_time(tr))
               for c, tr in sorted(self._tracks.items()) if tr.announced]
        self._tracks.clear()
        return out

    def _end_time(self, track: _Track) -> float:
        return track.last_above + self.step_s

    def _boundary(self, kind: str, c: int, tr: _Track, capture: float, end: float | None = None) -> EventBoundary:
        return EventBoundary(kind, tr.event_id, c, tr.start, end, float(np.mean(tr.scores)), float(max(tr.scores)),
                             capture)


def detect_events(
    times: np.ndarray, scores: np.ndarray, settings: DetectorSettings | None = None, step_s: float = 0.0,
) -> list[tuple[int, float, float, float]]:
    """Offline: events of a (T, classes) score sequence as (class, start, end, confidence)."""
    detector = EventDetector(scores.shape[1], settings, step_s)
    boundaries = []
    for t, row in zip(times, scores, strict=True):
        boundaries += detector.push(float(t), row)
    boundaries += detector.flush(float(times[-1]) if len(times) else 0.0)
    return [(b.class_index, b.start, b.end, b.confidence) for b in boundaries if b.kind == "end"]
