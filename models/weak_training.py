"""Weakly supervised training (``avbind train --weak``): each video's label is the set of classes it
contains, never when they happen.

The network is the same AVBindNet, in clip form over whole videos, with one switch: its event
output is relevance-gated (``HeadDims.gate_by_relevance``), so P(background) = 1 - relevance and
the relevance score is BaS-Net's foreground filter. The trained model therefore streams, exports,
evaluates and feeds the live event detector exactly like a supervised one. The losses are in
``models/weak_supervision.py``.

Where the step labels of a data set are needed at all (to prepare the videos), only their set of
classes reaches the trainer: :func:`video_level_labels` is the one place that reads them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avbind.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from avbind.models.config import ModelConfig, WeakTrainConfig, get_config
from avbind.models.data.ave import load_ave
from avbind.models.data.steps import IGNORE, PreparedVideo, prepare_dataset
from avbind.models.network import AUDIO, VIDEO, AVBindNet
from avbind.models.training import TrainState, build_model, modality_dropout_mask, warmup_cosine_lr
from avbind.models.weak_supervision import (
    RegionMemoryBank,
    WarmKMeans,
    background_suppression_losses,
    cluster_confidence,
    info_nce,
    mean_threshold_pseudo_labels,
    mil_loss,
    pseudo_label_loss,
    region_features,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeakVideo:
    """What weak training may know of a video: its inputs and the classes it contains."""

    video: PreparedVideo
    classes: np.ndarray  # (C,) 0/1
    verbs: np.ndarray  # (V,) 0/1, empty without verb/noun data
    nouns: np.ndarray  # (N_nouns,) 0/1


def video_level_labels(
    videos: list[PreparedVideo], num_classes: int, num_verbs: int, num_nouns: int
) -> list[WeakVideo]:
    """Reduce step labels to video labels: which classes (verbs, nouns) occur, not where."""
    out = []
    for v in videos:
        classes = np.zeros(num_classes, np.float32)
        classes[[c for c in np.unique(v.labels) if c < num_classes]] = 1
        verbs, nouns = np.zeros(num_verbs, np.float32), np.zeros(num_nouns, np.float32)
        if num_verbs:
            verbs[[x for x in np.unique(v.verbs) if x != IGNORE]] = 1
            nouns[[x for x in np.unique(v.nouns) if x != IGNORE]] = 1
        out.append(WeakVideo(v, classes, verbs, nouns))
    return out


class WeakTrainingHeads(torch.nn.Module):
    """Training-only parts: per-modality MIL classifiers and the contrastive projection."""

    def __init__(self, model: AVBindNet, projection_dim: int) -> None:
        super().__init__()
        c = model.config
        self.video = torch.nn.Linear(c.video.last_channels, c.heads.num_classes)
        self.audio = torch.nn.Linear(c.audio.embed_dim, c.heads.num_classes)
        self.projection = torch.nn.Sequential(
            torch.nn.Linear(c.fusion.hidden_dim, c.fusion.hidden_dim), torch.nn.ReLU(),
            torch.nn.Linear(c.fusion.hidden_dim, projection_dim),
        )


class DenoisedContrast:
    """DCC across videos: pseudo-labels, K-means denoising, region features, memory bank, InfoNCE."""

    def __init__(self, tc: WeakTrainConfig, num_classes: int) -> None:
        self.tc, self.num_classes = tc, num_classes
        self.kmeans = WarmKMeans(tc.kmeans_clusters, tc.kmeans_iterations, seed=tc.seed)
        self.bank = RegionMemoryBank(tc.bank_size, tc.projection_dim)
        self.next_id = 0
        self.kmeans_seconds = 0.0

    def pseudo_labels(
        self, projected: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-threshold pseudo-labels (N, T, C) and their K-means confidence (all 1 without denoising)."""
        n, t, _ = projected.shape
        pseudo = mean_threshold_pseudo_labels(scores, classes)
        if not self.tc.denoise:
            return pseudo, torch.ones_like(pseudo)
        began = time.perf_counter()
        clusters = self.kmeans(projected.detach().flatten(0, 1)).view(n, t)
        self.kmeans_seconds += time.perf_counter() - began
        return pseudo, cluster_confidence(pseudo, clusters, self.tc.kmeans_clusters)

    def loss(
        self, projected: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor, classes: torch.Tensor
    ) -> torch.Tensor:
        """projected: (N, T, D) unit vectors; pseudo, confidence: (N, T, C); classes: (N, C)."""
        feats, labels = [], []
        for video, c in classes.nonzero().tolist():
            for weight, label in ((pseudo[video, :, c], c), (1 - pseudo[video, :, c], self.num_classes)):
                regions, valid = region_features(projected[video : video + 1], (weight * confidence[video, :, c])[None],
                                                 self.tc.regions)
                feats.append(regions[0][valid[0]])
                labels += [label] * int(valid.sum())
        if not labels:
            return projected.new_zeros(())
        feats_t = torch.cat(feats)
        labels_t = torch.tensor(labels, device=projected.device)
        ids = torch.arange(self.next_id, self.next_id + len(labels), device=projected.device)
        self.next_id += len(labels)
        bank_feats, bank_labels, bank_ids = self.bank.contents(projected.device)
        action = labels_t < self.num_classes
        loss = info_nce(feats_t[action], labels_t[action], ids[action],
                        torch.cat([feats_t, bank_feats]), torch.cat([labels_t, bank_labels]),
                        torch.cat([ids, bank_ids]), self.tc.temperature)
        self.bank.add(feats_t, labels_t, ids)
        return loss


