"""avsynth: a synthetic audio-visual event data set in the AVE layout, generated on demand.

Real AVE needs YouTube downloads; this set is made locally in about a minute, yet it is built so
that neither modality alone nor a single frame solves it:

* Each class is a verb (a motion) on a noun (a coloured shape), with a matching sound whose
  temporal pattern comes from the verb and whose timbre comes from the noun. Direction pairs
  (slide left/right, rotate clockwise/counter-clockwise, grow/shrink) share a noun, so their
  frames look alike one at a time and their sounds differ only in temporal order.
* As in AVE, an event is a segment where the object is both seen moving and heard. Background
  segments hold visual-only distractors (a moving object, silent), audio-only distractors (a
  class sound, no moving object), the event's object standing still, static clutter, camera noise
  and white or pink audio noise.
* The event's sound is shifted by up to ``max_audio_offset_s`` against its picture (the temporal
  binding window); annotations follow the picture.
* The ``localization`` size makes longer clips (30 to 60 s) holding several events of one class,
  of varied length, apart by background, so that a model must find where each event starts and
  ends rather than label a clip that is mostly event.

Everything follows from ``(seed, clip index)``: a clip's content does not depend on generation
order or the number of worker processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

logger = logging.getLogger(__name__)

FPS = 25  # video frames per second
SAMPLE_RATE = 16_000  # audio samples per second (mono)
FRAME_SIZE = 160  # video width = height, pixels
CLIP_SECONDS = 10  # clip length in seconds = number of one-second AVE segments
MAX_AUDIO_OFFSET_S = 0.2  # seconds; half-width of the temporal binding window
AAC_FRAME = 1024  # audio samples per AAC frame
EDGE_FADE_S = 0.01  # seconds of fade at the ends of every sound, so no onset click gives it away
KNOCK_DECAY_S = 0.1  # seconds, time constant of the bounce knock
# Sound cycles per full turn of a rotating object: 2.5 keeps a turn under 36 degrees per 200 ms
# model step, so a 5 steps/s model sees the rotation without aliasing, well inside the square's
# 90-degree symmetry (at one turn per cycle, 58-90 degrees per step, the square's body turning
# clockwise looked like it turned counter-clockwise).
CYCLES_PER_TURN = 2.5
TREMOLO_HZ = 8.0  # loudness wobble that marks a rotation's chirps apart from a slide's
# Octaves a slide's or rotation's chirp sweeps per cycle (v3 and before: 1). At 64 mels a one-octave
# glide over a second moved a low sound by a few mel bands, too shallow for the audio model to
# learn its direction reliably.
GLIDE_OCTAVES = 1.5
SUBPIXEL_BITS = 4  # cv2 drawing shift: coordinates in 1/16 pixel, so slow motion stays smooth
ANNOTATION_HEADER = "Category&VideoID&Quality&StartTime&EndTime"
# Bump when the same seed renders different content. 2: rotation sounds and speed. 3: rotation
# sounds are chirps with tremolo, the star's hiss is narrower, distractors are more frequent.
# 4: wider glides, a higher blue square.
GENERATOR_VERSION = 4
SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}

VERBS = ("slide left", "slide right", "rotate clockwise", "rotate counter-clockwise", "grow", "shrink", "bounce")
NOUNS = ("red disc", "blue square", "green triangle", "yellow star")
# Direction pairs share a noun so that only temporal order separates them.
CLASS_VERB_NOUN: dict[str, tuple[str, str]] = {
    f"{verb} {noun}".capitalize(): (verb, noun)
    for verb, noun in (
        ("slide left", "red disc"),
        ("slide right", "red disc"),
        ("rotate clockwise", "blue square"),
        ("rotate counter-clockwise", "blue square"),
        ("grow", "green triangle"),
        ("shrink", "green triangle"),
        ("bounce", "yellow star"),
        ("bounce", "blue square"),
        ("slide left", "yellow star"),
        ("slide right", "yellow star"),
    )
}
CLASS_NAMES: tuple[str, ...] = tuple(CLASS_VERB_NOUN)

NOUN_RGB = {
    "red disc": (220, 40, 40),
    "blue square": (40, 80, 230),
    "green triangle": (40, 190, 60),
    "yellow star": (235, 210, 40),
}  # 8-bit RGB
NOUN_SHAPE = {"red disc": "disc", "blue square": "square", "green triangle": "triangle", "yellow star": "star"}
# Timbre and base pitch (Hz) per noun: the sound says *what* moves, its pattern says *how*.
NOUN_TIMBRE = {
    "red disc": ("sine", 523.0),
    "blue square": ("square", 698.0),  # v3 and before: 262 Hz, too low for 64 mels to show its glides
    "green triangle": ("saw", 392.0),
    "yellow star": ("noise", 1760.0),
}
# Static clutter uses the noun shapes but never a noun colour, so colour + shape must be bound.
CLUTTER_RGB = ((150, 60, 190), (40, 200, 210), (240, 140, 30), (150, 100, 60), (240, 150, 200))
MARKER_RGB = (255, 255, 255)  # stripe that makes every shape rotationally asymmetric
OBJECT_RADIUS = 0.1  # object radius as a fraction of the frame size


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices on the unit scale, first vertex (and the marker stripe) pointing at angle 0."""
    if shape == "disc":
        a, r = np.linspace(0, 2 * np.pi, 32, endpoint=False), np.ones(32)
    elif shape == "square":
        a, r = np.pi / 4 + np.arange(4) * np.pi / 2, np.full(4, 1.05)
    elif shape == "triangle":
        a, r = np.arange(3) * 2 * np.pi / 3, np.full(3, 1.25)
    else:  # star
        a, r = np.arange(10) * np.pi / 5, np.tile([1.25, 0.55], 5)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


