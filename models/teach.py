"""``avbind teach train``: a user's own events, from a few takes, in about a minute on a CPU.

The recipe, and why:

* **avbind-lite0, both encoders fixed.** Nine ten-second takes cannot teach a CNN to see or to
  hear, but ImageNet's features already tell a cat from a cup, and the shipped avbind-s's audio
  encoder a word from a whistle. Their per-step features are computed once per take (the video
  backbone's clip form, its shift state carried through the take exactly as streaming carries
  it; cached on disk, so adding a take later computes only that take), and training runs only
  fusion, GRU and heads: hundreds of steps in seconds.
* **The audio encoder** is the shipped avbind-s's (same window and mel settings), with its
  BatchNorm statistics re-estimated on the takes; or, with ``audio_init="scratch"``, one trained
  from random weights, or ``"best"``, both, keeping the one that validates better. On the test
  scenes the shipped one heard 95 % of held-out segments alone against 52 % from scratch.
* **Augmentation**: each training take also as another camera placement might have caught it
  (zoomed, shifted, mirrored) and as other recordings might have heard it (noise, gain, a shift
  of the mel bands), each a copy of its features computed once.
* **Modality dropout**, as masks (no microphone or camera given) and as empty inputs that no mask
  announces (a muted microphone's silence, a covered camera's dark frames), so that either one
  alone still recognises.
* **Validation** on a held-out share of each class's takes (:mod:`~avbind.models.data.folder`),
  per class, with both inputs and with each alone; the model is then exported as the ONNX step
  model with the user's class names in its metadata, written atomically (``avbind run
  --watch-model`` may be watching the file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from avbind.models.config import BACKGROUND, ModelConfig, TeachConfig, get_config
from avbind.models.data.cache import clip_key, feature_key
from avbind.models.data.dataset import IGNORE, Clip
from avbind.models.data.folder import FolderDataset, Take, load_folder
from avbind.models.data.steps import PreparedVideo, prepare_dataset
from avbind.models.evaluation import ABLATIONS, FormResult, score, strict_json
from avbind.models.network import AUDIO, VIDEO, AVBindNet
from avbind.models.training import AuxiliaryHeads, build_model, compute_loss, warmup_cosine_lr
from avbind.realtime.features.frames import to_model_input
from avbind.realtime.features.log_mel import log_mel

log = logging.getLogger(__name__)

FEATURE_CHUNK = 32  # steps per encoder pass while computing features (bounded memory)
DARK_LEVELS = (0, 6, 18)  # pixel values of a covered camera's frames (a hand, a lens cap, a dark room)
QUIET_LEVELS = (0.0, 3e-4, 2e-3)  # RMS of a muted or unplugged microphone's signal (0: digital silence)
NOISE_DB = (-45.0, -20.0)  # dB of mixed-in noise power against a full-scale signal, augmentation
GAIN_DB = (-10.0, 6.0)  # dB of gain, augmentation (another distance to the microphone)


class TooLittleDataError(ValueError):
    """The folder cannot train a model; the message says what to record."""


@dataclass
class TakeData:
    """One take in memory: per-step encoder features, log-mel windows and labels."""

    video: PreparedVideo  # labels and one-second segments (for scoring)
    features: np.ndarray  # (T, last_channels) float32: the video backbone's output per step
    windows: np.ndarray  # (T, window_frames, n_mels) float32: each step's log-mel window
    reframed: list[np.ndarray] = field(default_factory=list)  # (T, last_channels) of reframed copies
    # (T, embed_dim) float32 per audio copy (the clean one first) from a fixed audio encoder;
    # empty while the audio encoder itself trains
    audio: list[np.ndarray] = field(default_factory=list)


@dataclass
class TeachReport:
    out: Path
    classes: list[str]  # event classes, background excluded
    takes: dict[str, dict[str, int]]  # class -> {"train": n, "val": n}
    audio_init: str  # where the kept audio encoder came from: "shipped" or "scratch"
    validation: dict[str, dict] = field(default_factory=dict)  # per audio init tried, per input, accuracies
    seconds: dict[str, float] = field(default_factory=dict)  # prepare, features, train (each), export, total
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "out": str(self.out)}


# -- what a folder must hold ---------------------------------------------------------------------


def _record_hint(root: Path, classes: list[str], seconds: float = 10.0) -> str:
    return f"avbind teach record {root} --classes {','.join(classes)} --seconds {seconds:g}"


def check_takes(dataset: FolderDataset) -> list[str]:
    """Refuse a folder that cannot teach anything (:class:`TooLittleDataError`); warnings otherwise."""
    root = dataset.root
    if not dataset.class_names:
        raise TooLittleDataError(f"{root}: no classes: record some with `{_record_hint(root, ['knock', 'kettle'])}`, "
                                 f"or lay clips out as {root}/<class>/*.mp4")
    empty = [c for c in dataset.class_names if not dataset.takes_of(c)]
    if empty:
        raise TooLittleDataError(f"{root}: no takes of {', '.join(empty)}: record some with "
                                 f"`{_record_hint(root, empty)}`, or put clips in {root}/{empty[0]}/")
    warnings = []
    if not dataset.takes_of(BACKGROUND):
        if len(dataset.class_names) < 2:
            raise TooLittleDataError(f"{root}: one class ({dataset.class_names[0]}) and no background takes: nothing "
                                     f"to tell it from; record background (the room with none of it) with "
                                     f"`{_record_hint(root, list(dataset.class_names))}`")
        warnings.append(f"{root}: no background takes: the model will always name one of "
                        f"{', '.join(dataset.class_names)}; `avbind teach record` records background too")
    return warnings


def check_lengths(takes: list[Take], videos: list[PreparedVideo], tc: TeachConfig, step_rate_hz: float,
                  audio_window_s: float, root: Path) -> None:
    """Every take must hold at least one training crop (which is longer than the audio window)."""
    steps = {v.video_id: len(v.labels) for v in videos}
    need_s = max(tc.crop_steps / step_rate_hz, audio_window_s)
    short = [(t, steps.get(t.clip_id, 0) / step_rate_hz) for t in takes if steps.get(t.clip_id, 0) < tc.crop_steps]
    if short:
        take, seconds = short[0]
        more = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
        raise TooLittleDataError(
            f"{take.path}: {seconds:.1f} s of media{more}; a take must be at least {need_s:g} s (the model's audio "
            f"window is {audio_window_s:.2f} s, training crops {tc.crop_steps / step_rate_hz:g} s): record it "
            f"again with `{_record_hint(root, [take.category], 10)}` and delete the short one")


# -- the fixed encoders' features, once per take -------------------------------------------------


def backbone_key(model: AVBindNet) -> str:
    """Hash of the backbone's weights and of what its input was prepared with: a cache key."""
    digest = hashlib.sha1(feature_key(model.config).encode())
    digest.update(json.dumps(asdict(model.config.video), sort_keys=True).encode())
    for name, tensor in model.video.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@torch.no_grad()
