"""Takes of three photographed things, each with its own sound: teach mode's test scenes.

Classes ``cat``, ``coffee`` and ``rocket`` are scikit-image's bundled photographs (``chelsea``,
``coffee``, ``rocket``), moving in the frame over a textured background, while espeak-ng says the
class's word every second or so over noise. Background takes show the background alone, with a
grey card moving as a distractor, over noise only.

``variant="train"`` and ``variant="heldout"`` draw from apart ranges: other sizes (the photo's
height a share of the frame's), other positions and paths, other backgrounds, another voice
speed and pitch, and other noise (white at -34 dBFS against pink at -26 dBFS), so a held-out take
is not a re-run of a training take. Used by tests/test_teach.py and tools/teach_accuracy.py.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 320, 240  # px
FPS = 15
RATE = 16_000  # Hz
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}  # class -> skimage.data function
CLASSES = tuple(PHOTOS)
BACKGROUND = "background"
# variant -> ranges drawn from: photo height / frame height, centre box (x0, x1, y0, y1) as
# shares of the frame, espeak speed (words/min) and pitch (0-99), noise colour and level.
VARIANTS = {
    "train": {"scale": (0.42, 0.58), "box": (0.38, 0.52, 0.40, 0.55), "speed": (150, 185), "pitch": (30, 55),
              "noise": ("white", -34.0)},
    "heldout": {"scale": (0.30, 0.38), "box": (0.30, 0.70, 0.30, 0.70), "speed": (120, 140), "pitch": (60, 75),
                "noise": ("pink", -26.0)},
}


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=64)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, PHOTOS[name])()


@functools.lru_cache(maxsize=64)
def spoken(word: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng saying ``word``, float32 mono at RATE, peak 0.5."""
    from scipy.signal import resample_poly

    wav = subprocess.run(["espeak-ng", "--stdout", "-s", str(speed), "-p", str(pitch), word],
                         capture_output=True, check=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    samples = resample_poly(samples, RATE, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    samples = samples[loud[0] : loud[-1] + 1] if len(loud) else samples
    return 0.5 * samples / max(float(np.abs(samples).max()), 1e-6)


def _noise(kind: str, level_db: float, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.normal(0, 1, n)
    if kind == "pink":  # 1/f power: white noise shaped in the frequency domain
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        white = np.fft.irfft(spectrum, n)
    white /= max(float(np.sqrt(np.mean(white**2))), 1e-9)
    return (white * 10 ** (level_db / 20)).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth, coloured, slightly grainy wall: low-resolution noise blown up."""
    low = rng.uniform(40, 200, (4, 5, 3)).astype(np.float32)
    wall = cv2.resize(low, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    return np.clip(wall + rng.normal(0, 6, wall.shape), 0, 255).astype(np.float32)


def _paste(frame: np.ndarray, patch: np.ndarray, cx: float, cy: float) -> None:
    h, w = patch.shape[:2]
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, WIDTH), min(y0 + h, HEIGHT)
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]


@dataclass(frozen=True)
class Take:
    category: str  # a class of CLASSES or "background"
    seed: int
    seconds: float
    variant: str = "train"


def render(take: Take) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames (T, HEIGHT, WIDTH, 3) uint8 at FPS and mono audio (N,) float32 at RATE."""
    v = VARIANTS[take.variant]
    rng = np.random.default_rng([take.seed, list(VARIANTS).index(take.variant), 7])
    wall = _background(rng)
    n_frames, n_samples = round(take.seconds * FPS), round(take.seconds * RATE)
    x0, x1, y0, y1 = v["box"]
    centre = np.array([rng.uniform(x0, x1) * WIDTH, rng.uniform(y0, y1) * HEIGHT])
    swing = rng.uniform(0.05, 0.12, 2) * np.array([WIDTH, HEIGHT])
    period, phase = rng.uniform(1.5, 3.0), rng.uniform(0, 2 * np.pi)
    if take.category == BACKGROUND:
        patch = np.full((round(0.3 * HEIGHT), round(0.22 * HEIGHT), 3), rng.uniform(90, 170), np.float32)
    else:
        photo = _photo(take.category)
        height = round(rng.uniform(*v["scale"]) * HEIGHT)
        patch = cv2.resize(photo, (round(height * photo.shape[1] / photo.shape[0]), height),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
    frames = np.empty((n_frames, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(n_frames):
        t = i / FPS
        frame = wall.copy()
        offset = swing * np.array([np.sin(2 * np.pi * t / period + phase), np.cos(2 * np.pi * t / period + phase)])
        _paste(frame, patch, *(centre + offset))
        frames[i] = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
    kind, level = v["noise"]
    audio = _noise(kind, level + rng.uniform(-2, 2), n_samples, rng)
    if take.category != BACKGROUND:
        word = spoken(take.category, int(rng.integers(*v["speed"])), int(rng.integers(*v["pitch"])))
        t = rng.uniform(0.0, 0.3)
        while t < take.seconds:
            start = round(t * RATE)
            piece = word[: max(n_samples - start, 0)] * rng.uniform(0.6, 1.0)
            audio[start : start + len(piece)] += piece
            t += len(word) / RATE + rng.uniform(0.25, 0.6)
    return frames, np.clip(audio, -1, 1)


def write_take(path: str | os.PathLike[str], take: Take) -> Path:
    """One take as real media: H.264 + AAC in an mp4 (as ``avbind teach record`` writes them)."""
    from avbind.models.data.avsynth import write_mp4

    frames, audio = render(take)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, audio, FPS, RATE)
    return path


def write_wav(path: str | os.PathLike[str], audio: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)


def write_folder(root: str | os.PathLike[str], takes_per_class: int, seconds: float, variant: str = "train",
                 seed: int = 0, background_takes: int | None = None) -> Path:
    """``root/<class>/take-NNN.mp4`` and ``root/background/``: the layout teach record writes."""
    root = Path(root)
    for c, category in enumerate([*CLASSES, BACKGROUND]):
        count = takes_per_class if category != BACKGROUND or background_takes is None else background_takes
        for k in range(count):
            write_take(root / category / f"take-{k + 1:03d}.mp4", Take(category, seed * 1000 + c * 100 + k, seconds,
                                                                       variant))
    return root