def weak_losses(
    model: AVBindNet, extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor], batch: list[WeakVideo],
    mask: torch.Tensor, tc: WeakTrainConfig, contrast: DenoisedContrast, ramp: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """All weak loss terms of one batch; ``ramp`` in [0, 1] scales the terms that read the model's
    own T-CAS (contrast, pseudo-labels), which means nothing at the start."""
    device = outputs["hidden"].device
    classes = torch.from_numpy(np.stack([b.classes for b in batch])).to(device)
    t = outputs["hidden"].shape[1]
    k = max(1, round(t * tc.topk_fraction))
    parts: dict[str, torch.Tensor] = {}
    hidden, relevance = outputs["hidden"], outputs["relevance"]
    bas = background_suppression_losses(model.heads.event, hidden, relevance, classes, k)
    parts["base"] = bas["base"]
    if tc.suppression_weight:
        parts["filtered"] = tc.suppression_weight * bas["filtered"]
    if tc.norm_weight:
        parts["norm"] = tc.norm_weight * bas["norm"]
    if tc.auxiliary_weight:
        aux = hidden.new_zeros(())
        for head, features, column in ((extra.video, outputs["video_features"], VIDEO),
                                       (extra.audio, outputs["audio_features"], AUDIO)):
            present = mask[:, 0, column] > 0
            if present.any():
                aux = aux + mil_loss(head(features[present]), classes[present], k)
        parts["auxiliary"] = tc.auxiliary_weight * aux
    if tc.verb_noun_weight and "verb_logits" in outputs:
        verbs = torch.from_numpy(np.stack([b.verbs for b in batch])).to(device)
        nouns = torch.from_numpy(np.stack([b.nouns for b in batch])).to(device)
        parts["verb_noun"] = tc.verb_noun_weight * (mil_loss(outputs["verb_logits"], verbs, k)
                                                    + mil_loss(outputs["noun_logits"], nouns, k))
    if tc.contrast_weight or tc.pseudo_label_weight:
        projected = F.normalize(extra.projection(hidden), dim=-1)
        scores = outputs["event_logits"].detach().softmax(-1)[..., : model.config.heads.num_classes]
        pseudo, confidence = contrast.pseudo_labels(projected, scores, classes)
        if tc.contrast_weight:
            parts["contrast"] = ramp * tc.contrast_weight * contrast.loss(projected, pseudo, confidence, classes)
        if tc.pseudo_label_weight:
            parts["pseudo_label"] = ramp * tc.pseudo_label_weight * pseudo_label_loss(
                outputs["event_logits"], scores, pseudo, confidence, classes)
    total = sum(parts.values())
    return total, {name: float(v.detach()) for name, v in parts.items()}


