"""Localization metrics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avbind.models.localization import Segment, average_precision, localization_map, nms, temporal_iou


def test_temporal_iou_by_hand():
    ious = temporal_iou(2.0, 6.0, np.array([4.0, 6.0, 2.0, 0.0]), np.array([8.0, 9.0, 6.0, 10.0]))
    # [2,6) vs [4,8): 2 / 6; touching: 0; identical: 1; inside [0,10): 4 / 10
    np.testing.assert_allclose(ious, [2 / 6, 0.0, 1.0, 0.4])


def test_average_precision_by_hand():
    truth = [Segment("v1", 0, 0.0, 10.0), Segment("v1", 0, 20.0, 30.0), Segment("v2", 0, 5.0, 15.0)]
    predictions = [
        Segment("v1", 0, 1.0, 10.0, 0.9),  # tIoU 0.9 with the first: TP
        Segment("v1", 0, 0.0, 9.0, 0.8),  # the same truth again: FP (matched once)
        Segment("v2", 0, 10.0, 20.0, 0.7),  # tIoU 5/15 = 0.33 with v2's truth: FP at 0.5, TP at 0.3
        Segment("v1", 0, 21.0, 29.0, 0.6),  # tIoU 0.8: TP
    ]
    # at 0.5: hits 1,0,0,1 -> precision 1, 1/2, 1/3, 1/2; recall 1/3, 1/3, 1/3, 2/3
    # envelope 1, .5, .5, .5 -> AP = 1/3 * 1 + 1/3 * 0.5 = 0.5
    assert average_precision(predictions, truth, 0.5) == pytest.approx(0.5)
    # at 0.3: hits 1,0,1,1 -> precision 1, 1/2, 2/3, 3/4; recall 1/3, 1/3, 2/3, 1
    # envelope 1, 3/4, 3/4, 3/4 -> AP = 1/3 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6
    assert average_precision(predictions, truth, 0.3) == pytest.approx(5 / 6)
    # at 0.95 nothing matches
    assert average_precision(predictions, truth, 0.95) == 0.0
    assert math.isnan(average_precision(predictions, [], 0.5))


def test_map_averages_classes_with_truth_and_ignores_other_predictions():
    truth = [Segment("v", 0, 0.0, 4.0), Segment("v", 1, 10.0, 14.0)]
    predictions = [Segment("v", 0, 0.0, 4.0, 0.5), Segment("v", 2, 0.0, 4.0, 0.9)]  # class 1 missed
    result = localization_map(predictions, truth, tious=(0.5, 0.7))
    assert result == {"mAP@0.5": 0.5, "mAP@0.7": 0.5, "mAP": 0.5}


def test_nms_keeps_the_best_and_drops_its_overlaps_per_class_and_video():
    proposals = [
        Segment("v", 0, 0.0, 10.0, 0.9),
        Segment("v", 0, 1.0, 10.0, 0.8),  # tIoU 0.9 with the best: dropped
        Segment("v", 0, 8.0, 20.0, 0.7),  # tIoU 2/20: kept
        Segment("v", 1, 0.0, 10.0, 0.6),  # another class: kept
        Segment("w", 0, 0.0, 10.0, 0.5),  # another video: kept
    ]
    kept = nms(proposals, threshold=0.5)
    assert sorted((s.video, s.label, s.start) for s in kept) == [("v", 0, 0.0), ("v", 0, 8.0), ("v", 1, 0.0),
                                                                 ("w", 0, 0.0)]


def test_proposals_from_scores_use_the_live_detector_and_score_perfectly_on_clean_input():
    from avbind.models.localization import proposals
    from avbind.realtime.postprocess.events import DetectorSettings

    times = np.arange(50) * 0.2
    scores = np.zeros((50, 3))
    scores[5:20, 0] = 0.9  # 1.0 .. 4.0 s
    scores[30:45, 2] = 0.8  # 6.0 .. 9.0 s
    found = proposals("v", times, scores, DetectorSettings(), step_s=0.2)
    assert [(s.label, round(s.start, 6), round(s.end, 6)) for s in found] == [(0, 1.0, 4.0), (2, 6.0, 9.0)]
    truth = [Segment("v", 0, 1.0, 4.0), Segment("v", 2, 6.0, 9.0)]
    assert localization_map(found, truth)["mAP"] == pytest.approx(1.0)
