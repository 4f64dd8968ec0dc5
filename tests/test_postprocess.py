"""Segments and event boundaries: the live rules agree with evaluation and with hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from avbind.models.evaluation import segment_predictions
from avbind.realtime.postprocess.events import DetectorSettings, EventDetector, detect_events
from avbind.realtime.postprocess.segments import SegmentAggregator

RATE = 5.0  # steps per second


def test_segments_match_offline_evaluation_rule():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(11), size=50)
    times = np.arange(50) / RATE
    aggregator = SegmentAggregator(RATE, 1.0)
    closed = []
    for t, p in zip(times, probs, strict=True):
        closed += aggregator.push(float(t), p, capture=float(t))
    assert aggregator.flush() == []  # every segment closed at its last step, none left open
    offline = segment_predictions(probs, (times // 1.0).astype(int), 10)
    assert [s.index for s in closed] == list(range(10))
    assert [s.class_index for s in closed] == offline.tolist()
    assert all(s.steps == 5 for s in closed)


def test_segments_close_early_when_steps_are_skipped_and_support_other_lengths():
    aggregator = SegmentAggregator(RATE, 2.0)
    p = np.array([0.2, 0.8])
    assert aggregator.push(0.0, p, 0.0) == []
    closed = aggregator.push(2.4, p, 0.0)  # steps 0.2..1.8 were skipped: segment 0 closes with 1 step
    assert [(s.index, s.steps, s.start, s.end) for s in closed] == [(0, 1, 0.0, 2.0)]
    closed = aggregator.push(3.8, p, 0.0)  # last step of segment 1
    assert [(s.index, s.steps) for s in closed] == [(1, 2)]


def _run(scores: list[float], settings: DetectorSettings) -> list[tuple[str, float, float | None]]:
    detector = EventDetector(1, settings, step_s=0.2)
    out = []
    for k, p in enumerate(scores):
        out += [(b.kind, round(b.start, 6), b.end and round(b.end, 6)) for b in detector.push(k * 0.2, [p])]
    out += [(b.kind, round(b.start, 6), b.end and round(b.end, 6)) for b in detector.flush(len(scores) * 0.2)]
    return out


SETTINGS = DetectorSettings(on=0.6, off=0.4, min_duration_s=0.6, merge_gap_s=0.4)


def test_event_start_waits_for_min_duration_and_keeps_original_start():
    # above on at 0.4, stays up: announced once 3 steps (0.6 s) are covered, start 0.4
    assert _run([0.1, 0.2, 0.7, 0.9, 0.8, 0.9, 0.1, 0.1, 0.1, 0.1], SETTINGS) == [
        ("start", 0.4, None), ("end", 0.4, 1.2)]


def test_short_blips_never_become_events():
    assert _run([0.1, 0.9, 0.9, 0.1, 0.1], SETTINGS) == []


def test_hysteresis_keeps_event_between_thresholds_and_merges_short_gaps():
    # 0.5 is between off and on: the event continues; one dip of 0.2 s (< 0.4 s gap) is merged
    scores = [0.9, 0.9, 0.9, 0.5, 0.5, 0.1, 0.8, 0.8, 0.1, 0.1, 0.1, 0.1]
    assert _run(scores, SETTINGS) == [("start", 0.0, None), ("end", 0.0, 1.6)]
    # a score hovering at 0.5 never opens an event
    assert _run([0.5] * 10, SETTINGS) == []


def test_long_gap_splits_events_and_flush_closes_open_one():
    scores = [0.9] * 4 + [0.1] * 4 + [0.9] * 4
    assert _run(scores, SETTINGS) == [
        ("start", 0.0, None), ("end", 0.0, 0.8), ("start", 1.6, None), ("end", 1.6, 2.4)]


def test_detect_events_offline_equals_online_and_handles_several_classes():
    times = np.arange(20) * 0.2
    scores = np.zeros((20, 3))
    scores[2:8, 0] = 0.9
    scores[5:15, 2] = 0.7
    events = detect_events(times, scores, SETTINGS, step_s=0.2)
    assert [(c, round(s, 6), round(e, 6)) for c, s, e, _ in events] == [(0, 0.4, 1.6), (2, 1.0, 3.0)]
    assert events[1][3] == pytest.approx(0.7)


def test_detector_settings_are_checked():
    with pytest.raises(ValueError, match="off <= on"):
        DetectorSettings(on=0.3, off=0.5)
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        EventDetector(2).push(0.0, [0.1, 0.2, 0.3])