def _batches(videos: list[WeakVideo], tc: WeakTrainConfig, rng: np.random.Generator, config: ModelConfig):
    order = rng.permutation(len(videos))
    for b in range(0, len(order) - tc.batch_size + 1, tc.batch_size):
        batch = [videos[i] for i in order[b : b + tc.batch_size]]
        length = min(len(w.video.labels) for w in batch)  # equal-length videos in practice (AVE: 10 s)
        inputs = [w.video.step_inputs(0, length, config) for w in batch]
        mask = modality_dropout_mask(len(batch), length, tc.drop_audio, tc.drop_video, rng)
        yield (batch, torch.from_numpy(np.stack([i["frame"] for i in inputs])),
               torch.from_numpy(np.stack([i["log_mel"] for i in inputs])), torch.from_numpy(mask))


def set_video_level_action_prior(model: AVBindNet, videos: list[WeakVideo]) -> None:
    """SAOA's verb-noun prior from which verbs and nouns occur together in a video."""
    if model.heads.verb_noun is None:
        return
    counts = sum(np.outer(w.verbs, w.nouns) for w in videos)
    model.heads.verb_noun.set_prior(torch.as_tensor(counts, dtype=torch.float32), smoothing=0.0)


def train_weak(
    data_dir: str | Path, out_dir: str | Path, tc: WeakTrainConfig | None = None, resume: bool = False,
    progress: bool = True, cache_dir: str | Path | None = None,
) -> Path:
    """Train from video-level labels; writes ``out_dir/last.pt`` each epoch and ``model.pt`` at the end."""
    from tqdm import tqdm

    tc = tc or WeakTrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dataset = load_ave(data_dir, "train")
    base = get_config(tc.model)
    gated = tc.suppression_weight > 0  # without the filter branch the relevance learns nothing
    model = build_model(replace(base, heads=replace(base.heads, gate_by_relevance=gated)), dataset)
    config = model.config
    prepared = prepare_dataset(dataset, config, cache_dir or Path(data_dir) / ".avbind-cache", progress=progress)
    videos = video_level_labels(prepared, config.heads.num_classes, config.heads.num_verbs, config.heads.num_nouns)
    set_video_level_action_prior(model, videos)
    extra = WeakTrainingHeads(model, tc.projection_dim)
    model = model.to(memory_format=torch.channels_last)
    params = [*model.parameters(), *extra.parameters()]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    per_epoch = len(videos) // tc.batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(videos)} training videos for batch_size {tc.batch_size}")
    total = per_epoch * tc.epochs
    state = TrainState()
    last = out_dir / "last.pt"
    settings = asdict(tc)
    if resume and last.is_file():
        payload = load_checkpoint(last)
        if payload.get("weak_train_config") != settings:
            raise ValueError(f"{last}: was trained with different settings; resume with the same ones")
        model.load_state_dict(payload["state_dict"])
        extra.load_state_dict(payload["weak_heads"])
        optimizer.load_state_dict(payload["optimizer"])
        state = TrainState(**payload["train_state"])
    contrast = DenoisedContrast(tc, config.heads.num_classes)  # the bank refills within an epoch after a resume
    for epoch in range(state.epoch, tc.epochs):
        model.train()
        extra.train()
        rng = np.random.default_rng([tc.seed, epoch])
        torch.manual_seed(tc.seed * 1000 + epoch)
        bar = tqdm(total=per_epoch, desc=f"weak epoch {epoch + 1}/{tc.epochs}", unit="batch", disable=not progress)
        sums: dict[str, float] = {}
        started, step_seconds = time.perf_counter(), 0.0
        contrast.kmeans_seconds = 0.0
        for b, (batch, frames, mels, mask) in enumerate(_batches(videos, tc, rng, config)):
            step = epoch * per_epoch + b
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, total, tc.lr, tc.warmup_fraction)
            ramp = min(1.0, step / max(1.0, tc.contrast_warmup_fraction * total))
            outputs, _ = model(frames, mels, mask, return_features=True)
            loss, parts = weak_losses(model, extra, outputs, batch, mask, tc, contrast, ramp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            step_seconds += time.perf_counter() - began
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix(loss=f"{sums['loss'] / (b + 1):.3f}")
            bar.update()
        bar.close()
        state.epoch = epoch + 1
        state.history.append({
            "epoch": epoch + 1, **{k: v / per_epoch for k, v in sums.items()},
            "seconds": time.perf_counter() - started,
            "kmeans_share_of_step_time": contrast.kmeans_seconds / max(step_seconds, 1e-9),
        })
        log.info("weak epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in state.history[-1].items()})
        save_checkpoint(last, model.to(memory_format=torch.contiguous_format), weak_train_config=settings,
                        optimizer=optimizer.state_dict(), weak_heads=extra.state_dict(), train_state=asdict(state))
        model = model.to(memory_format=torch.channels_last)
    payload = load_checkpoint(last)
    return save_checkpoint(out_dir / "model.pt", load_model(last), weak_train_config=payload["weak_train_config"],
                           train_state=payload["train_state"])


# Each variant switches one loss term off (or its denoising), so the differences from "full" are
# each term's contribution, measured at the same budget in the same run.
ABLATION_VARIANTS: dict[str, dict] = {
    "full": {},
    "without contrast": {"contrast_weight": 0.0},
    "without pseudo-label self-training": {"pseudo_label_weight": 0.0},
    "without K-means denoising": {"denoise": False},
    "without L1 on the filter": {"norm_weight": 0.0},
    "without background suppression": {"suppression_weight": 0.0, "norm_weight": 0.0},
}


def run_weak_ablation(
    data_dir: str | Path, localization_dir: str | Path, out_dir: str | Path, tc: WeakTrainConfig | None = None,
    variants: dict[str, dict] | None = None, progress: bool = True,
) -> dict:
    """Train every variant with the same recipe and seed; segment accuracy on ``data_dir``'s test
    split and localization mAP on ``localization_dir``'s. Writes ``out_dir/ablation.json``."""
    import json

    from avbind.models.evaluation import evaluate
    from avbind.models.localization import evaluate_localization

    tc = tc or WeakTrainConfig()
    out_dir = Path(out_dir)
    results: dict[str, dict] = {}
    for name, change in (variants or ABLATION_VARIANTS).items():
        run = out_dir / name.replace(" ", "-")
        began = time.perf_counter()
        path = train_weak(data_dir, run, replace(tc, **change), progress=progress)
        seconds = time.perf_counter() - began
        model = load_model(path)
        segments = evaluate(model, data_dir, "test", ablations=("fusion",), streaming=False, progress=progress)
        located = evaluate_localization(model, localization_dir, "test", progress=progress)
        history = load_checkpoint(path)["train_state"]["history"]
        results[name] = {
            "change": change, "train_seconds": seconds,
            "segment_accuracy": segments["ablations"]["fusion"]["offline"]["segment_accuracy"],
            "localization": located,
            "kmeans_share_of_step_time": float(np.mean([h["kmeans_share_of_step_time"] for h in history])),
        }
        log.info("ablation %s: %s", name, {k: v for k, v in results[name].items() if k != "localization"})
        (out_dir / "ablation.json").write_text(json.dumps({"recipe": asdict(tc), "variants": results}, indent=2))
    return results
