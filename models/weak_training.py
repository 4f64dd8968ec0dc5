"""Weakly supervised training (``avbind train --weak``): each video's label is the set of classes it
contains, never when they happen.

The network is the same AVBindNet, in clip form over whole videos, with one switch: its event
output is relevance-gated (``HeadDims.gate_by_relevance``): P(event) = relevance * (1 - the head's
own background), BaS-Net's foreground filter. The trained model therefore streams, exports,
evaluates and feeds the live event detector exactly like a supervised one. The losses are in
``models/weak_supervision.py``.

Two stages. The crop stage trains on short random crops with the dense video-class term alone
(each crop carries its video's classes, which hold at every step as "none of the others"): whole
videos give too few updates an epoch for the encoders to learn the classes from scratch. The
whole-video stage then adds everything that needs a whole video: top-k MIL, background
suppression, denoised contrast and pseudo-labels.

Where the step labels of a data set are needed at all (to prepare the videos), only their set of
classes reaches the trainer: :func:`video_level_labels` is the one place that reads them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
from avbind.models.training import TrainState, build_model, init_backbone, modality_dropout_mask, warmup_cosine_lr
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
    video_class_loss,
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
        self, snippets: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-threshold pseudo-labels (N, T, C) and their confidence (all 1 without denoising): how
        pure each one's K-means cluster of the (N, T, D) snippet features is."""
        n, t, _ = snippets.shape
        pseudo = mean_threshold_pseudo_labels(scores, classes)
        if not self.tc.denoise:
            return pseudo, torch.ones_like(pseudo)
        began = time.perf_counter()
        clusters = self.kmeans(snippets.detach().flatten(0, 1)).view(n, t)
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


def _video_targets(batch: list[WeakVideo], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's video-level classes, verbs and nouns as (N, K) multi-hot tensors."""
    return tuple(torch.from_numpy(np.stack([getattr(b, name) for b in batch])).to(device)
                 for name in ("classes", "verbs", "nouns"))


def _encoders(extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor]):
    """Per encoder: its training-only classifier, its (N, T, D) features and its modality-mask column."""
    return ((extra.video, outputs["video_features"], VIDEO), (extra.audio, outputs["audio_features"], AUDIO))


def _per_modality(
    extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor], mask: torch.Tensor, classes: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``loss(logits, classes)`` of each encoder's own classifier, over the videos that have that modality."""
    total = classes.new_zeros(())
    for head, features, column in _encoders(extra, outputs):
        present = mask[:, 0, column] > 0
        if present.any():
            total = total + loss(head(features[present]), classes[present])
    return total


