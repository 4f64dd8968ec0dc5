"""Evaluation: AVE segment accuracy for the offline clip form and the streaming step form.

A segment's prediction is the mean of its steps' class probabilities (argmax over classes plus
background), the same rule the realtime engine uses to publish per-segment predictions. The
streaming form runs each test video step by step with the state carried, as it would live.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avbind.models.checkpoint import load_model
from avbind.models.config import ModelConfig
from avbind.models.data.dataset import IGNORE, DataSet, open_dataset
from avbind.models.data.steps import PreparedVideo, prepare_dataset
from avbind.models.network import AVBindNet
from avbind.realtime.backends import Backend, create_backend
from avbind.realtime.backends.torch_backend import TorchBackend
from avbind.realtime.postprocess.stream_outputs import softmax

log = logging.getLogger(__name__)

ABLATIONS = {"fusion": (1.0, 1.0), "video only": (1.0, 0.0), "audio only": (0.0, 1.0)}  # mask [video, audio]


def segment_predictions(step_probs: np.ndarray, step_segments: np.ndarray, n_segments: int) -> np.ndarray:
    """(segments,) argmax of the mean step probabilities in each segment."""
    sums = np.zeros((n_segments, step_probs.shape[1]))
    np.add.at(sums, step_segments, step_probs)
    return sums.argmax(axis=1)


CHUNK_STEPS = 256  # steps run (clip form) or reduced (step form) at a time: bounded memory for hour-long videos


def _rank(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) how many classes score strictly higher than the true one: top-k means rank < k."""
    return (scores > np.take_along_axis(scores, truth[:, None], axis=1)).sum(axis=1)


class _Outputs:
    """A video's outputs, gathered chunk by chunk.

    Per-step action scores are (T, verbs, nouns): 1 GB for an hour of EPIC-100. They are reduced
    as they come: each event step keeps the rank of its true action, each scored segment the sum
    of its steps' scores; everything else (T x a few hundred) is kept whole.
    """

    def __init__(self, video: PreparedVideo) -> None:
        self.video, self.offset, self.parts = video, 0, {}
        self.segment_sums: np.ndarray | None = None

    def add(self, out: dict[str, np.ndarray]) -> None:
        n, video = len(out["event_logits"]), self.video
        for key, value in out.items():
            if key != "action_scores":
                self.parts.setdefault(key, []).append(value)
        if "action_scores" in out:
            scores = out["action_scores"].reshape(n, -1)
            verbs, nouns = video.verbs[self.offset : self.offset + n], video.nouns[self.offset : self.offset + n]
            keep = verbs != IGNORE
            rank = np.full(n, -1, np.int64)
            if keep.any():
                rank[keep] = _rank(scores[keep], verbs[keep] * out["action_scores"].shape[-1] + nouns[keep])
            self.parts.setdefault("step_action_rank", []).append(rank)
            if len(video.actions):
                if self.segment_sums is None:
                    self.segment_sums = np.zeros((len(video.actions), scores.shape[1]), np.float64)
                lo = np.clip(video.actions[:, 0], self.offset, self.offset + n) - self.offset
                hi = np.clip(video.actions[:, 1], self.offset, self.offset + n) - self.offset
                for j in np.flatnonzero(hi > lo):
                    self.segment_sums[j] += scores[lo[j] : hi[j]].sum(axis=0)
        self.offset += n

    def result(self) -> dict[str, np.ndarray]:
        result = {k: np.concatenate(v) for k, v in self.parts.items()}
        if self.segment_sums is not None:
            lengths = self.video.actions[:, 1] - self.video.actions[:, 0]
            result["segment_action_scores"] = (self.segment_sums / lengths[:, None]).astype(np.float32)
        return result


@torch.no_grad()
def run_clip(model: AVBindNet, video: PreparedVideo, mask: tuple[float, float],
             chunk: int = CHUNK_STEPS) -> dict[str, np.ndarray]:
    """Offline: the clip form over the video, ``chunk`` steps at a time with the state carried
    (the same computation as one pass over all of it, in bounded memory)."""
    gathered, state, t = _Outputs(video), None, len(video.labels)
    device = next(model.parameters()).device
    for start in range(0, t, chunk):
        stop = min(start + chunk, t)
        inputs = video.step_inputs(start, stop, model.config)
        m = torch.tensor(mask, dtype=torch.float32, device=device).expand(1, stop - start, 2).contiguous()
        frames = torch.from_numpy(inputs["frame"])[None].to(device)
        outputs, state = model(frames, torch.from_numpy(inputs["log_mel"])[None].to(device), m, state)
        gathered.add({k: v[0].float().cpu().numpy() for k, v in outputs.items()})
    return gathered.result()


