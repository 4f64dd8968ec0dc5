"""Supervised training on per-segment labels, with the clip form of the network.

The clip form uses the same uni-directional shift and causal fusion as the step form, so the
trained weights run online unchanged. Modality dropout (whole crops with the camera or the
microphone masked) teaches the model what to do when one input is missing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avbind.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from avbind.models.config import ModelConfig, TrainConfig, WeakTrainConfig, get_config
from avbind.models.data.dataset import IGNORE, DataSet, open_dataset
from avbind.models.data.steps import PreparedVideo, prepare_dataset
from avbind.models.network import AUDIO, VIDEO, AVBindNet

log = logging.getLogger(__name__)


class AuxiliaryHeads(torch.nn.Module):
    """Training-only classifiers on each encoder's own features (not part of the exported model).

    Supervision otherwise reaches the encoders only through fusion, GRU and heads; a direct signal
    per modality ("which event is this, from the picture alone / the sound alone") makes each
    encoder learn its own cues (motion direction, chirp direction) several times faster.
    """

    def __init__(self, model: AVBindNet) -> None:
        super().__init__()
        c = model.config
        self.video = torch.nn.Linear(c.video.last_channels, c.heads.num_classes)
        self.audio = torch.nn.Linear(c.audio.embed_dim, c.heads.num_classes)

    def loss(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor,
             background: int) -> torch.Tensor:
        """Cross-entropy on event steps where that modality is present."""
        total = outputs["video_features"].new_zeros(())
        for head, features, column in ((self.video, outputs["video_features"], VIDEO),
                                       (self.audio, outputs["audio_features"], AUDIO)):
            keep = (labels != background) & (mask[..., column] > 0)
            if keep.any():
                total = total + F.cross_entropy(head(features[keep]), labels[keep])
        return total


@dataclass
class TrainState:
    """What a checkpoint needs beyond the weights to resume exactly."""

    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)


def build_model(config: ModelConfig, dataset: DataSet) -> AVBindNet:
    heads = {"num_classes": len(dataset.class_names)}
    if dataset.verbs:
        heads.update(num_verbs=len(dataset.verbs), num_nouns=len(dataset.nouns))
    config = replace(config, heads=replace(config.heads, **heads))
    model = AVBindNet(config)
    model.class_names = list(dataset.class_names)
    model.verb_names = list(dataset.verbs) or None
    model.noun_names = list(dataset.nouns) or None
    return model


def init_backbone(model: AVBindNet, tc: TrainConfig | WeakTrainConfig) -> None:
    """Start the video backbone from the weights its configuration names, unless told not to."""
    named = model.config.video.pretrained
    if named and tc.pretrained:
        from avbind.models.pretrained import init_pretrained_backbone

        loaded = init_pretrained_backbone(model.video)
        log.info("video backbone initialised from %s", loaded)
    elif named:
        log.info("video backbone from random weights (--no-pretrained; %s would be available)", named)
    if getattr(tc, "freeze_backbone", False):
        for parameter in model.video.parameters():
            parameter.requires_grad_(False)


def parameter_groups(model: AVBindNet, aux: nn.Module, tc: TrainConfig) -> list[dict]:
    """The backbone (unless frozen) and everything else, each with its own peak learning rate."""
    backbone = {id(p) for p in model.video.parameters()}
    rest = [p for p in [*model.parameters(), *aux.parameters()] if id(p) not in backbone]
    groups = [{"params": rest, "peak_lr": tc.lr}]
    if not tc.freeze_backbone:
        groups.append({"params": list(model.video.parameters()), "peak_lr": tc.backbone_lr or tc.lr})
    return groups


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers in eval mode: running statistics (ImageNet's, say) stay as they are."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def modality_dropout_mask(
    batch: int, steps: int, drop_audio: float, drop_video: float, rng: np.random.Generator
) -> np.ndarray:
    """(batch, steps, 2) modality mask: each clip loses its audio with probability ``drop_audio``
    or else its video with probability ``drop_video`` (a missing microphone or camera), never both."""
    mask = np.ones((batch, steps, 2), np.float32)
    draw = rng.random(batch)
    mask[draw < drop_audio, :, AUDIO] = 0.0
    mask[(draw >= drop_audio) & (draw < drop_audio + drop_video), :, VIDEO] = 0.0
    return mask


def warmup_cosine_lr(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_fraction`` of ``total`` steps, then cosine decay to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def crop_plan(
    videos: list[PreparedVideo], train: TrainConfig, rng: np.random.Generator,
) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
    """An epoch's batches as (video index, first step) crops and their modality masks.

    All randomness is drawn here, in one process, in a fixed order: whoever then reads the crops
    (this process, or loader workers on a GPU machine) the epoch is the same.
    """
    crops = [(i, int(rng.integers(0, len(v.labels) - train.crop_steps + 1)))
             for i, v in enumerate(videos) for _ in range(train.crops_per_video)]
    order = rng.permutation(len(crops))
    plan = []
    for b in range(0, len(order) - train.batch_size + 1, train.batch_size):
        picked = [crops[j] for j in order[b : b + train.batch_size]]
        mask = modality_dropout_mask(len(picked), train.crop_steps, train.drop_audio, train.drop_video, rng)
        if "audio" not in train.modalities:
            mask[:, :, AUDIO] = 0.0
            mask[:, :, VIDEO] = 1.0
        if "video" not in train.modalities:
            mask[:, :, VIDEO] = 0.0
            mask[:, :, AUDIO] = 1.0
        plan.append((picked, mask))
    return plan


class CropBatches(torch.utils.data.Dataset):
    """The planned batches, each read from the prepared clips on disk when asked for."""

    def __init__(self, videos: list[PreparedVideo], plan: list, crop_steps: int, config: ModelConfig) -> None:
        self.videos, self.plan, self.crop_steps, self.config = videos, plan, crop_steps, config

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int):
        picked, mask = self.plan[index]
        frames, mels, labels, verbs, nouns = [], [], [], [], []
        for i, start in picked:
            v, stop = self.videos[i], start + self.crop_steps
            inputs = v.step_inputs(start, stop, self.config)
            frames.append(inputs["frame"])
            mels.append(inputs["log_mel"])
            labels.append(v.labels[start:stop])
            verbs.append(v.verbs[start:stop])
            nouns.append(v.nouns[start:stop])
        return (
            torch.from_numpy(np.stack(frames)),  # (B, T, 3, S, S)
            torch.from_numpy(np.stack(mels)),
            torch.from_numpy(mask),
        ), (torch.from_numpy(np.stack(labels)), torch.from_numpy(np.stack(verbs)), torch.from_numpy(np.stack(nouns)))


def _crop_batches(
    videos: list[PreparedVideo], train: TrainConfig, config: ModelConfig, rng: np.random.Generator,
    device: torch.device | None = None, workers: int = 0,
):
    """Yield (inputs, targets) batches of random crops; all randomness comes from ``rng``.

    On CUDA, batches are read by ``workers`` processes into pinned memory and copied while the
    previous batch trains; on the CPU they are read in this process, in order.
    """
    batches = CropBatches(videos, crop_plan(videos, train, rng), train.crop_steps, config)
    if device is None or device.type == "cpu":
        yield from (batches[i] for i in range(len(batches)))
        return
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=True, persistent_workers=False)
    for inputs, targets in loader:
        yield (tuple(t.to(device, non_blocking=True) for t in inputs),
               tuple(t.to(device, non_blocking=True) for t in targets))


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when present, else the CPU; a named device must exist."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'})")
    return device


def compute_loss(
    model: AVBindNet, outputs: dict[str, torch.Tensor], targets: tuple[torch.Tensor, ...], train: TrainConfig,
    aux: AuxiliaryHeads | None = None, mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    labels, verbs, nouns = targets
    background = model.config.heads.num_classes
    event = F.cross_entropy(outputs["event_logits"].flatten(0, 1), labels.flatten())
    relevance = F.binary_cross_entropy(outputs["relevance"].flatten(), (labels != background).float().flatten())
    loss = event + train.relevance_weight * relevance
    parts = {"event": event.item(), "relevance": relevance.item()}
    if aux is not None and train.auxiliary_weight:
        auxiliary = aux.loss(outputs, labels, mask, background)
        loss = loss + train.auxiliary_weight * auxiliary
        parts["auxiliary"] = auxiliary.item()
    if "verb_logits" in outputs and (verbs != IGNORE).any():
        verb = F.cross_entropy(outputs["verb_logits"].flatten(0, 1), verbs.flatten(), ignore_index=IGNORE)
        noun = F.cross_entropy(outputs["noun_logits"].flatten(0, 1), nouns.flatten(), ignore_index=IGNORE)
        loss = loss + train.verb_noun_weight * (verb + noun)
        parts.update(verb=verb.item(), noun=noun.item())
    return loss, parts


def set_action_prior(model: AVBindNet, dataset: DataSet, videos: list[PreparedVideo]) -> None:
    """Verb-noun co-occurrence counted over the training steps (SAOA's action prior)."""
    if model.heads.verb_noun is None:
        return
    counts = torch.zeros(len(dataset.verbs), len(dataset.nouns))
    for v in videos:
        keep = v.verbs != IGNORE
        np.add.at(counts.numpy(), (v.verbs[keep], v.nouns[keep]), 1.0)
    model.heads.verb_noun.set_prior(counts, smoothing=0.0 if counts.sum() else 1.0)


def train(
    data: DataSet | str | Path, out_dir: str | Path, train_config: TrainConfig | None = None,
    resume: bool = False, progress: bool = True, cache_dir: str | Path | None = None,
    stop_after: int | None = None, device: str | None = None, workers: int | None = None,
) -> Path:
    """Train on ``data`` (a training split, or a folder whose format is detected); write
    ``out_dir/last.pt`` after every epoch.

    Crops are read from the prepared clips on disk (prepared first where missing), so memory holds
    batches, not videos. ``stop_after`` ends this call after that many epochs (a time-sliced run,
    continued later with ``resume``); the result is then ``last.pt`` and no ``model.pt`` yet.
    ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``; on CUDA with bfloat16
    mixed precision and ``workers`` loader processes (default 4).
    """
    from tqdm import tqdm

    tc = train_config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dataset = open_dataset(data, "train") if isinstance(data, str | Path) else data
    device_ = resolve_device(device)
    cuda = device_.type == "cuda"
    workers = (4 if cuda else 0) if workers is None else workers
    config = get_config(tc.model)
    if tc.input_size:
        config = replace(config, video=replace(config.video, input_size=tc.input_size))
    model = build_model(config, dataset)
    init_backbone(model, tc)
    config = model.config
    videos = prepare_dataset(dataset, config, cache_dir, progress=progress)
    if any(len(v.labels) < tc.crop_steps for v in videos):
        short = min(videos, key=lambda v: len(v.labels))
        raise ValueError(f"crop_steps={tc.crop_steps} is longer than training video {short.video_id} "
                         f"({len(short.labels)} steps)")
    set_action_prior(model, dataset, videos)
    model = model.to(device_, memory_format=torch.channels_last)  # measured ~1.6x faster MobileNet training on CPU
    if tc.checkpointing not in ("auto", "on", "off"):
        raise ValueError(f"checkpointing must be auto, on or off, got {tc.checkpointing!r}")
    model.video.checkpointing = tc.checkpointing == "on" or (tc.checkpointing == "auto" and not cuda)

    batches_per_epoch = len(videos) * tc.crops_per_video // tc.batch_size
    total = batches_per_epoch * tc.epochs
    aux = AuxiliaryHeads(model).to(device_)
    optimizer = torch.optim.AdamW(parameter_groups(model, aux, tc), lr=tc.lr, weight_decay=tc.weight_decay)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    state = TrainState()
    last = out_dir / "last.pt"
    if resume and last.is_file():
        payload = load_checkpoint(last)
        # How activations are kept does not change the training: a run may resume with either.
        def recipe(config: dict | None) -> dict | None:
            return None if config is None else {k: v for k, v in config.items() if k != "checkpointing"}

        if recipe(payload.get("train_config")) != recipe(_jsonable(tc)):
            raise ValueError(f"{last}: was trained with different settings; resume with the same ones")
        model.load_state_dict(payload["state_dict"])
        aux.load_state_dict(payload["auxiliary_heads"])
        model.to(device_)
        aux.to(device_)
        optimizer.load_state_dict(payload["optimizer"])
        state = TrainState(**payload["train_state"])
        log.info("resuming from %s after epoch %d", last, state.epoch)

    last_epoch = tc.epochs if stop_after is None else min(tc.epochs, state.epoch + stop_after)
    for epoch in range(state.epoch, last_epoch):
        model.train()
        aux.train()
        if tc.freeze_bn or tc.freeze_backbone:
            freeze_batchnorm(model.video)
        rng = np.random.default_rng([tc.seed, epoch])  # per-epoch stream: resuming replays the same crops
        torch.manual_seed(tc.seed * 1000 + epoch)
        bar = tqdm(total=batches_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", disable=not progress)
        sums: dict[str, float] = {}
        started, seen = time.perf_counter(), 0
        for b, (inputs, targets) in enumerate(_crop_batches(videos, tc, config, rng, device_, workers)):
            step = epoch * batches_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, total, group["peak_lr"], tc.warmup_fraction)
            frames, mels, mask = inputs
            optimizer.zero_grad(set_to_none=True)
            n = frames.shape[0]
            size = tc.micro_batch or n
            for first in range(0, n, size):  # one pass unless micro_batch is set: then the same gradient
                part = slice(first, first + size)  # summed over passes, in a fraction of the memory
                weight = (min(first + size, n) - first) / n
                # CUDA: bfloat16 autocast (no loss scaling needed); the CPU path stays float32 and deterministic
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    outputs, _ = model(frames[part], mels[part], mask[part], return_features=True)
                    loss, parts = compute_loss(model, outputs, tuple(t[part] for t in targets), tc, aux, mask[part])
                (loss * weight if weight != 1 else loss).backward()
                for k, v in {"loss": loss.item(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v * weight
            torch.nn.utils.clip_grad_norm_(trained, 5.0)
            optimizer.step()
            seen += frames.shape[0] * frames.shape[1]
            rate = seen / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{sums['loss'] / (b + 1):.3f}", steps_s=f"{rate:.0f}")
            bar.update()
        bar.close()
        state.epoch = epoch + 1
        state.history.append({
            "epoch": epoch + 1, **{k: v / batches_per_epoch for k, v in sums.items()},
            "steps_per_s": seen / (time.perf_counter() - started), "seconds": time.perf_counter() - started,
        })
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in state.history[-1].items()})
        save_checkpoint(
            last, model.to(memory_format=torch.contiguous_format), train_config=_jsonable(tc),
            optimizer=optimizer.state_dict(), auxiliary_heads=aux.state_dict(), train_state=asdict(state),
        )
        model = model.to(memory_format=torch.channels_last)
        if cuda:
            state.history[-1]["device"] = torch.cuda.get_device_name(device_)
    if last_epoch < tc.epochs:
        return last
    # The deliverable: weights and names without the optimizer, a third of the size.
    payload = load_checkpoint(last)
    final = load_model(last)
    return save_checkpoint(out_dir / "model.pt", final, train_config=payload["train_config"],
                           train_state=payload["train_state"])


def _jsonable(tc: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(tc).items()}
