"""Evaluation: AVE segment accuracy for the offline clip form and the streaming step form.

A segment's prediction is the mean of its steps' class probabilities (argmax over classes plus
background), the same rule the realtime engine uses to publish per-segment predictions. The
streaming form runs each test video step by step with the state carried, as it would live.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avbind.models.checkpoint import load_model
from avbind.models.config import ModelConfig
from avbind.models.data.ave import AveDataset, load_ave
from avbind.models.data.steps import IGNORE, PreparedVideo, prepare_dataset
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


@torch.no_grad()
def run_clip(model: AVBindNet, video: PreparedVideo, mask: tuple[float, float]) -> dict[str, np.ndarray]:
    """Offline: the clip form over the whole video at once."""
    inputs = video.step_inputs(0, len(video.labels), model.config)
    t = len(video.labels)
    m = torch.tensor(mask, dtype=torch.float32).expand(1, t, 2).contiguous()
    outputs, _ = model(torch.from_numpy(inputs["frame"])[None], torch.from_numpy(inputs["log_mel"])[None], m)
    return {k: v[0].numpy() for k, v in outputs.items()}


def run_stream(runner: Backend, video: PreparedVideo, mask: tuple[float, float]) -> dict[str, np.ndarray]:
    """Online: one step at a time with the state carried, through a backend (PyTorch's step form,
    ONNX Runtime, TensorRT), exactly as a deployment runs the model."""
    config = ModelConfig.from_dict(runner.info.config)
    state = runner.initial_state(1)
    steps = []
    for inputs in video.stream_steps(config, mask):
        out, state = runner.step(inputs, state)
        steps.append(out)
    return {k: np.concatenate([s[k] for s in steps]) for k in steps[0]}


@dataclass
class FormResult:
    segment_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # rows: truth, columns: prediction; background last
    predictions: list[list[int]] = field(repr=False)  # per video, per segment
    verb_noun: dict[str, float] | None = None  # top-1 / top-5 at event steps, where the data has them


def _topk(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean()) if len(truth) else float("nan")


def score(
    outputs: list[dict[str, np.ndarray]], videos: list[PreparedVideo], names: list[str],
) -> FormResult:
    n = len(names)
    confusion = np.zeros((n, n), dtype=np.int64)
    predictions = []
    verb_scores, noun_scores, action_scores, verb_truth, noun_truth = [], [], [], [], []
    for out, video in zip(outputs, videos, strict=True):
        pred = segment_predictions(softmax(out["event_logits"]), video.step_segments, len(video.segment_labels))
        np.add.at(confusion, (video.segment_labels, pred), 1)
        predictions.append(pred.tolist())
        if "verb_logits" in out:
            keep = video.verbs != IGNORE
            verb_scores.append(out["verb_logits"][keep])
            noun_scores.append(out["noun_logits"][keep])
            actions = out["action_scores"]  # (T, verbs, nouns); a video may have no event step at all
            action_scores.append(actions[keep].reshape(-1, int(np.prod(actions.shape[1:]))))
            verb_truth.append(video.verbs[keep])
            noun_truth.append(video.nouns[keep])
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(names)
    }
    verb_noun = None
    if verb_scores:
        verbs, nouns = np.concatenate(verb_truth), np.concatenate(noun_truth)
        vs, ns, acts = np.concatenate(verb_scores), np.concatenate(noun_scores), np.concatenate(action_scores)
        action_truth = verbs * ns.shape[1] + nouns
        verb_noun = {
            "verb_top1": _topk(vs, verbs, 1), "verb_top5": _topk(vs, verbs, 5),
            "noun_top1": _topk(ns, nouns, 1), "noun_top5": _topk(ns, nouns, 5),
            "action_top1": _topk(acts, action_truth, 1), "action_top5": _topk(acts, action_truth, 5),
        }
    accuracy = float(np.trace(confusion) / confusion.sum()) if confusion.sum() else float("nan")
    return FormResult(accuracy, per_class, confusion.tolist(), predictions, verb_noun)


def agreement(a: FormResult, b: FormResult) -> float:
    """Fraction of segments on which two forms predict the same class."""
    x, y = np.concatenate(a.predictions), np.concatenate(b.predictions)
    return float((x == y).mean())


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
    data_dir: str | Path, split: str, config: ModelConfig, cache_dir: str | Path | None, progress: bool, name: str,
) -> tuple[AveDataset, list[PreparedVideo], list[str], dict]:
    """The split's prepared videos, its label names (background last) and the report's header."""
    dataset = load_ave(data_dir, split)
    videos = prepare_dataset(dataset, config, cache_dir or Path(data_dir) / ".avbind-cache", progress=progress)
    report = {"split": split, "videos": len(videos), "segments": int(sum(len(v.segment_labels) for v in videos)),
              "model": name, "skipped": [{"video": vid, "reason": why} for vid, why in videos.skipped],
              "ablations": {}}
    return dataset, videos, [*dataset.class_names, "background"], report


def evaluate(
    checkpoint: str | Path | AVBindNet, data_dir: str | Path, split: str = "test", out_dir: str | Path | None = None,
    ablations: tuple[str, ...] = tuple(ABLATIONS), streaming: bool = True, progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Segment accuracy of each ablation, offline and (for fusion) streaming, plus their agreement."""
    from tqdm import tqdm

    model = checkpoint if isinstance(checkpoint, AVBindNet) else load_model(checkpoint)
    model.eval()
    dataset, videos, names, report = _prepare_split(data_dir, split, model.config, cache_dir, progress,
                                                    model.config.name)
    if list(dataset.class_names) != list(model.class_names or dataset.class_names):
        raise ValueError(f"{data_dir}: classes {dataset.class_names} differ from the model's {model.class_names}")
    for ablation in ablations:
        mask = ABLATIONS[ablation]
        outputs = [run_clip(model, v, mask) for v in tqdm(videos, desc=f"{ablation} (clip)", disable=not progress,
                                                           leave=False)]
        result = score(outputs, videos, names)
        entry = {"offline": {k: v for k, v in asdict(result).items() if k != "predictions"}}
        if streaming and ablation == "fusion":
            runner = TorchBackend(model)
            streamed = [run_stream(runner, v, mask) for v in tqdm(videos, desc="fusion (stream)",
                                                                   disable=not progress, leave=False)]
            stream_result = score(streamed, videos, names)
            entry["streaming"] = {k: v for k, v in asdict(stream_result).items() if k != "predictions"}
            entry["stream_offline_agreement"] = agreement(result, stream_result)
        if out_dir is not None:
            png_path = Path(out_dir) / f"confusion-{ablation.replace(' ', '_')}.png"
            title = f"{model.config.name}, {split}, {ablation}: {result.segment_accuracy:.1%}"
            png = save_confusion_png(result.confusion, names, png_path, title)
            entry["confusion_png"] = str(png)
        report["ablations"][ablation] = entry
    if out_dir is not None:
        (Path(out_dir) / "eval.json").write_text(strict_json(report))
    return report