def run_stream(runner: Backend, video: PreparedVideo, mask: tuple[float, float]) -> dict[str, np.ndarray]:
    """Online: one step at a time with the state carried, through a backend (PyTorch's step form,
    ONNX Runtime, TensorRT), exactly as a deployment runs the model."""
    config = ModelConfig.from_dict(runner.info.config)
    state = runner.initial_state(1)
    gathered, steps = _Outputs(video), []
    for inputs in video.stream_steps(config, mask):
        out, state = runner.step(inputs, state)
        steps.append(out)
        if len(steps) == CHUNK_STEPS:
            gathered.add({k: np.concatenate([s[k] for s in steps]) for k in steps[0]})
            steps = []
    if steps:
        gathered.add({k: np.concatenate([s[k] for s in steps]) for k in steps[0]})
    return gathered.result()


@dataclass
class FormResult:
    segment_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # rows: truth, columns: prediction; background last
    predictions: list[list[int]] = field(repr=False)  # per video, per one-second segment
    verb_noun: dict[str, float] | None = None  # top-1 / top-5 at event steps, where the data has them
    # The annotated segments, one prediction each (EPIC-100's action-recognition protocol), where
    # the data set has them: {"segments", "event_top1", ..., "action_top5"}.
    annotated: dict[str, float] | None = None
    # per video, per annotated segment: the predicted (event, verb, noun, action)
    annotated_predictions: list[list[list[int]]] = field(default_factory=list, repr=False)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    return softmax(logits.astype(np.float64))


def _annotated(out: dict[str, np.ndarray], video: PreparedVideo) -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """Ranks of the truth per annotated segment, from the mean of its steps' probabilities."""
    cum = {}
    for key in ("event_logits", "verb_logits", "noun_logits"):
        if key in out:
            probs = _softmax_rows(out[key])
            cum[key] = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0)])
    first, stop = video.actions[:, 0], video.actions[:, 1]
    lengths = (stop - first)[:, None]
    ranks, preds = {}, [np.zeros(len(first), np.int64)] * 4
    for name, key, column in (("event", "event_logits", 2), ("verb", "verb_logits", 3), ("noun", "noun_logits", 4)):
        if key not in cum:
            continue
        mean = (cum[key][stop] - cum[key][first]) / lengths
        keep = video.actions[:, column] != IGNORE
        rank = np.full(len(first), -1, np.int64)
        rank[keep] = _rank(mean[keep], video.actions[keep, column])
        ranks[name] = rank
        preds[("event", "verb", "noun").index(name)] = mean.argmax(axis=1)
    if "segment_action_scores" in out:
        scores = out["segment_action_scores"]
        nouns = out["noun_logits"].shape[1]
        keep = video.actions[:, 3] != IGNORE
        rank = np.full(len(first), -1, np.int64)
        rank[keep] = _rank(scores[keep], video.actions[keep, 3] * nouns + video.actions[keep, 4])
        ranks["action"] = rank
        preds[3] = scores.argmax(axis=1)
    return ranks, np.stack(preds, axis=1).tolist()


def _top(ranks: np.ndarray, k: int) -> float:
    ranks = ranks[ranks >= 0]
    return float((ranks < k).mean()) if len(ranks) else float("nan")


def score(
    outputs: list[dict[str, np.ndarray]], videos: list[PreparedVideo], names: list[str],
) -> FormResult:
    n = len(names)
    confusion = np.zeros((n, n), dtype=np.int64)
    predictions, annotated_predictions = [], []
    step_ranks: dict[str, list[np.ndarray]] = {"verb": [], "noun": [], "action": []}
    segment_ranks: dict[str, list[np.ndarray]] = {}
    for out, video in zip(outputs, videos, strict=True):
        pred = segment_predictions(softmax(out["event_logits"]), video.step_segments, len(video.segment_labels))
        np.add.at(confusion, (video.segment_labels, pred), 1)
        predictions.append(pred.tolist())
        if "verb_logits" in out:
            keep = video.verbs != IGNORE
            step_ranks["verb"].append(_rank(out["verb_logits"][keep], video.verbs[keep]))
            step_ranks["noun"].append(_rank(out["noun_logits"][keep], video.nouns[keep]))
            step_ranks["action"].append(out["step_action_rank"][keep])
        if len(video.actions):
            ranks, preds = _annotated(out, video)
            for name, rank in ranks.items():
                segment_ranks.setdefault(name, []).append(rank)
            annotated_predictions.append(preds)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(names)
    }
    verb_noun = None
    if step_ranks["verb"]:
        verb_noun = {f"{name}_top{k}": _top(np.concatenate(ranks), k)
                     for name, ranks in step_ranks.items() for k in (1, 5)}
    annotated = None
    if segment_ranks:
        joined = {name: np.concatenate(r) for name, r in segment_ranks.items()}
        annotated = {"segments": len(joined["event"]),
                     **{f"{name}_top{k}": _top(r, k) for name, r in joined.items() for k in (1, 5)}}
    accuracy = float(np.trace(confusion) / confusion.sum()) if confusion.sum() else float("nan")
    return FormResult(accuracy, per_class, confusion.tolist(), predictions, verb_noun, annotated,
                      annotated_predictions)