_POLYGONS = {shape: _unit_polygon(shape) for shape in NOUN_SHAPE.values()}


@dataclass(frozen=True)
class SynthConfig:
    """Generation settings; with ``seed`` they fix every byte of annotations and every pixel."""

    seed: int = 0
    n_train: int = 300  # clips
    n_val: int = 50  # clips
    n_test: int = 100  # clips
    fps: int = FPS  # frames per second
    sample_rate: int = SAMPLE_RATE  # Hz
    size: int = FRAME_SIZE  # pixels, square frames
    duration_s: int = CLIP_SECONDS  # seconds = segments per clip
    max_audio_offset_s: float = MAX_AUDIO_OFFSET_S  # seconds, |audio - video| of the event
    min_event_s: int = 2  # shortest event, segments
    max_event_s: int | None = None  # longest event, segments; None: the clip's length
    min_duration_s: int | None = None  # None: every clip lasts duration_s; else in [min_duration_s, duration_s]
    events_per_clip: tuple[int, int] = (1, 1)  # fewest and most events per clip, inclusive
    # Per clip (multi-event clips: per background run), for each of visual-only and audio-only distractors.
    distractor_prob: float = 0.75
    snr_db: tuple[float, float] = (6.0, 20.0)  # dB, event sound over background noise
    pixel_noise: float = 3.0  # standard deviation of per-frame camera noise, 8-bit levels
    flicker: float = 0.04  # largest relative brightness flicker
    crf: int = 23  # libx264 constant rate factor
    preset: str = "ultrafast"  # libx264 speed preset

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_val, self.n_test) < 0 or self.n_clips == 0:
            raise ValueError("clip counts must be >= 0 and not all 0")
        if not 1 <= self.min_event_s <= self.duration_s:
            raise ValueError(f"need 1 <= min_event_s <= duration_s, got {self.min_event_s}, {self.duration_s}")
        if not 0 <= self.max_audio_offset_s < 0.5:
            raise ValueError("max_audio_offset_s must lie in [0, 0.5) so an event stays inside its segments")
        if self.min_duration_s is not None and not self.min_event_s <= self.min_duration_s <= self.duration_s:
            raise ValueError(
                f"need min_event_s <= min_duration_s <= duration_s, got {self.min_event_s}, "
                f"{self.min_duration_s}, {self.duration_s}"
            )
        if self.max_event_s is not None and not self.min_event_s <= self.max_event_s <= self.duration_s:
            raise ValueError(
                f"need min_event_s <= max_event_s <= duration_s, got {self.min_event_s}, "
                f"{self.max_event_s}, {self.duration_s}"
            )
        if len(self.events_per_clip) != 2 or not 1 <= self.events_per_clip[0] <= self.events_per_clip[1]:
            raise ValueError(f"events_per_clip must be (fewest, most), 1 <= fewest <= most, got {self.events_per_clip}")

    @property
    def single_event(self) -> bool:
        """Whether clips are planned as the tiny/small/default sets always were (one event in a clip
        of duration_s), which keeps those sets' content fixed; any other setting plans long clips."""
        return tuple(self.events_per_clip) == (1, 1) and self.min_duration_s is None and self.max_event_s is None

    @property
    def n_clips(self) -> int:
        return self.n_train + self.n_val + self.n_test

    def split_of(self, index: int) -> tuple[str, int]:
        """Split name and position inside it; clips are numbered train, then val, then test."""
        for split, count in zip(SPLITS, (self.n_train, self.n_val, self.n_test), strict=True):
            if index < count:
                return split, index
            index -= count
        raise IndexError("clip index out of range")


