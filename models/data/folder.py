"""A folder of takes, one subfolder per class: ``DIR/<class>/*.mp4``, ``DIR/background/`` optional.

This is what ``avbind teach record`` writes, and anything laid out the same way (clips recorded
with a phone, cut from a longer video) trains as well. Every step of a take is labelled with its
folder's class; ``background`` takes ("none of these") are background throughout.

The class list is the order ``teach.json`` recorded (the ``--classes`` the user typed), then any
other subfolders by name; hidden folders (``.avbind-cache``) are not classes. A class folder that
is there but empty is still a class, so that ``avbind teach train`` can say what to record.

Splits: ``val`` holds out a share of each class's takes (the ones whose file names hash lowest,
so adding takes later rarely moves a take from one split to the other); ``train`` is the rest;
no split is every take. A class with a single take has it in ``train`` only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from avbind.models.config import BACKGROUND
from avbind.models.data.dataset import IGNORE, SEGMENT_S, Clip, StepTargets

MANIFEST = "teach.json"  # what `avbind teach record` wrote, take by take
MEDIA_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
VAL_FRACTION = 0.25  # of each class's takes, held out when it has two or more


@dataclass(frozen=True)
class Take:
    clip_id: str  # "<class>/<file name>": unique in the folder
    category: str  # a class name, or "background"
    path: Path


def _is_class_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "_"))


def _media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES
                  and not p.name.startswith("."))


def looks_like_take_folder(root: Path) -> bool:
    """A teach manifest, or a subfolder holding media: how ``detect_format`` recognises the layout."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return True
    return root.is_dir() and any(_is_class_folder(sub) and _media(sub) for sub in root.iterdir())


def recorded_classes(root: Path) -> list[str]:
    """The class order ``teach.json`` recorded; empty without one."""
    manifest = Path(root) / MANIFEST
    if not manifest.is_file():
        return []
    try:
        return [str(c) for c in json.loads(manifest.read_text()).get("classes", [])]
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{manifest}: not a teach manifest ({err})") from err


def split_of(takes: list[Take], val_fraction: float = VAL_FRACTION) -> dict[str, str]:
    """clip id -> "train" or "val": of each class's n >= 2 takes, round(n * fraction) (at least
    one, at most n - 1) are held out, the ones whose names hash lowest."""
    split: dict[str, str] = {}
    by_class: dict[str, list[Take]] = {}
    for take in takes:
        by_class.setdefault(take.category, []).append(take)
    for same in by_class.values():
        n = len(same)
        held = 0 if n < 2 or val_fraction <= 0 else min(max(1, round(n * val_fraction)), n - 1)
        ranked = sorted(same, key=lambda t: hashlib.sha1(t.clip_id.encode()).hexdigest())
        for i, take in enumerate(ranked):
            split[take.clip_id] = "val" if i < held else "train"
    return split


@dataclass(frozen=True)
class FolderDataset:
    root: Path
    class_names: tuple[str, ...]
    takes: tuple[Take, ...]
    format: str = "folder"

    @property
    def cache_home(self) -> Path:
        return self.root / ".avbind-cache"

    @property
    def background(self) -> int:
        return len(self.class_names)

    @property
    def verbs(self) -> tuple[str, ...]:
        return ()

    @property
    def nouns(self) -> tuple[str, ...]:
        return ()

    def takes_of(self, category: str) -> list[Take]:
        return [t for t in self.takes if t.category == category]

    def clips(self) -> list[Clip]:
        """Each take whole, to the end of its media."""
        return [Clip(t.clip_id, t.path) for t in self.takes]

    def targets(self, clip: Clip, times: np.ndarray) -> StepTargets:
        """Every step takes its folder's class; one-second segments as AVE scores them."""
        take = self._by_id[clip.clip_id]
        label = self.background if take.category == BACKGROUND else self.class_names.index(take.category)
        times = np.asarray(times, dtype=np.float64)
        segments = int(times[-1] // SEGMENT_S) + 1 if len(times) else 0
        step_segments = np.minimum((times // SEGMENT_S).astype(np.int64), max(segments - 1, 0))
        none = np.full(len(times), IGNORE, np.int64)
        return StepTargets(np.full(len(times), label, np.int64), none, none.copy(),
                           np.full(segments, label, np.int64), step_segments)

    @cached_property
    def _by_id(self) -> dict[str, Take]:
        return {t.clip_id: t for t in self.takes}


def load_folder(root: str | Path, split: str | None = None, val_fraction: float = VAL_FRACTION) -> FolderDataset:
    """The takes of one split (``train``, ``val``) or all (None), under every class folder."""
    root = Path(root)
    if split not in (None, "train", "val"):
        raise ValueError(f"a folder of takes has train and val splits (val: {val_fraction:.0%} of each class's "
                         f"takes, held out), not {split!r}")
    folders = sorted(sub.name for sub in root.iterdir() if _is_class_folder(sub) and sub.name != BACKGROUND)
    names = list(dict.fromkeys([c for c in recorded_classes(root) if c != BACKGROUND] + folders))
    takes = []
    for category in [*names, BACKGROUND]:
        folder = root / category
        if folder.is_dir():
            takes += [Take(f"{category}/{p.name}", category, p) for p in _media(folder)]
    if split is not None:
        which = split_of(takes, val_fraction)
        takes = [t for t in takes if which[t.clip_id] == split]
    return FolderDataset(root, tuple(names), tuple(takes))