def clip_features(model: AVBindNet, frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 step frames -> (T, last_channels): the backbone's clip form from a fresh
    state, the shift state carried from chunk to chunk (what a stream computes step by step)."""
    model.video.eval()
    states = model.initial_state(1, "cpu")[: len(model.video.state_shapes())]
    out = []
    for start in range(0, len(frames), FEATURE_CHUNK):
        x = torch.from_numpy(to_model_input(np.asarray(frames[start : start + FEATURE_CHUNK])))[None]  # (1, n, 3, S, S)
        features, states = model.video.forward_clip(x, states)
        out.append(features[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.video.last_channels), np.float32)


def take_features(model: AVBindNet, take: Take, video: PreparedVideo, cache_dir: Path,
                  copy: int = 0, seed: int = 0) -> np.ndarray:
    """A take's backbone features (``copy`` > 0: of a copy through :func:`reframe`), read from
    ``cache_dir`` where computed before."""
    folder = Path(cache_dir) / f"teach-video-{backbone_key(model)}"
    folder.mkdir(parents=True, exist_ok=True)
    key = clip_key(Clip(take.clip_id, take.path))
    path = folder / (f"{key}.npy" if not copy else f"{key}-reframed-{seed}-{copy}.npy")
    if path.is_file():
        features = np.load(path)
        if len(features) == len(video.labels):
            return features
    frames = np.asarray(video.frames[:])
    if copy:
        frames = reframe(frames, np.random.default_rng([seed, copy, int(key, 16) % 2**32]))
    features = clip_features(model, frames)
    tmp = path.with_name(path.stem + ".part.npy")
    np.save(tmp, features)
    tmp.replace(path)
    return features


def reframe(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same take as another camera placement might have caught it: zoomed in or out (the
    picture shrunk onto a blurred copy of itself), shifted, and mirrored half the time. One
    placement for the whole take, as a camera that stays put."""
    frames = np.asarray(frames)
    size = frames.shape[1]
    zoom = rng.uniform(0.6, 1.25)
    side = max(8, round(size * zoom))
    dx, dy = (rng.uniform(-0.5, 0.5, 2) * abs(size - side)).round().astype(int)
    flip = rng.random() < 0.5
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        scaled = cv2.resize(frame, (side, side), interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
        if side >= size:  # zoomed in: a window of the bigger picture
            top, left = (side - size) // 2 + dy, (side - size) // 2 + dx
            picture = scaled[top : top + size, left : left + size]
        else:  # zoomed out: the smaller picture over a blurred, full-size copy
            picture = cv2.blur(frame, (size // 4, size // 4))
            top, left = (size - side) // 2 + dy, (size - side) // 2 + dx
            picture[top : top + side, left : left + side] = scaled
        out[i] = picture[:, ::-1] if flip else picture
    return out


def covered_camera_features(model: AVBindNet, steps: int, seed: int) -> list[np.ndarray]:
    """Backbone features of dark, noisy frames (a covered camera), ``steps`` long, one per level."""
    rng = np.random.default_rng(seed)
    size = model.config.video.input_size
    out = []
    for level in DARK_LEVELS:
        frames = level + rng.normal(0, 2.0, (steps, size, size, 3)) + rng.normal(0, 3.0, 3)  # a slight tint
        out.append(clip_features(model, np.clip(frames, 0, 255).astype(np.uint8)))
    return out


def _steps_of_windows(mel: np.ndarray, model: AVBindNet, steps: int) -> np.ndarray:
    c = model.config
    hop = round(c.features.sample_rate / c.step_rate_hz / c.features.hop)  # mel frames per model step
    return np.stack([mel[i * hop : i * hop + c.audio.window_frames] for i in range(steps)])


def muted_microphone_windows(model: AVBindNet, steps: int, seed: int) -> list[np.ndarray]:
    """(steps, window_frames, n_mels) log-mel windows of a muted microphone, one per noise level."""
    c = model.config
    rng = np.random.default_rng(seed)
    samples = c.audio_window_samples + steps * round(c.features.sample_rate / c.step_rate_hz)
    return [_steps_of_windows(log_mel((rng.normal(0, level, samples) if level else np.zeros(samples))
                                      .astype(np.float32), c.features), model, steps) for level in QUIET_LEVELS]


def noise_profiles(model: AVBindNet, seed: int) -> np.ndarray:
    """(2, n_mels) mel power of white and pink noise at full-scale RMS: what augmentation mixes in."""
    rng = np.random.default_rng(seed)
    n = model.config.features.sample_rate  # 1 s
    white = rng.normal(0, 1, n)
    spectrum = np.fft.rfft(rng.normal(0, 1, n)) / np.sqrt(np.maximum(np.arange(n // 2 + 1), 1))
    pink = np.fft.irfft(spectrum, n)
    pink /= np.sqrt(np.mean(pink**2))
    return np.stack([np.exp(log_mel(x.astype(np.float32), model.config.features)).mean(axis=0)
                     for x in (white, pink)])


def augment_windows(windows: np.ndarray, rng: np.random.Generator, noise: np.ndarray, max_shift: int,
                    floor: float) -> np.ndarray:
    """The same sound as another recording might have caught it: noise mixed in at a random level,
    another gain, the mel bands shifted by a few (another voice). In the power domain, so the
    result is what the log-mel of that recording would have been, floor included."""
    power = np.exp(windows.astype(np.float64))
    shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0
    if shift:
        power = np.roll(power, shift, axis=-1)
        edge = slice(0, shift) if shift > 0 else slice(shift, None)
        power[..., edge] = np.exp(floor)  # bands rolled in from the far end held nothing here
    gain = 10 ** (rng.uniform(*GAIN_DB) / 10)
    mixed = power * gain + noise[int(rng.integers(len(noise)))] * 10 ** (rng.uniform(*NOISE_DB) / 10)
    return np.log(np.maximum(mixed, np.exp(floor))).astype(np.float32)


# -- the audio encoder ----------------------------------------------------------------------------


def init_audio(model: AVBindNet, how: str) -> str:
    """Start the audio encoder from the shipped avbind-s's weights ("shipped") or keep it random;
    returns what was done (shapes that do not match fall back to scratch, logged)."""
    if how != "shipped":
        return "scratch"
    from avbind.models.checkpoint import load_checkpoint
    from avbind.models.weights import default_checkpoint

    shipped = load_checkpoint(default_checkpoint())["state_dict"]
    ours = model.audio.state_dict()
    theirs = {k.removeprefix("audio."): v for k, v in shipped.items() if k.startswith("audio.")}
    if set(theirs) != set(ours) or any(theirs[k].shape != ours[k].shape for k in ours):
        log.warning("the shipped audio encoder does not fit %s's (shapes differ): starting from scratch",
                    model.config.name)
        return "scratch"
    model.audio.load_state_dict(theirs)
    return "shipped"


@torch.no_grad()
def encode_audio(model: AVBindNet, windows: np.ndarray) -> np.ndarray:
    """(T, W, M) log-mel windows -> (T, embed_dim) with the audio encoder in eval mode."""
    model.audio.eval()
    out = [model.audio(torch.from_numpy(windows[i : i + 256])).numpy() for i in range(0, len(windows), 256)]
    return np.concatenate(out) if out else np.zeros((0, model.config.audio.embed_dim), np.float32)


@torch.no_grad()
def adapt_normalisation(module: nn.Module, windows: list[np.ndarray]) -> None:
    """Re-estimate BatchNorm statistics on the user's sound (AdaBN): the shipped encoder's were
    avsynth's, and a real microphone's band levels differ by tens of dB. Weights are kept."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    module.train()
    every = np.concatenate(windows)
    order = np.random.default_rng(0).permutation(len(every))
    for i in range(0, len(every), 256):
        module(torch.from_numpy(every[np.sort(order[i : i + 256])]))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    module.eval()


# -- training the parts after the encoders -------------------------------------------------------


def _initial_fusion_state(model: AVBindNet, batch: int) -> list[torch.Tensor]:
    return model.initial_state(batch, "cpu")[len(model.video.state_shapes()) :]


@dataclass
class Extras:
    """What modality dropout and augmentation substitute: computed once per run."""

    dark: list[np.ndarray]  # (crop_steps, Dv) covered-camera features
    quiet: list[np.ndarray]  # (crop_steps, W, M) muted-microphone windows
    quiet_audio: list[np.ndarray]  # the same through the fixed audio encoder (empty while it trains)
    noise: np.ndarray  # (2, n_mels) noise power profiles
    floor: float  # log of the log-mel power floor


def _take_weights(data: list[TakeData]) -> np.ndarray:
    """Sampling weights: each class (background included) gets the same share of crops."""
    labels = [int(d.video.labels[0]) for d in data]
    steps = np.array([len(d.features) for d in data], np.float64)
    per_class = {c: steps[[i for i, x in enumerate(labels) if x == c]].sum() for c in set(labels)}
    weights = np.array([steps[i] / per_class[c] for i, c in enumerate(labels)])
    return weights / weights.sum()


def _batch(model: AVBindNet, data: list[TakeData], tc: TeachConfig, extras: Extras, rng: np.random.Generator,
           weights: np.ndarray, fixed_audio: bool):
    """A batch of random crops, each with what is missing drawn (modality dropout) and, where the
    audio encoder trains, its log-mel augmented; (video, audio input, mask), (labels, verbs, nouns)."""
    t = tc.crop_steps
    edges = np.cumsum([tc.drop_audio, tc.drop_video, tc.mute_audio, tc.cover_video])
    video, audio, labels = [], [], []
    mask = np.ones((tc.batch_size, t, 2), np.float32)
    for b in range(tc.batch_size):
        d = data[int(rng.choice(len(data), p=weights))]
        s = int(rng.integers(0, len(d.features) - t + 1))
        missing = int(np.searchsorted(edges, rng.random(), side="right"))  # 0-3: that one; 4: nothing
        copies = [d.features, *d.reframed]
        v = copies[int(rng.integers(len(copies)))][s : s + t]
        if fixed_audio:
            a = d.audio[int(rng.integers(len(d.audio)))][s : s + t]
        else:
            a = d.windows[s : s + t]
            if tc.audio_copies and rng.random() < tc.audio_copies / (tc.audio_copies + 1):
                a = augment_windows(a, rng, extras.noise, tc.max_mel_shift, extras.floor)
        if missing == 0:
            mask[b, :, AUDIO] = 0.0
        elif missing == 1:
            mask[b, :, VIDEO] = 0.0
        elif missing == 2:
            quiet = extras.quiet_audio if fixed_audio else extras.quiet
            a = quiet[int(rng.integers(len(quiet)))]
        elif missing == 3:
            v = extras.dark[int(rng.integers(len(extras.dark)))]
        video.append(v)
        audio.append(a)
        labels.append(d.video.labels[s : s + t])
    none = torch.full((tc.batch_size, t), IGNORE, dtype=torch.int64)
    return (torch.from_numpy(np.stack(video)), torch.from_numpy(np.stack(audio)), torch.from_numpy(mask)), (
        torch.from_numpy(np.stack(labels)), none, none.clone())


def _audio_features(model: AVBindNet, audio: torch.Tensor, fixed_audio: bool) -> torch.Tensor:
    if fixed_audio:
        return audio  # (B, T, Da): computed once
    n, t = audio.shape[:2]
    return model.audio(audio.flatten(0, 1)).view(n, t, -1)  # (B, T, W, M) -> (B, T, Da)


def train_after_encoders(model: AVBindNet, data: list[TakeData], tc: TeachConfig, extras: Extras,
                         fixed_audio: bool) -> list[dict]:
    """Train fusion, GRU and heads (and the audio encoder unless ``fixed_audio``) on the cached
    features; returns the mean losses of each tenth of the run."""
    torch.manual_seed(tc.seed)
    aux = AuxiliaryHeads(model)
    trained = [p for name, p in model.named_parameters()
               if not name.startswith("video.") and not (fixed_audio and name.startswith("audio."))]
    optimizer = torch.optim.AdamW([*trained, *aux.parameters()], lr=tc.lr, weight_decay=tc.weight_decay)
    rng = np.random.default_rng([tc.seed, 19])
    weights = _take_weights(data)
    total = tc.steps if fixed_audio else tc.scratch_steps
    history, sums, every = [], {}, max(1, total // 10)
    model.train()
    model.video.eval()  # fixed: its BatchNorm keeps ImageNet's statistics (and it is not run here)
    if fixed_audio:
        model.audio.eval()
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, total, tc.lr, tc.warmup_fraction)
        (video, audio, mask), targets = _batch(model, data, tc, extras, rng, weights, fixed_audio)
        outputs, _ = model.forward_features(video, _audio_features(model, audio, fixed_audio), mask,
                                            _initial_fusion_state(model, len(video)), return_features=True)
        loss, parts = compute_loss(model, outputs, targets, tc, aux, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 5.0)
        optimizer.step()
        for k, v in {"loss": loss.item(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
        if (step + 1) % every == 0 or step + 1 == total:
            n = (step % every) + 1
            history.append({"step": step + 1, **{k: round(v / n, 4) for k, v in sums.items()}})
            log.debug("teach step %d: %s", step + 1, history[-1])
            sums = {}
    model.eval()
    return history


@torch.no_grad()
def run_takes(model: AVBindNet, data: list[TakeData], mask: tuple[float, float]) -> list[dict[str, np.ndarray]]:
    """Each take whole from a fresh state, as a stream would run it; ``mask`` [video, audio]."""
    model.eval()
    outputs = []
    for d in data:
        t = len(d.features)
        m = torch.tensor(mask, dtype=torch.float32).expand(1, t, 2).contiguous()
        audio = torch.from_numpy(encode_audio(model, d.windows))[None]
        out, _ = model.forward_features(torch.from_numpy(d.features)[None], audio, m, _initial_fusion_state(model, 1))
        outputs.append({k: v[0].numpy() for k, v in out.items()})
    return outputs


def validate(model: AVBindNet, data: list[TakeData], names: list[str]) -> dict[str, FormResult]:
    """Segment accuracy per input: both, and each alone (the other masked, as a missing device is)."""
    videos = [d.video for d in data]
    return {name: score(run_takes(model, data, mask), videos, names) for name, mask in ABLATIONS.items()}


def _merit(results: dict[str, FormResult]) -> float:
    """What "measures better" means: both inputs and each alone, summed."""
    return sum(0.0 if math.isnan(r.segment_accuracy) else r.segment_accuracy for r in results.values())


# -- the whole command ---------------------------------------------------------------------------


def load_takes(videos: list[PreparedVideo], features: list[np.ndarray], config: ModelConfig) -> list[TakeData]:
    floor = float(np.log(config.features.log_floor))
    return [TakeData(v, f, v.windows(0, len(v.labels), config.audio.window_frames, floor))
            for v, f in zip(videos, features, strict=True)]


def fix_audio_encoder(model: AVBindNet, train_data: list[TakeData], tc: TeachConfig, extras: Extras) -> None:
    """The shipped audio encoder, its normalisation re-estimated on the training takes, then
    fixed: every take's features (clean and ``audio_copies`` augmented copies) computed once."""
    rng = np.random.default_rng([tc.seed, 23])
    copies = {id(d): [d.windows] + [augment_windows(d.windows, rng, extras.noise, tc.max_mel_shift, extras.floor)
                                    for _ in range(tc.audio_copies)] for d in train_data}
    adapt_normalisation(model.audio, [w for ws in copies.values() for w in ws])
    for d in train_data:
        d.audio = [encode_audio(model, w) for w in copies[id(d)]]
    extras.quiet_audio = [encode_audio(model, w) for w in extras.quiet]


def teach(root: str | Path, out: str | Path, tc: TeachConfig | None = None, cache_dir: str | Path | None = None,
          progress: bool = False) -> TeachReport:
    """Fine-tune on the takes under ``root`` and export the step model to ``out`` (an .onnx path).

    Also writes ``out`` with ``.pt`` (the checkpoint, for ``avbind eval``) and ``.json`` (this
    report). Raises :class:`TooLittleDataError` with what to record when the folder cannot train.
    """
    from avbind.export.onnx import export_model
    from avbind.models.checkpoint import save_checkpoint
    from avbind.models.pretrained import init_pretrained_backbone

    tc = tc or TeachConfig()
    started = time.perf_counter()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    everything = load_folder(root, None, tc.val_fraction)
    warnings = check_takes(everything)
    train_set, val_set = (load_folder(root, split, tc.val_fraction) for split in ("train", "val"))
    config = get_config(tc.model)
    config = replace(config, video=replace(config.video, input_size=tc.input_size))
    model = build_model(config, everything)
    if model.config.video.pretrained:
        log.info("video backbone initialised from %s", init_pretrained_backbone(model.video))
    for parameter in model.video.parameters():
        parameter.requires_grad_(False)
    config = model.config
    cache = Path(cache_dir) if cache_dir else everything.cache_home
    seconds: dict[str, float] = {}

    tick = time.perf_counter()
    videos = prepare_dataset(everything, config, cache, progress=progress)
    if videos.skipped:
        raise ValueError(f"{root}: cannot decode {videos.skipped[0][0]} ({videos.skipped[0][1]}); delete or "
                         f"record it again")
    check_lengths(list(everything.takes), videos, tc, config.step_rate_hz, config.audio_window_s, root)
    seconds["prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    model.video.to(memory_format=torch.channels_last)  # measured 1.3x faster on the CPU; the same features
    takes = {t.clip_id: t for t in everything.takes}
    features = [take_features(model, takes[v.video_id], v, cache) for v in videos]
    extras = Extras(covered_camera_features(model, tc.crop_steps, tc.seed),
                    muted_microphone_windows(model, tc.crop_steps, tc.seed), [], noise_profiles(model, tc.seed),
                    float(np.log(config.features.log_floor)))
    seconds["video_features"] = time.perf_counter() - tick

    data = dict(zip((v.video_id for v in videos), load_takes(videos, features, config), strict=True))
    train_data = [data[t.clip_id] for t in train_set.takes]
    tick = time.perf_counter()
    for d in train_data:
        d.reframed = [take_features(model, takes[d.video.video_id], d.video, cache, k + 1, tc.seed)
                      for k in range(tc.video_copies)]
    seconds["video_features"] += time.perf_counter() - tick
    val_data = [data[t.clip_id] for t in val_set.takes]
    names = [*everything.class_names, "background"]
    counts = {c: {"train": len(train_set.takes_of(c)), "val": len(val_set.takes_of(c))}
              for c in [*everything.class_names, BACKGROUND] if everything.takes_of(c)}
    if not val_data:
        warnings.append("no class has two takes: nothing held out, no validation accuracy")
    inits = ["shipped", "scratch"] if tc.audio_init == "best" else [tc.audio_init]
    if not val_data and len(inits) > 1:
        inits = ["shipped"]  # nothing to measure "better" on
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    best: tuple[float, str, dict] | None = None
    validation: dict[str, dict] = {}
    for how in inits:
        model.load_state_dict(initial)
        done = init_audio(model, how)
        tick = time.perf_counter()
        fixed = done == "shipped"
        if fixed:
            fix_audio_encoder(model, train_data, tc, extras)
        history = train_after_encoders(model, train_data, tc, extras, fixed_audio=fixed)
        seconds[f"train_{done}"] = time.perf_counter() - tick
        results = validate(model, val_data, names) if val_data else {}
        validation[done] = {"final_loss": history[-1]["loss"], **{
            name: {"segment_accuracy": r.segment_accuracy, "per_class": r.per_class_accuracy}
            for name, r in results.items()}}
        merit = _merit(results)
        if best is None or merit > best[0]:
            best = (merit, done, {k: v.clone() for k, v in model.state_dict().items()})
    assert best is not None
    model.load_state_dict(best[2])
    model.to(memory_format=torch.contiguous_format).eval()

    tick = time.perf_counter()
    report = TeachReport(out, list(everything.class_names), counts, best[1], validation, seconds, warnings)
    save_checkpoint(out.with_suffix(".pt"), model, teach_config=asdict(tc))
    export_model(model, out)
    seconds["export"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    out.with_suffix(".json").write_text(strict_json(report.to_dict()))
    return report