def evaluate_model_file(
    model_path: str | Path, data_dir: str | Path, split: str = "test", backend: str = "onnxruntime",
    ablations: tuple[str, ...] = tuple(ABLATIONS), progress: bool = True, cache_dir: str | Path | None = None,
) -> dict:
    """Streaming segment accuracy of an exported model file run by a runtime backend."""
    from tqdm import tqdm

    runner = create_backend(model_path, backend)
    _, videos, names, report = _prepare_split(data_dir, split, ModelConfig.from_dict(runner.info.config), cache_dir,
                                              progress, f"{Path(model_path).name} ({runner.describe()})")
    for ablation in ablations:
        outputs = [run_stream(runner, v, ABLATIONS[ablation])
                   for v in tqdm(videos, desc=ablation, disable=not progress, leave=False)]
        result = score(outputs, videos, names)
        report["ablations"][ablation] = {"streaming": {k: v for k, v in asdict(result).items() if k != "predictions"}}
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
        vn = (entry.get("offline") or entry["streaming"]).get("verb_noun")
        if vn and name == "fusion":
            lines.append("              " + "  ".join(f"{k} {v:.1%}" for k, v in vn.items()))
    fusion = report["ablations"].get("fusion")
    if fusion:
        lines.append("  per class (fusion): " + ", ".join(
            f"{k} {v:.0%}" for k, v in (fusion.get("offline") or fusion["streaming"])["per_class_accuracy"].items()))
    return "\n".join(lines)
