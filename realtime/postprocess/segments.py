"""Per-segment predictions (AVE style): the mean of the step probabilities inside each segment.

The same rule as ``avbind eval`` (:func:`avbind.models.evaluation.segment_predictions`), so live
segment accuracy and offline segment accuracy measure the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avbind.realtime.sync.windows import EPSILON_S


@dataclass(frozen=True)
class SegmentPrediction:
    index: int  # segment number on the stream timeline: floor(start / length)
    start: float  # s, stream time
    end: float  # s
    probs: np.ndarray  # (classes + 1,) mean step probabilities, background last
    steps: int  # steps that contributed (fewer than expected when steps were dropped)
    degraded_steps: int
    capture: float  # monotonic capture time of the newest input in the segment
    verb_probs: np.ndarray | None = None
    noun_probs: np.ndarray | None = None

    @property
    def class_index(self) -> int:
        return int(np.argmax(self.probs))


class SegmentAggregator:
    """Collects steps and closes a segment at its last step, or when a later segment begins."""

    def __init__(self, step_rate_hz: float, segment_s: float = 1.0) -> None:
        if segment_s <= 0:
            raise ValueError(f"segment length must be > 0 s, got {segment_s}")
        self.step_rate_hz = step_rate_hz
        self.segment_s = segment_s
        self._open: int | None = None
        self._sums: dict[str, np.ndarray] = {}
        self._steps = self._degraded = 0
        self._capture = 0.0

    def segment_of(self, t: float) -> int:
        return math.floor(t / self.segment_s + EPSILON_S)

    def _last_step_time(self, segment: int) -> float:
        """Time of the last step whose time lies inside ``segment``."""
        end = (segment + 1) * self.segment_s
        return (math.ceil(end * self.step_rate_hz - EPSILON_S) - 1) / self.step_rate_hz

    def push(
        self, t: float, probs: np.ndarray, capture: float, degraded: bool = False,
        verb_probs: np.ndarray | None = None, noun_probs: np.ndarray | None = None,
    ) -> list[SegmentPrediction]:
        """Add one step; return the segments this closes (zero, one, or the previous one then this)."""
        closed = []
        segment = self.segment_of(t)
        if self._open is not None and segment != self._open:
            closed += self.flush()
        self._open = segment
        for name, value in (("probs", probs), ("verb", verb_probs), ("noun", noun_probs)):
            if value is not None:
                self._sums[name] = self._sums.get(name, 0) + np.asarray(value, np.float64)
        self._steps += 1
        self._degraded += int(degraded)
        self._capture = max(self._capture, capture)
        if t >= self._last_step_time(segment) - EPSILON_S:
            closed += self.flush()
        return closed

    def flush(self) -> list[SegmentPrediction]:
        """Close the open segment, if any (end of stream, discontinuity)."""
        if self._open is None or not self._steps:
            self._open = None
            return []
        n = self._steps
        mean = {k: (v / n).astype(np.float32) for k, v in self._sums.items()}
        segment = SegmentPrediction(
            self._open, self._open * self.segment_s, (self._open + 1) * self.segment_s, mean["probs"], n,
            self._degraded, self._capture, mean.get("verb"), mean.get("noun"),
        )
        self._open, self._sums, self._steps, self._degraded, self._capture = None, {}, 0, 0, 0.0
        return [segment]