def agreement(a: FormResult, b: FormResult) -> float:
    """Fraction of segments on which two forms predict the same class."""
    x, y = np.concatenate(a.predictions), np.concatenate(b.predictions)
    return float((x == y).mean())


def annotated_agreement(a: FormResult, b: FormResult) -> float | None:
    """Fraction of annotated segments on which two forms predict the same event, verb, noun and action."""
    x = [p for video in a.annotated_predictions for p in video]
    y = [p for video in b.annotated_predictions for p in video]
    if not x:
        return None
    return float(np.mean([p == q for p, q in zip(x, y, strict=True)]))


def save_confusion_png(confusion: list[list[int]], names: list[str], path: str | Path, title: str) -> Path:
    """A row-normalised confusion matrix as a PNG, drawn with OpenCV (no plotting dependency)."""
    import cv2

    matrix = np.asarray(confusion, dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n, cell, margin = len(names), 36, 260
    image = np.full((margin + n * cell + 20, margin + n * cell + 20, 3), 255, np.uint8)
    for i in range(n):
        for j in range(n):
            shade = int(255 * (1 - rates[i, j]))
            top, left = margin + i * cell, margin + j * cell
            cv2.rectangle(image, (left, top), (left + cell - 1, top + cell - 1), (255, shade, shade), -1)
            if matrix[i, j]:
                colour = (255, 255, 255) if rates[i, j] > 0.5 else (0, 0, 0)
                cv2.putText(image, str(int(matrix[i, j])), (left + 3, top + 23), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            colour, 1, cv2.LINE_AA)
        label = names[i][:34]
        cv2.putText(image, label, (5, margin + i * cell + 23), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        # Column labels, written vertically.
        text = np.full((cell, margin - 10, 3), 255, np.uint8)
        cv2.putText(text, label, (5, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rotated = cv2.rotate(text, cv2.ROTATE_90_COUNTERCLOCKWISE)
        image[5 : 5 + rotated.shape[0], margin + i * cell : margin + i * cell + cell] = rotated
    cv2.putText(image, title, (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "rows: truth, columns: prediction", (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1,
                cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _prepare_split(
    data: DataSet | str | Path | Callable[[], DataSet], split: str, config: ModelConfig,
    cache_dir: str | Path | None, progress: bool, name: str,
) -> tuple[DataSet, list[PreparedVideo], list[str], dict]:
    """The split's prepared videos, its label names (background last) and the report's header."""
    if callable(data):  # opened now: after the model, whose errors come first
        data = data()
    dataset = open_dataset(data, split) if isinstance(data, str | Path) else data
    videos = prepare_dataset(dataset, config, cache_dir, progress=progress)
    report = {"format": dataset.format, "split": split, "videos": len(videos),
              "segments": int(sum(len(v.segment_labels) for v in videos)),
              "annotated_segments": int(sum(len(v.actions) for v in videos)),
              "model": name, "skipped": [{"video": vid, "reason": why} for vid, why in videos.skipped],
              "ablations": {}}
    return dataset, videos, [*dataset.class_names, "background"], report


def _entry(result: FormResult) -> dict:
    return {k: v for k, v in asdict(result).items() if k not in ("predictions", "annotated_predictions")}


def evaluate(
    checkpoint: str | Path | AVBindNet, data: DataSet | str | Path | Callable[[], DataSet], split: str = "test",
    out_dir: str | Path | None = None,
    ablations: tuple[str, ...] = tuple(ABLATIONS), streaming: bool = True, progress: bool = True,
    cache_dir: str | Path | None = None, device: str | None = None,
) -> dict:
    """Segment accuracy of each ablation, offline and (for fusion) streaming, plus their agreement.

    ``data`` is a data set (:func:`~avbind.models.data.dataset.open_dataset`) or a folder whose
    format is detected. Where it has annotated segments (EPIC-100), each also gets one prediction
    per segment, scored top-1/top-5 for event, verb, noun and action.
    """
    from tqdm import tqdm

    from avbind.models.training import resolve_device

    model = checkpoint if isinstance(checkpoint, AVBindNet) else load_model(checkpoint)
    device_ = resolve_device(device)
    model.eval().to(device_)
    dataset, videos, names, report = _prepare_split(data, split, model.config, cache_dir, progress,
                                                    model.config.name)
    if list(dataset.class_names) != list(model.class_names or dataset.class_names):
        shown = (f"{len(dataset.class_names)} classes ({', '.join(dataset.class_names[:3])}, ...) differ from the "
                 f"model's {len(model.class_names)} ({', '.join(model.class_names[:3])}, ...)")
        raise ValueError(f"{dataset.root}: {shown}")
    for ablation in ablations:
        mask = ABLATIONS[ablation]
        outputs = [run_clip(model, v, mask) for v in tqdm(videos, desc=f"{ablation} (clip)", disable=not progress,
                                                           leave=False)]
        result = score(outputs, videos, names)
        entry = {"offline": _entry(result)}
        if streaming and ablation == "fusion":
            runner = TorchBackend(model, str(device_))
            streamed = [run_stream(runner, v, mask) for v in tqdm(videos, desc="fusion (stream)",
                                                                   disable=not progress, leave=False)]
            stream_result = score(streamed, videos, names)
            entry["streaming"] = _entry(stream_result)
            entry["stream_offline_agreement"] = agreement(result, stream_result)
            annotated = annotated_agreement(result, stream_result)
            if annotated is not None:
                entry["annotated_stream_offline_agreement"] = annotated
        if out_dir is not None:
            png_path = Path(out_dir) / f"confusion-{ablation.replace(' ', '_')}.png"
            title = f"{model.config.name}, {split}, {ablation}: {result.segment_accuracy:.1%}"
            png = save_confusion_png(result.confusion, names, png_path, title)
            entry["confusion_png"] = str(png)
        report["ablations"][ablation] = entry
    report["device"] = torch.cuda.get_device_name(device_) if device_.type == "cuda" else "cpu"
    if out_dir is not None:
        (Path(out_dir) / "eval.json").write_text(strict_json(report))
    return report


def evaluate_model_file(
    model_path: str | Path, data: DataSet | str | Path | Callable[[], DataSet], split: str = "test",
    backend: str = "onnxruntime",
    ablations: tuple[str, ...] = tuple(ABLATIONS), progress: bool = True, cache_dir: str | Path | None = None,
) -> dict:
    """Streaming segment accuracy of an exported model file run by a runtime backend."""
    from tqdm import tqdm

    runner = create_backend(model_path, backend)
    _, videos, names, report = _prepare_split(data, split, ModelConfig.from_dict(runner.info.config), cache_dir,
                                              progress, f"{Path(model_path).name} ({runner.describe()})")
    for ablation in ablations:
        outputs = [run_stream(runner, v, ABLATIONS[ablation])
                   for v in tqdm(videos, desc=ablation, disable=not progress, leave=False)]
        result = score(outputs, videos, names)
        report["ablations"][ablation] = {"streaming": _entry(result)}
    runner.close()
    return report


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float as None.

    An undefined figure (a class with no test segment) is NaN in memory; Python's json module
    would write it as the bare word NaN, which no strict JSON reader (jq, JavaScript, Go) accepts.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def strict_json(value: Any) -> str:
    """JSON any reader accepts: undefined figures are null (see :func:`json_ready`)."""
    return json.dumps(json_ready(value), indent=2, allow_nan=False)


def format_report(report: dict) -> str:
    lines = [f"{report['model']} on {report['split']}: {report['videos']} videos, {report['segments']} segments"]
    if report.get("annotated_segments"):
        lines[0] += f", {report['annotated_segments']} annotated segments"
    skipped = report.get("skipped") or []
    if skipped:  # scored without them: the figures below are over fewer videos than the split has
        lines[0] += f" ({len(skipped)} skipped: not decodable)"
        lines += [f"  skipped {s['video']}: {s['reason']}" for s in skipped]
    for name, entry in report["ablations"].items():
        line = f"  {name:<11}"
        if "offline" in entry:
            line += f" offline {entry['offline']['segment_accuracy']:6.1%}"
        if "streaming" in entry:
            line += f"   streaming {entry['streaming']['segment_accuracy']:6.1%}"
        if "stream_offline_agreement" in entry:
            line += f"   agreement {entry['stream_offline_agreement']:6.1%}"
        lines.append(line)
        form = entry.get("offline") or entry["streaming"]
        vn = form.get("verb_noun")
        if vn and name == "fusion":
            lines.append("    per step:  " + "  ".join(f"{k} {v:.1%}" for k, v in vn.items()))
        annotated = form.get("annotated")
        if annotated:
            lines.append(f"    {annotated['segments']} annotated segments: " + "  ".join(
                f"{k} {v:.1%}" for k, v in annotated.items() if k != "segments"))
    fusion = report["ablations"].get("fusion")
    if fusion:
        lines.append("  per class (fusion): " + ", ".join(
            f"{k} {v:.0%}" for k, v in (fusion.get("offline") or fusion["streaming"])["per_class_accuracy"].items()))
    return "\n".join(lines)
