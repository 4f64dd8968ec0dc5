"""Temporal action localization: proposal suppression and THUMOS-style mAP at several tIoUs.

Proposals come from :func:`avbind.realtime.postprocess.events.detect_events`, the same detector
that publishes live event boundaries, so offline localization and online events share one
definition of an event. Numpy only, apart from :func:`evaluate_localization`, which runs a model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avbind.realtime.postprocess.events import DetectorSettings, detect_events

if TYPE_CHECKING:
    from avbind.models.network import AVBindNet

THUMOS_TIOUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class Segment:
    video: str
    label: int
    start: float  # s
    end: float  # s
    score: float = 1.0  # confidence of a prediction; ignored for ground truth


def proposals(
    video: str, times: np.ndarray, scores: np.ndarray, settings: DetectorSettings | None = None,
    step_s: float = 0.0, nms_threshold: float = 0.5,
) -> list[Segment]:
    """Proposals of one video from its class scores over time (T, classes), e.g. a T-CAS after a
    softmax: the live event detector run offline, then non-maximum suppression."""
    found = detect_events(np.asarray(times), np.asarray(scores), settings, step_s)
    return nms([Segment(video, c, start, end, score) for c, start, end, score in found], nms_threshold)


def temporal_iou(start: float, end: float, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Intersection over union of [start, end) with each [starts[i], ends[i])."""
    inter = np.clip(np.minimum(end, ends) - np.maximum(start, starts), 0, None)
    union = (end - start) + (ends - starts) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(segments: Sequence[Segment], threshold: float = 0.5) -> list[Segment]:
    """Greedy non-maximum suppression per video and class: keep the best-scoring proposal, drop the
    others that overlap it by tIoU > ``threshold``, repeat."""
    groups: dict[tuple[str, int], list[Segment]] = defaultdict(list)
    for s in segments:
        groups[(s.video, s.label)].append(s)
    kept = []
    for group in groups.values():
        group = sorted(group, key=lambda s: -s.score)
        while group:
            best, rest = group[0], group[1:]
            kept.append(best)
            if not rest:
                break
            starts, ends = np.array([s.start for s in rest]), np.array([s.end for s in rest])
            ious = temporal_iou(best.start, best.end, starts, ends)
            group = [s for s, iou in zip(rest, ious, strict=True) if iou <= threshold]
    return kept


def average_precision(predictions: Sequence[Segment], truth: Sequence[Segment], tiou: float) -> float:
    """AP of one class's predictions against its ground truth at one tIoU threshold.

    Predictions are taken best score first; each matches the unmatched ground-truth segment of the
    same video it overlaps most, if that overlap is >= ``tiou``; a ground-truth segment is matched
    at most once (later hits are false positives). AP is the area under the precision-recall curve
    with precision made monotone (each point takes the best precision at equal or higher recall).
    NaN when the class has no ground truth.
    """
    if not truth:
        return float("nan")
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(truth):
        by_video[t.video].append(i)
    starts = np.array([t.start for t in truth])
    ends = np.array([t.end for t in truth])
    used = np.zeros(len(truth), bool)
    order = sorted(predictions, key=lambda p: -p.score)
    hits = np.zeros(len(order))
    for k, p in enumerate(order):
        candidates = [i for i in by_video.get(p.video, []) if not used[i]]
        if not candidates:
            continue
        ious = temporal_iou(p.start, p.end, starts[candidates], ends[candidates])
        best = int(np.argmax(ious))
        if ious[best] >= tiou:
            used[candidates[best]] = True
            hits[k] = 1
    if not len(order):
        return 0.0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / len(truth)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    previous = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - previous) * envelope))


def localization_map(
    predictions: Sequence[Segment], truth: Sequence[Segment], tious: Sequence[float] = THUMOS_TIOUS,
) -> dict[str, float]:
    """mAP over the classes that have ground truth, at each tIoU (``"mAP@0.5"``) and averaged (``"mAP"``)."""
    classes = sorted({t.label for t in truth})
    out = {}
    for tiou in tious:
        aps = [average_precision([p for p in predictions if p.label == c], [t for t in truth if t.label == c], tiou)
               for c in classes]
        out[f"mAP@{tiou:g}"] = float(np.mean(aps)) if aps else float("nan")
    out["mAP"] = float(np.mean([out[f"mAP@{t:g}"] for t in tious])) if tious else float("nan")
    return out


def evaluate_localization(
    checkpoint: str | Path | AVBindNet, data_dir: str | Path, split: str = "test",
    settings: DetectorSettings | None = None, progress: bool = True, cache_dir: str | Path | None = None,
) -> dict:
    """Localization mAP of a model on an AVE-layout split whose videos may hold several events.

    Class scores per step (the softmax of the event output, background column dropped) go through
    :func:`proposals`, i.e. the live event detector; ground truth is every annotated event.
    """
    import torch
    from tqdm import tqdm

    from avbind.models.checkpoint import load_model
    from avbind.models.data.ave import load_ave
    from avbind.models.data.steps import prepare_dataset
    from avbind.models.evaluation import run_clip
    from avbind.models.network import AVBindNet

    model = checkpoint if isinstance(checkpoint, AVBindNet) else load_model(checkpoint)
    model.eval()
    dataset = load_ave(data_dir, split)
    videos = prepare_dataset(dataset, model.config, cache_dir or Path(data_dir) / ".avbind-cache", progress=progress)
    prepared = {v.video_id: v for v in videos}
    step_s = 1.0 / model.config.step_rate_hz
    num_classes = model.config.heads.num_classes
    predictions: list[Segment] = []
    truth: list[Segment] = []
    for video in tqdm(dataset.videos, desc="localization", disable=not progress, leave=False):
        if video.video_id not in prepared:  # undecodable: skipped (and logged) by prepare_dataset
            continue
        label = dataset.class_names.index(video.category)
        truth += [Segment(video.video_id, label, float(s), float(e)) for s, e in video.events]
        steps = prepared[video.video_id]
        outputs = run_clip(model, steps, (1.0, 1.0))
        probs = torch.from_numpy(outputs["event_logits"]).softmax(-1).numpy()[:, :num_classes]
        times = np.arange(len(probs)) * step_s
        predictions += proposals(video.video_id, times, probs, settings, step_s)
    return {"split": split, "videos": len(prepared), "skipped": len(videos.skipped), "events": len(truth),
            "proposals": len(predictions),
            **localization_map(predictions, truth)}
