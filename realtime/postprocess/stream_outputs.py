"""Everything that happens to one stream's step result after the model: scores, segments, events.

Turns raw head outputs into the messages the engine publishes, so the engine itself only moves
data and a test can drive post-processing with plain arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avbind.realtime.backends.model_file import ModelInfo
from avbind.realtime.postprocess.events import DetectorSettings, EventDetector
from avbind.realtime.postprocess.segments import SegmentAggregator, SegmentPrediction
from avbind.realtime.publish.messages import event_payload, segment_payload, step_payload


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class OutputSettings:
    segment_s: float = 1.0  # s per published segment prediction (AVE: 1 s)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    publish_steps: bool = False  # the per-step topic is off by default: 5 messages/s per stream

    def __post_init__(self) -> None:
        # A zero, negative or nan segment length would divide by zero deep inside the aggregator.
        if not (math.isfinite(self.segment_s) and self.segment_s > 0):
            raise ValueError(f"segment_s must be a finite number > 0, got {self.segment_s}")
        if not isinstance(self.detector, DetectorSettings):
            raise ValueError(f"detector must be DetectorSettings, got {type(self.detector).__name__}")


Message = tuple[str, dict[str, Any], float]  # (type, payload, monotonic capture time)


class StreamOutputs:
    def __init__(self, info: ModelInfo, settings: OutputSettings | None = None, first_event_id: int = 0) -> None:
        self.info = info
        self.settings = settings or OutputSettings()
        self.segments = SegmentAggregator(info.step_rate_hz, self.settings.segment_s)
        self.events = EventDetector(len(info.class_names), self.settings.detector, 1.0 / info.step_rate_hz,
                                    first_event_id)
        self.last_probs: np.ndarray | None = None
        self._last_time = 0.0

    def push(
        self, index: int, t: float, outputs: dict[str, np.ndarray], capture: float, degraded: bool,
        mask: tuple[float, float],
    ) -> list[Message]:
        """``outputs``: one stream's head outputs without the batch axis."""
        probs = softmax(outputs["event_logits"].astype(np.float64))
        verb = softmax(outputs["verb_logits"]) if "verb_logits" in outputs else None
        noun = softmax(outputs["noun_logits"]) if "noun_logits" in outputs else None
        self.last_probs, self._last_time = probs, t
        messages: list[Message] = []
        names = self.info.event_names
        if self.settings.publish_steps:
            messages.append(("step", step_payload(index, t, probs, names, degraded, mask), capture))
        for segment in self.segments.push(t, probs, capture, degraded, verb, noun):
            messages.append(self._segment_message(segment))
        for boundary in self.events.push(t, probs[:-1], capture):
            messages.append(("event", event_payload(boundary, self.info.class_names), capture))
        return messages

    def _segment_message(self, segment: SegmentPrediction) -> Message:
        payload = segment_payload(segment, self.info.event_names, self.info.verb_names, self.info.noun_names)
        return "segment", payload, segment.capture

    def flush(self, capture: float) -> list[Message]:
        """Close the open segment and end open events (end of stream or discontinuity)."""
        messages = [self._segment_message(s) for s in self.segments.flush()]
        messages += [("event", event_payload(b, self.info.class_names), capture)
                     for b in self.events.flush(self._last_time, capture)]
        return messages