SIZES: dict[str, SynthConfig] = {
    "tiny": SynthConfig(n_train=6, n_val=2, n_test=2),  # for tests: seconds
    "small": SynthConfig(n_train=60, n_val=10, n_test=20),  # smoke training runs
    "default": SynthConfig(),
    # Temporal localization: 30-60 s clips with 2-5 events of 1-8 s. About as many seconds of
    # media as "default", so it takes about as long to generate.
    "localization": SynthConfig(
        n_train=60,
        n_val=10,
        n_test=30,
        duration_s=60,
        min_duration_s=30,
        events_per_clip=(2, 5),
        min_event_s=1,
        max_event_s=8,
    ),
}


@dataclass(frozen=True)
class Distractor:
    """A one-modality appearance of a class in background segments ``[start_s, end_s)``."""

    class_index: int
    start_s: int
    end_s: int


@dataclass(frozen=True)
class ClipAnnotation:
    """The AVE annotation of one clip plus the hidden truth that evaluation and tests may want."""

    video_id: str
    split: str
    class_index: int  # every event of a clip is of this class
    events: tuple[tuple[int, int], ...]  # sorted, disjoint (start_s, end_s) in segments, end exclusive
    duration_s: int  # clip length, seconds = segments
    audio_offset_s: float  # event sound time minus event picture time, the same for every event
    visual_distractors: tuple[Distractor, ...]  # in background segments only, sorted by time
    audio_distractors: tuple[Distractor, ...]  # in background segments only, sorted by time
    idle_visible: bool  # the event's object stands still on screen outside the events

    @property
    def category(self) -> str:
        return CLASS_NAMES[self.class_index]

    @property
    def start_s(self) -> int:
        """First segment of the *first* event: the whole event of a single-event clip."""
        return self.events[0][0]

    @property
    def end_s(self) -> int:
        """One past the last segment of the *first* event."""
        return self.events[0][1]

    def lines(self) -> list[str]:
        """One AVE annotation line per event; AVE's format allows several lines per video."""
        return [f"{self.category}&{self.video_id}&good&{start}&{end}" for start, end in self.events]

    def clock(self, t: float, fps: int) -> float:
        """Motion time of the event's object at clip time ``t``: it runs inside events only, so
        between events the object holds its last pose and the next event resumes from there."""
        clock = 0.0
        for start, end in self.events:
            clock += min(max(t - start, 0.0), (end - start) - 1 / fps)
        return clock