@torch.no_grad()
def encoder_class_scores(
    extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """(N, T, C): each step's class probabilities from the encoders' own classifiers, averaged over
    the modalities the step has.

    Pseudo-labels come from here rather than from the fused event output because the fused output
    aggregates over time (causally): it carries an event for seconds after the event has ended, and
    pseudo-labels read from it would teach it to go on doing so. An encoder sees one step (the
    audio window, the frame and its temporal shift), so its T-CAS ends when the event does.
    """
    total, count = 0.0, 0.0
    for head, features, column in _encoders(extra, outputs):
        present = mask[..., column : column + 1]  # (N, T, 1)
        total = total + present * head(features).softmax(-1)
        count = count + present
    return total / count.clamp_min(1.0)


def encoder_snippet_features(
    extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """(N, T, Dv + Da): each step's encoder features, unit-norm per modality and zero where absent:
    what K-means groups to denoise the encoders' pseudo-labels (DCC clusters snippet features,
    which see one snippet each, not the temporally aggregated state)."""
    return torch.cat([F.normalize(features.detach(), dim=-1) * mask[..., column : column + 1]
                      for _, features, column in _encoders(extra, outputs)], dim=-1)


def weak_losses(
    model: AVBindNet, extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor], batch: list[WeakVideo],
    mask: torch.Tensor, tc: WeakTrainConfig, contrast: DenoisedContrast, ramp: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """All weak loss terms of one batch; ``ramp`` in [0, 1] scales the terms that read the model's
    own T-CAS (contrast, pseudo-labels), which means nothing at the start."""
    classes, verbs, nouns = _video_targets(batch, outputs["hidden"].device)
    t = outputs["hidden"].shape[1]
    k = max(1, round(t * tc.topk_fraction))
    parts: dict[str, torch.Tensor] = {}
    # The foreground filter is the event output's event probability (see relevance_gated_logits).
    # softmax, not exp: a gated output is already log-probabilities, an ungated one
    # (suppression_weight=0) is plain logits, and the L1 term may still read it.
    hidden, foreground = outputs["hidden"], 1 - outputs["event_logits"].softmax(-1)[..., -1]
    bas = background_suppression_losses(model.heads.event, hidden, foreground, classes, k)
    parts["base"] = bas["base"]
    if tc.suppression_weight:
        parts["filtered"] = tc.suppression_weight * bas["filtered"]
    if tc.norm_weight:
        parts["norm"] = tc.norm_weight * bas["norm"]
    num_classes = model.config.heads.num_classes
    if tc.video_class_weight:
        parts["video_class"] = tc.video_class_weight * video_class_loss(
            outputs["event_logits"][..., :num_classes], classes)
    if tc.auxiliary_weight:
        def modality_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            dense = tc.video_class_weight * video_class_loss(logits, targets) if tc.video_class_weight else 0.0
            return mil_loss(logits, targets, k) + dense

        parts["auxiliary"] = tc.auxiliary_weight * _per_modality(extra, outputs, mask, classes, modality_loss)
    if tc.verb_noun_weight and "verb_logits" in outputs:
        parts["verb_noun"] = tc.verb_noun_weight * (mil_loss(outputs["verb_logits"], verbs, k)
                                                    + mil_loss(outputs["noun_logits"], nouns, k))
    if tc.contrast_weight or tc.pseudo_label_weight:
        projected = F.normalize(extra.projection(hidden), dim=-1)
        if tc.pseudo_labels_from == "encoders":
            scores = encoder_class_scores(extra, outputs, mask)
            snippets = encoder_snippet_features(extra, outputs, mask)
        else:
            scores = outputs["event_logits"].detach().softmax(-1)[..., :num_classes]
            snippets = projected
        pseudo, confidence = contrast.pseudo_labels(snippets, scores, classes)
        if tc.contrast_weight:
            parts["contrast"] = ramp * tc.contrast_weight * contrast.loss(projected, pseudo, confidence, classes)
        if tc.pseudo_label_weight:
            parts["pseudo_label"] = ramp * tc.pseudo_label_weight * pseudo_label_loss(
                outputs["event_logits"], scores, pseudo, confidence, classes)
    total = sum(parts.values())
    return total, {name: float(v.detach()) for name, v in parts.items()}


def crop_losses(
    model: AVBindNet, extra: WeakTrainingHeads, outputs: dict[str, torch.Tensor], batch: list[WeakVideo],
    mask: torch.Tensor, tc: WeakTrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The crop stage's terms: every step's class (verb, noun) choice against its video's, on the
    event head and on each encoder. A crop may hold no event, so nothing here says where one is."""
    classes, verbs, nouns = _video_targets(batch, outputs["hidden"].device)
    parts = {"video_class": video_class_loss(outputs["event_logits"][..., : model.config.heads.num_classes], classes)}
    if tc.auxiliary_weight:
        parts["auxiliary"] = tc.auxiliary_weight * _per_modality(extra, outputs, mask, classes, video_class_loss)
    if tc.verb_noun_weight and "verb_logits" in outputs:
        parts["verb_noun"] = tc.verb_noun_weight * (video_class_loss(outputs["verb_logits"], verbs)
                                                    + video_class_loss(outputs["noun_logits"], nouns))
    total = sum(parts.values())
    return total, {name: float(v.detach()) for name, v in parts.items()}


def _batch(picked: list[tuple[WeakVideo, int, int]], config: ModelConfig, tc: WeakTrainConfig,
           rng: np.random.Generator):
    inputs = [w.video.step_inputs(start, stop, config) for w, start, stop in picked]
    mask = modality_dropout_mask(len(picked), picked[0][2] - picked[0][1], tc.drop_audio, tc.drop_video, rng)
    return ([w for w, _, _ in picked], torch.from_numpy(np.stack([i["frame"] for i in inputs])),
            torch.from_numpy(np.stack([i["log_mel"] for i in inputs])), torch.from_numpy(mask))


def _video_batches(videos: list[WeakVideo], tc: WeakTrainConfig, rng: np.random.Generator, config: ModelConfig):
    order = rng.permutation(len(videos))
    for b in range(0, len(order) - tc.batch_size + 1, tc.batch_size):
        batch = [videos[i] for i in order[b : b + tc.batch_size]]
        length = min(len(w.video.labels) for w in batch)  # equal-length videos in practice (AVE: 10 s)
        yield _batch([(w, 0, length) for w in batch], config, tc, rng)


def _crop_batches(videos: list[WeakVideo], tc: WeakTrainConfig, rng: np.random.Generator, config: ModelConfig):
    crops = [(w, int(rng.integers(0, len(w.video.labels) - tc.crop_steps + 1)))
             for w in videos for _ in range(tc.crops_per_video)]
    order = rng.permutation(len(crops))
    for b in range(0, len(order) - tc.crop_batch_size + 1, tc.crop_batch_size):
        yield _batch([(crops[j][0], crops[j][1], crops[j][1] + tc.crop_steps)
                      for j in order[b : b + tc.crop_batch_size]], config, tc, rng)


def set_video_level_action_prior(model: AVBindNet, videos: list[WeakVideo]) -> None:
    """SAOA's verb-noun prior from which verbs and nouns occur together in a video."""
    if model.heads.verb_noun is None:
        return
    counts = sum(np.outer(w.verbs, w.nouns) for w in videos)
    model.heads.verb_noun.set_prior(torch.as_tensor(counts, dtype=torch.float32), smoothing=0.0)


def train_weak(
    data_dir: str | Path, out_dir: str | Path, tc: WeakTrainConfig | None = None, resume: bool = False,
    progress: bool = True, cache_dir: str | Path | None = None, warm_start: str | Path | None = None,
) -> Path:
    """Train from video-level labels; writes ``out_dir/last.pt`` each epoch and ``model.pt`` at the end.

    The crop stage (``tc.crop_epochs``) comes first, then the whole-video stage (``tc.epochs``), each
    with its own warm-up and cosine decay. ``warm_start``: a ``last.pt`` written at the end of a
    crop stage with the same model; its weights start the whole-video stage and the crop stage is
    skipped (the ablation trains the crop stage once and shares it).
    """
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
    init_backbone(model, tc)
    config = model.config
    prepared = prepare_dataset(dataset, config, cache_dir or Path(data_dir) / ".avbind-cache", progress=progress)
    videos = video_level_labels(prepared, config.heads.num_classes, config.heads.num_verbs, config.heads.num_nouns)
    if tc.crop_epochs and any(len(w.video.labels) < tc.crop_steps for w in videos):
        raise ValueError(f"crop_steps={tc.crop_steps} is longer than a training video")
    set_video_level_action_prior(model, videos)
    extra = WeakTrainingHeads(model, tc.projection_dim)
    stages = {"crops": (len(videos) * tc.crops_per_video // tc.crop_batch_size, _crop_batches),
              "videos": (len(videos) // tc.batch_size, _video_batches)}
    for name, (per_epoch, _) in stages.items():
        if per_epoch == 0 and (tc.crop_epochs if name == "crops" else tc.epochs):
            raise ValueError(f"{len(videos)} training videos are too few for one batch of the {name} stage")
    state = TrainState()
    last = out_dir / "last.pt"
    settings = asdict(tc)
    optimizer_state = None
    if resume and last.is_file():
        payload = load_checkpoint(last)
        if payload.get("weak_train_config") != settings:
            raise ValueError(f"{last}: was trained with different settings; resume with the same ones")
        model.load_state_dict(payload["state_dict"])
        extra.load_state_dict(payload["weak_heads"])
        optimizer_state = payload["optimizer"]
        state = TrainState(**payload["train_state"])
    elif warm_start is not None:
        payload = load_checkpoint(warm_start)
        if payload["train_state"]["epoch"] != tc.crop_epochs:
            raise ValueError(f"{warm_start}: not the end of a {tc.crop_epochs}-epoch crop stage")
        model.load_state_dict(payload["state_dict"])
        extra.load_state_dict(payload["weak_heads"])
        state = TrainState(**payload["train_state"])
    model = model.to(memory_format=torch.channels_last)
    params = [*model.parameters(), *extra.parameters()]
    contrast = DenoisedContrast(tc, config.heads.num_classes)  # the bank refills within an epoch after a resume
    optimizer = None
    for epoch in range(state.epoch, tc.crop_epochs + tc.epochs):
        stage = "crops" if epoch < tc.crop_epochs else "videos"
        per_epoch, batches = stages[stage]
        stage_epoch = epoch if stage == "crops" else epoch - tc.crop_epochs
        stage_epochs = tc.crop_epochs if stage == "crops" else tc.epochs
        stage_total = per_epoch * stage_epochs
        peak = tc.whole_video_lr if stage == "videos" and tc.crop_epochs else tc.lr
        if optimizer is None or stage_epoch == 0:  # each stage starts a fresh optimizer
            optimizer = torch.optim.AdamW(params, lr=peak, weight_decay=tc.weight_decay)
            if optimizer_state is not None and stage_epoch != 0:  # resumed inside a stage
                optimizer.load_state_dict(optimizer_state)
        optimizer_state = None
        model.train()
        extra.train()
        rng = np.random.default_rng([tc.seed, epoch])
        torch.manual_seed(tc.seed * 1000 + epoch)
        bar = tqdm(total=per_epoch, desc=f"weak {stage} {stage_epoch + 1}/{stage_epochs}",
                   unit="batch", disable=not progress)
        sums: dict[str, float] = {}
        started, step_seconds = time.perf_counter(), 0.0
        contrast.kmeans_seconds = 0.0
        for b, (batch, frames, mels, mask) in enumerate(batches(videos, tc, rng, config)):
            step = stage_epoch * per_epoch + b
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, stage_total, peak, tc.warmup_fraction)
            outputs, _ = model(frames, mels, mask, return_features=True)
            if stage == "crops":
                loss, parts = crop_losses(model, extra, outputs, batch, mask, tc)
            else:
                ramp = min(1.0, step / max(1.0, tc.contrast_warmup_fraction * stage_total))
                loss, parts = weak_losses(model, extra, outputs, batch, mask, tc, contrast, ramp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            step_seconds += time.perf_counter() - began
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value
            if b % 10 == 0:
                log.debug("weak %s step %d: %s", stage, step, {k: round(v, 3) for k, v in parts.items()})
            bar.set_postfix(loss=f"{sums['loss'] / (b + 1):.3f}")
            bar.update()
        bar.close()
        state.epoch = epoch + 1
        entry = {"epoch": epoch + 1, "stage": stage, **{k: v / per_epoch for k, v in sums.items()},
                 "seconds": time.perf_counter() - started}
        if stage == "videos":
            entry["kmeans_share_of_step_time"] = contrast.kmeans_seconds / max(step_seconds, 1e-9)
        state.history.append(entry)
        log.info("weak epoch %d (%s): %s", epoch + 1, stage,
                 {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
        save_checkpoint(last, model.to(memory_format=torch.contiguous_format), weak_train_config=settings,
                        optimizer=optimizer.state_dict(), weak_heads=extra.state_dict(), train_state=asdict(state))
        model = model.to(memory_format=torch.channels_last)
    payload = load_checkpoint(last)
    return save_checkpoint(out_dir / "model.pt", load_model(last), weak_train_config=payload["weak_train_config"],
                           train_state=payload["train_state"])


# Each variant switches one part off (or its denoising), so the differences from "full" are each
# part's contribution, measured in the same run. They all start the whole-video stage from the same
# crop stage, trained once; a variant without a crop stage spends about the same time on more
# whole-video epochs instead (see run_weak_ablation).
ABLATION_VARIANTS: dict[str, dict] = {
    "full": {},
    "without contrast": {"contrast_weight": 0.0},
    "without pseudo-label self-training": {"pseudo_label_weight": 0.0},
    "without K-means denoising": {"denoise": False},
    "without L1 on the filter": {"norm_weight": 0.0},
    "without background suppression": {"suppression_weight": 0.0, "norm_weight": 0.0},
    "without the dense video-class term": {"video_class_weight": 0.0},
    "pseudo-labels from the fused output": {"pseudo_labels_from": "fused"},  # as DCC: the model's own T-CAS
}
# Not in the default run (it costs as much as the other variants together): the crop stage itself,
# e.g. variants={"without the crop stage": {"crop_epochs": 0}}.
# Whole-video epochs that cost about as much as one crop epoch (measured on avsynth: 130 s vs 165 s).
CROP_EPOCH_IN_VIDEO_EPOCHS = 0.8
# The settings the crop stage reads: a shared crop stage serves every recipe that agrees on these,
# whatever its whole-video stage does, and an ablation variant may not change them.
CROP_STAGE_SETTINGS = ("model", "crop_epochs", "crop_steps", "crops_per_video", "crop_batch_size", "lr",
                       "warmup_fraction", "weight_decay", "drop_audio", "drop_video", "auxiliary_weight",
                       "verb_noun_weight", "projection_dim", "seed")


def _crop_stage_settings(settings: dict) -> dict:
    return {name: settings.get(name) for name in CROP_STAGE_SETTINGS}


def _shared_crop_stage(data_dir: str | Path, out: Path, tc: WeakTrainConfig, progress: bool) -> tuple[Path, float]:
    """The crop stage every variant starts from, and its training time; a finished one in ``out``
    with the same settings is reused, so an interrupted ablation does not train it again."""
    crop_only = replace(tc, epochs=0)
    last = out / "last.pt"
    if last.is_file() and (out / "model.pt").is_file():
        payload = load_checkpoint(last)
        if _crop_stage_settings(payload.get("weak_train_config") or {}) == _crop_stage_settings(asdict(crop_only)):
            log.info("ablation: reusing the crop stage in %s", out)
            return last, float(sum(h["seconds"] for h in payload["train_state"]["history"]))
    began = time.perf_counter()
    train_weak(data_dir, out, crop_only, progress=progress)
    return last, time.perf_counter() - began


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
    report = out_dir / "ablation.json"
    earlier = json.loads(report.read_text())["variants"] if report.is_file() else {}
    shared, shared_seconds = None, 0.0
    for name, change in (variants or ABLATION_VARIANTS).items():
        run = out_dir / name.replace(" ", "-")
        variant = replace(tc, **change)
        if not variant.crop_epochs and tc.crop_epochs:  # the same time on whole videos instead
            variant = replace(variant, epochs=tc.epochs + round(tc.crop_epochs * CROP_EPOCH_IN_VIDEO_EPOCHS))
        if name in earlier and (run / "model.pt").is_file() and \
                load_checkpoint(run / "model.pt").get("weak_train_config") == asdict(variant):
            log.info("ablation: reusing the finished variant %r in %s", name, run)  # an interrupted run goes on
            results[name] = earlier[name]
            continue
        began = time.perf_counter()
        if variant.crop_epochs and set(change) & set(CROP_STAGE_SETTINGS):
            raise ValueError(f"ablation variant {name!r} changes the crop stage, which the variants share")
        warm = None
        if variant.crop_epochs:
            if shared is None:
                shared, shared_seconds = _shared_crop_stage(data_dir, out_dir / "crop-stage", tc, progress)
                began = time.perf_counter()
            warm = shared
        path = train_weak(data_dir, run, variant, progress=progress, warm_start=warm)
        seconds = time.perf_counter() - began + (shared_seconds if warm else 0.0)
        model = load_model(path)
        segments = evaluate(model, data_dir, "test", ablations=("fusion",), streaming=False, progress=progress)
        located = evaluate_localization(model, localization_dir, "test", progress=progress)
        history = load_checkpoint(path)["train_state"]["history"]
        shares = [h["kmeans_share_of_step_time"] for h in history if "kmeans_share_of_step_time" in h]
        results[name] = {
            "change": change, "crop_epochs": variant.crop_epochs, "epochs": variant.epochs, "train_seconds": seconds,
            "segment_accuracy": segments["ablations"]["fusion"]["offline"]["segment_accuracy"],
            "localization": located,
            "kmeans_share_of_step_time": float(np.mean(shares)) if shares else None,
        }
        log.info("ablation %s: %s", name, {k: v for k, v in results[name].items() if k != "localization"})
        report.write_text(json.dumps({"recipe": asdict(tc), "variants": results}, indent=2))
    return results