@dataclass(frozen=True)
class _Actor:
    """One object instance: how it looks, moves and sounds. Times are relative to its onset."""

    verb: str
    noun: str
    period_s: float  # one motion cycle = one sound cycle
    cx: float  # pixels
    cy: float  # pixels
    reach: float  # pixels: half sweep for slides, hop height for bounces
    radius: float  # pixels
    angle0: float  # radians
    pitch: float  # Hz

    def pose(self, t: float) -> tuple[float, float, float, float]:
        """(x, y, radius, angle) at ``t`` seconds; screen y points down, so +angle is clockwise."""
        u = (t / self.period_s) % 1.0
        x, y, scale, angle = self.cx, self.cy, 1.0, self.angle0
        if self.verb == "slide left":
            x = self.cx + self.reach * (1 - 2 * u)
        elif self.verb == "slide right":
            x = self.cx - self.reach * (1 - 2 * u)
        elif self.verb.startswith("rotate"):
            turn_s = self.period_s * CYCLES_PER_TURN
            angle += (1 if self.verb == "rotate clockwise" else -1) * 2 * np.pi * t / turn_s
        elif self.verb == "grow":
            scale = 0.45 + 0.55 * u
        elif self.verb == "shrink":
            scale = 1.0 - 0.55 * u
        elif self.verb == "bounce":
            y = self.cy - self.reach * np.sin(np.pi * u)
        return x, y, self.radius * scale, angle

    def sound(self, t: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """Verb-shaped pitch/loudness pattern on the noun's timbre; paired verbs are time mirrors."""
        u = (t / self.period_s) % 1.0
        octaves, amp = np.zeros_like(t), np.ones_like(t)
        if self.verb.startswith("slide"):  # falling chirp for left, rising for right
            octaves = GLIDE_OCTAVES * ((0.5 - u) if self.verb == "slide left" else (u - 0.5))
            amp = np.clip(np.minimum(u, 1 - u) / 0.05, 0, 1)
        elif self.verb.startswith("rotate"):
            # Rising (clockwise) vs falling chirps with a tremolo. Version 2 used a fast rise and a
            # slow fall vs its mirror: learnable in principle, but the audio model never told them
            # apart (0% clockwise when audio alone); a chirp between silent cycle edges is what the
            # slides use and what it does learn.
            octaves = GLIDE_OCTAVES * ((u - 0.5) if self.verb == "rotate clockwise" else (0.5 - u))
            amp = np.clip(np.minimum(u, 1 - u) / 0.05, 0, 1) * (0.6 + 0.4 * np.sin(2 * np.pi * TREMOLO_HZ * t))
        elif self.verb in ("grow", "shrink"):  # swell vs fade
            amp = 0.1 + 0.9 * (u if self.verb == "grow" else 1 - u)
        elif self.verb == "bounce":  # a decaying knock at each landing
            amp = np.exp(-u * self.period_s / KNOCK_DECAY_S)
        phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(self.pitch * 2.0**octaves) / sample_rate
        timbre = NOUN_TIMBRE[self.noun][0]
        if timbre == "sine":
            wave = np.sin(phase)
        elif timbre == "square":
            wave = np.tanh(3 * np.sin(phase)) / np.tanh(3)
        elif timbre == "saw":
            wave = (2 / np.pi) * sum((-1) ** (k + 1) * np.sin(k * phase) / k for k in range(1, 7))
        else:  # band noise: low-passed noise on a carrier, a hiss that still follows the pitch
            # 24 taps: a band about 700 Hz wide, narrow enough that its glide shows (8 taps smeared
            # the star's chirps, and their direction, over 2 kHz).
            noise = np.convolve(rng.standard_normal(len(t)), np.ones(24) / np.sqrt(24), mode="same")
            wave = noise * np.sin(phase)
        return amp * wave


def _make_actor(rng: np.random.Generator, class_index: int, size: int) -> _Actor:
    """Random placement that keeps the whole motion inside the frame."""
    verb, noun = CLASS_VERB_NOUN[CLASS_NAMES[class_index]]
    radius = OBJECT_RADIUS * size * rng.uniform(0.9, 1.2)
    margin = 1.3 * radius
    reach = 0.0
    cx, cy = rng.uniform(margin, size - margin, 2)
    if verb.startswith("slide"):
        reach = rng.uniform(0.2, 0.3) * size
        cx = rng.uniform(margin + reach, size - margin - reach)
    elif verb == "bounce":
        reach = rng.uniform(0.15, 0.25) * size
        cy = rng.uniform(margin + reach, size - margin)
    pitch = NOUN_TIMBRE[noun][1] * rng.uniform(0.94, 1.06)
    period = rng.uniform(0.5, 0.8) if verb == "bounce" else rng.uniform(0.8, 1.25)  # a knock in every segment
    return _Actor(verb, noun, period, cx, cy, reach, radius, rng.uniform(0, 2 * np.pi), pitch)


@dataclass(frozen=True)
class _ClipPlan:
    annotation: ClipAnnotation
    event: _Actor  # one object plays every event of the clip
    visuals: tuple[_Actor, ...]  # one per annotation.visual_distractors
    audios: tuple[_Actor, ...]  # one per annotation.audio_distractors
    gain: float  # event sound amplitude
    distractor_level: float  # audio distractor RMS over event RMS
    snr_db: float  # event RMS over noise RMS
    pink: bool  # pink rather than white noise


def _video_id(rng: np.random.Generator) -> str:
    """YouTube-like 11-character id, as AVE uses, never starting with '-' (it reads as an option)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    chars = [alphabet[rng.integers(62)]] + [alphabet[i] for i in rng.integers(64, size=10)]
    return "".join(chars)


def _pick_background_run(rng: np.random.Generator, start: int, end: int, total: int) -> tuple[int, int] | None:
    runs = [(a, b) for a, b in ((0, start), (end, total)) if b > a]
    if not runs:
        return None
    a, b = runs[rng.integers(len(runs))]
    length = int(rng.integers((b - a + 1) // 2, b - a + 1))  # at least half the run, so background is busy
    first = int(rng.integers(a, b - length + 1))
    return first, first + length


def _class_of(config: SynthConfig, index: int) -> tuple[str, int]:
    """Split and class of a clip. Classes cycle through a per-split permutation, so every run of
    10 clips of a split holds every class."""
    split, position = config.split_of(index)
    order = np.random.default_rng([config.seed, 1_000_003, SPLITS.index(split)]).permutation(len(CLASS_NAMES))
    return split, int(order[position % len(CLASS_NAMES)])


def _audio_offset(rng: np.random.Generator, config: SynthConfig) -> float:
    offset = float(np.round(rng.uniform(-1, 1) * config.max_audio_offset_s * config.sample_rate))
    return offset / config.sample_rate  # whole samples, so the stored value is exactly the one applied


def _separate(visual: Distractor | None, audio: Distractor | None) -> Distractor | None:
    """The audio distractor, moved to the next class if it would be seen and heard with the visual
    one: that would be an event."""
    if (
        visual
        and audio
        and visual.class_index == audio.class_index
        and (audio.start_s < visual.end_s and visual.start_s < audio.end_s)
    ):
        return dataclasses.replace(audio, class_index=(audio.class_index + 1) % len(CLASS_NAMES))
    return audio


def _plan_clip(config: SynthConfig, index: int) -> _ClipPlan:
    """All random choices of a single-event clip, from a generator seeded by (seed, index) alone.

    Its draws are those of every generator version-3 set: changing their order changes the data.
    """
    split, class_index = _class_of(config, index)
    rng = np.random.default_rng([config.seed, index])
    video_id = _video_id(rng)
    length = int(rng.integers(config.min_event_s, config.duration_s + 1))
    start = int(rng.integers(0, config.duration_s - length + 1))
    offset = _audio_offset(rng, config)
    event = _make_actor(rng, class_index, config.size)
    distractors: list[Distractor | None] = []
    for _kind in ("visual", "audio"):
        span = _pick_background_run(rng, start, start + length, config.duration_s)
        use = rng.uniform() < config.distractor_prob
        cls = int(rng.integers(len(CLASS_NAMES)))
        distractors.append(Distractor(cls, *span) if use and span else None)
    visual, audio = distractors[0], _separate(*distractors)
    vis_actor = _make_actor(rng, visual.class_index, config.size) if visual else None
    aud_actor = _make_actor(rng, audio.class_index, config.size) if audio else None
    annotation = ClipAnnotation(
        video_id,
        split,
        class_index,
        ((start, start + length),),
        config.duration_s,
        offset,
        (visual,) if visual else (),
        (audio,) if audio else (),
        bool(rng.uniform() < 0.5),
    )
    return _ClipPlan(
        annotation,
        event,
        (vis_actor,) if vis_actor else (),
        (aud_actor,) if aud_actor else (),
        gain=float(rng.uniform(0.08, 0.16)),
        distractor_level=float(rng.uniform(0.7, 1.0)),
        snr_db=float(rng.uniform(*config.snr_db)),
        pink=bool(rng.uniform() < 0.5),
    )


def _place_events(rng: np.random.Generator, config: SynthConfig, duration: int) -> list[tuple[int, int]]:
    """Sorted, disjoint events with at least one background segment between neighbours; fewer
    than drawn when the drawn lengths do not fit in the clip."""
    low, high = config.events_per_clip
    longest = min(config.max_event_s or duration, duration)
    lengths = [int(n) for n in rng.integers(config.min_event_s, longest + 1, size=int(rng.integers(low, high + 1)))]
    while sum(lengths) + len(lengths) - 1 > duration:  # min_event_s <= min_duration_s: one always fits
        lengths.pop()
    slack = duration - sum(lengths) - (len(lengths) - 1)  # background beyond the mandatory gaps
    cuts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))  # extra background before each event
    events, at, used = [], 0, 0
    for length, cut in zip(lengths, cuts, strict=True):
        at += int(cut) - used
        used = int(cut)
        events.append((at, at + length))
        at += length + 1
    return events


def _background_runs(events: list[tuple[int, int]], duration: int) -> list[tuple[int, int]]:
    """The (start_s, end_s) stretches of a clip that no event covers."""
    runs, at = [], 0
    for start, end in [*events, (duration, duration)]:
        if start > at:
            runs.append((at, start))
        at = end
    return runs


def _plan_long_clip(config: SynthConfig, index: int) -> _ClipPlan:
    """All random choices of a multi-event (localization) clip, from (seed, index) alone.

    Its own generator stream, so its video id differs from the single-event clip of the same index.
    """
    split, class_index = _class_of(config, index)
    rng = np.random.default_rng([config.seed, index, 2])
    video_id = _video_id(rng)
    low = config.duration_s if config.min_duration_s is None else config.min_duration_s
    duration = int(rng.integers(low, config.duration_s + 1))
    events = _place_events(rng, config, duration)
    offset = _audio_offset(rng, config)
    event = _make_actor(rng, class_index, config.size)
    visuals: list[Distractor] = []
    audios: list[Distractor] = []
    for a, b in _background_runs(events, duration):  # each run may hold one distractor of each kind
        picked: list[Distractor | None] = []
        for _kind in ("visual", "audio"):
            use = rng.uniform() < config.distractor_prob
            length = int(rng.integers((b - a + 1) // 2, b - a + 1))  # at least half the run, as in short clips
            first = int(rng.integers(a, b - length + 1))
            cls = int(rng.integers(len(CLASS_NAMES)))
            picked.append(Distractor(cls, first, first + length) if use else None)
        visual, audio = picked[0], _separate(*picked)
        visuals += [visual] if visual else []
        audios += [audio] if audio else []
    vis_actors = tuple(_make_actor(rng, d.class_index, config.size) for d in visuals)
    aud_actors = tuple(_make_actor(rng, d.class_index, config.size) for d in audios)
    annotation = ClipAnnotation(
        video_id,
        split,
        class_index,
        tuple(events),
        duration,
        offset,
        tuple(visuals),
        tuple(audios),
        bool(rng.uniform() < 0.5),
    )
    return _ClipPlan(
        annotation,
        event,
        vis_actors,
        aud_actors,
        gain=float(rng.uniform(0.08, 0.16)),
        distractor_level=float(rng.uniform(0.7, 1.0)),
        snr_db=float(rng.uniform(*config.snr_db)),
        pink=bool(rng.uniform() < 0.5),
    )


def _plan(config: SynthConfig, index: int) -> _ClipPlan:
    return _plan_clip(config, index) if config.single_event else _plan_long_clip(config, index)


def annotate_clip(config: SynthConfig, index: int) -> ClipAnnotation:
    """The annotation alone, without rendering: cheap enough to list a whole data set."""
    return _plan(config, index).annotation


def _draw(img: np.ndarray, noun_or_shape: str, rgb: tuple[int, int, int], pose: tuple[float, ...]) -> None:
    x, y, radius, angle = pose
    shape = NOUN_SHAPE.get(noun_or_shape, noun_or_shape)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (_POLYGONS[shape] @ rot.T) * radius + (x, y)
    one = 1 << SUBPIXEL_BITS
    cv2.fillPoly(img, [np.round(pts * one).astype(np.int32)], rgb, cv2.LINE_AA, SUBPIXEL_BITS)
    tip = (x + 0.8 * radius * np.cos(angle), y + 0.8 * radius * np.sin(angle))
    cv2.line(
        img,
        (round(x * one), round(y * one)),
        (round(tip[0] * one), round(tip[1] * one)),
        MARKER_RGB,
        max(2, round(radius / 4)),
        cv2.LINE_AA,
        SUBPIXEL_BITS,
    )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth desaturated texture with static grain and static clutter shapes."""
    coarse = rng.uniform(70, 150, (5, 5, 1)) + rng.uniform(-12, 12, (1, 1, 3))
    img = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + rng.normal(0, 5, (size, size, 1)), 0, 255).astype(np.uint8)
    shapes = tuple(_POLYGONS)
    for _ in range(int(rng.integers(2, 6))):
        radius = OBJECT_RADIUS * size * rng.uniform(0.5, 0.9)
        pose = (*rng.uniform(radius, size - radius, 2), radius, rng.uniform(0, 2 * np.pi))
        _draw(img, shapes[rng.integers(len(shapes))], CLUTTER_RGB[rng.integers(len(CLUTTER_RGB))], pose)
    return img


def _render_video(plan: _ClipPlan, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    ann, n_frames, size = plan.annotation, config.fps * plan.annotation.duration_s, config.size
    background = _background(rng, size)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for f in range(n_frames):
        t = f / config.fps
        img = background.copy()
        # Outside events the object is hidden, or still at the pose where its motion clock stopped.
        if ann.idle_visible or any(start <= t < end for start, end in ann.events):
            _draw(img, plan.event.noun, NOUN_RGB[plan.event.noun], plan.event.pose(ann.clock(t, config.fps)))
        for vis, actor in zip(ann.visual_distractors, plan.visuals, strict=True):
            if vis.start_s <= t < vis.end_s:
                _draw(img, actor.noun, NOUN_RGB[actor.noun], actor.pose(t - vis.start_s))
        frames[f] = img
    # Camera noise from a small bank of noise images at random shifts: per-frame Gaussian noise
    # at a fraction of the cost of drawing it fresh for every pixel of every frame.
    pad = 16
    bank = rng.normal(0, config.pixel_noise, (8, size + pad, size + pad, 3)).astype(np.float32)
    flicker = 1 + config.flicker * np.sin(
        2 * np.pi * rng.uniform(0.2, 2) * np.arange(n_frames) / config.fps + rng.uniform(0, 2 * np.pi)
    ) * rng.uniform(0.25, 1)
    picks, shifts = rng.integers(8, size=n_frames), rng.integers(0, pad, (n_frames, 2))
    for f in range(n_frames):
        dy, dx = shifts[f]
        noisy = frames[f] * np.float32(flicker[f]) + bank[picks[f], dy : dy + size, dx : dx + size]
        frames[f] = np.clip(noisy, 0, 255)
    return frames


def _sound_track(
    actor: _Actor,
    begin_s: float,
    end_s: float,
    gain: float,
    n_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    phase_s: float = 0.0,
) -> np.ndarray:
    """``actor``'s sound on ``[begin_s, end_s)`` at RMS ``gain``, silence elsewhere. Levels are set
    by RMS so that a sparse sound (a knock) is as present as a continuous one. ``phase_s``: the
    sound's own time at ``begin_s``, so a later event's sound goes on where its motion goes on."""
    out = np.zeros(n_samples)
    i0, i1 = max(0, round(begin_s * sample_rate)), min(n_samples, round(end_s * sample_rate))
    t = np.arange(i0, i1) / sample_rate - begin_s  # the cycle starts at begin_s, even if cut off
    if phase_s:
        t += phase_s
    k = np.arange(i1 - i0)
    fade = np.clip(np.minimum(k + 1, i1 - i0 - k) / (EDGE_FADE_S * sample_rate), 0, 1)
    sound = actor.sound(t, sample_rate, rng) * fade
    out[i0:i1] = sound * gain / max(float(np.sqrt(np.mean(sound**2))), 1e-9)
    return out


def _render_audio(plan: _ClipPlan, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    ann, sr, n = plan.annotation, config.sample_rate, plan.annotation.duration_s * config.sample_rate
    offset = ann.audio_offset_s
    tracks = (  # lazily, in event order; each sound goes on from where the previous event's stopped
        _sound_track(plan.event, start + offset, end + offset, plan.gain, n, sr, rng, ann.clock(start, config.fps))
        for start, end in ann.events
    )
    audio = next(tracks)
    for track in tracks:
        audio += track
    noise = rng.standard_normal(n)
    if plan.pink:  # 1/f power: divide the amplitude spectrum by sqrt(f)
        spectrum = np.fft.rfft(noise)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, n=n)
    audio += noise * (plan.gain / np.std(noise) / 10 ** (plan.snr_db / 20))
    for d, actor in zip(ann.audio_distractors, plan.audios, strict=True):
        audio += _sound_track(actor, d.start_s, d.end_s, plan.gain * plan.distractor_level, n, sr, rng)
    peak = float(np.max(np.abs(audio)))
    return (audio * min(1.0, 0.95 / peak)).astype(np.float32)


def render_clip(config: SynthConfig, index: int) -> tuple[np.ndarray, np.ndarray, ClipAnnotation]:
    """Pure rendering, no I/O, so tests and in-memory training can use the exact written content.

    Returns RGB frames ``(T, H, W, 3)`` uint8, mono audio ``(N,)`` float32 in [-1, 1] and the
    annotation.
    """
    plan = _plan(config, index)
    rng = np.random.default_rng([config.seed, index, 1])  # rendering noise, apart from the plan
    frames = _render_video(plan, config, rng)
    audio = _render_audio(plan, config, rng)
    return frames, audio, plan.annotation


def write_mp4(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    audio: np.ndarray,
    fps: int,
    sample_rate: int,
    crf: int = 23,
    preset: str = "ultrafast",
) -> None:
    """H.264 + AAC in one mp4. One x264 thread: the worker processes already use every core, and
    the bitstream must not depend on how many threads there were."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": preset})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.codec_context.thread_count = 1
        sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, len(audio), AAC_FRAME):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + AAC_FRAME], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


def _write_clip(media_dir: str, config: SynthConfig, index: int) -> str:
    """Worker: render and encode one clip; a partial file never carries the final name."""
    frames, audio, ann = render_clip(config, index)
    final = Path(media_dir) / f"{ann.video_id}.mp4"
    partial = final.with_suffix(".mp4.part")
    write_mp4(partial, frames, audio, config.fps, config.sample_rate, config.crf, config.preset)
    os.replace(partial, final)
    return ann.video_id


class _Progress:
    """tqdm when installed, otherwise a log line every 10%: generation must not need tqdm."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled, self.bar = total, 0, enabled, None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc="avsynth", unit="clip")

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled and self.done * 10 // self.total > (self.done - 1) * 10 // self.total:
            logger.info("avsynth: %d/%d clips", self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_dataset(
    out_dir: str | os.PathLike[str],
    config: SynthConfig | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write media first and the index files last, so a folder with ``avsynth.json`` is complete."""
    config = config or SIZES["default"]
    out = Path(out_dir)
    media = out / "AVE"
    media.mkdir(parents=True, exist_ok=True)
    plans = [_plan(config, i) for i in range(config.n_clips)]
    annotations = [p.annotation for p in plans]
    ids = {a.video_id for a in annotations}
    if len(ids) != len(annotations):
        raise RuntimeError("video id collision; choose another seed")
    stale = [p.name for p in media.glob("*.mp4") if p.stem not in ids]
    if stale:  # not deleted: the folder may hold someone's data, but they are not in the annotations
        logger.warning("avsynth: %d files in %s are not part of this data set, e.g. %s", len(stale), media, stale[0])
    workers = max(1, min(workers or os.cpu_count() or 1, config.n_clips))
    began = time.perf_counter()
    bar = _Progress(config.n_clips, progress)
    try:
        if workers == 1:
            for i in range(config.n_clips):
                _write_clip(str(media), config, i)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                jobs = [pool.submit(_write_clip, str(media), config, i) for i in range(config.n_clips)]
                try:
                    for job in as_completed(jobs):
                        job.result()
                        bar.update()
                except BaseException:  # fail fast instead of rendering the rest first
                    for job in jobs:
                        job.cancel()
                    raise
    finally:
        bar.close()

    def write_lines(name: str, lines: list[str]) -> None:
        (out / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write_lines("Annotations.txt", [ANNOTATION_HEADER] + [line for a in annotations for line in a.lines()])
    for split, name in SPLIT_FILES.items():
        write_lines(name, [line for a in annotations if a.split == split for line in a.lines()])
    write_lines("classes.txt", list(CLASS_NAMES))
    settings = dataclasses.asdict(config)
    meta = {
        "generator": "avbind.models.data.avsynth",
        "generator_version": GENERATOR_VERSION,
        "settings": settings,
        "classes": list(CLASS_NAMES),
        "class_verb_noun": {name: list(vn) for name, vn in CLASS_VERB_NOUN.items()},
        "clips": [
            {
                **dataclasses.asdict(a),
                "category": a.category,
                "snr_db": p.snr_db,
                "noise": "pink" if p.pink else "white",
                "period_s": p.event.period_s,
            }
            for a, p in zip(annotations, plans, strict=True)
        ],
    }
    (out / "avsynth.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    logger.info(
        "avsynth: wrote %d clips to %s in %.1f s with %d workers",
        config.n_clips,
        out,
        time.perf_counter() - began,
        workers,
    )
    return out


def synth_command(args: argparse.Namespace) -> int:
    """Handler of ``avbind data synth``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = SIZES[args.size]
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    write_dataset(args.out, config, progress=True, workers=args.workers)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth`` under a parent command's subparsers; the parent owns the dispatch."""
    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic AVE-style data set",
        description="Write AVE/<id>.mp4, Annotations.txt, train/val/testSet.txt, classes.txt, avsynth.json.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--size",
        choices=tuple(SIZES),
        default="default",
        help="preset clip counts; localization: 30-60 s clips with several events each",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's, 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.set_defaults(func=synth_command)
    return parser
