"""One interface for every data set, and the registry of formats behind ``--data`` / ``--format``.

Train, eval, prepare and check ask a data set the same questions, whatever it is:

* ``clips()``: what to decode, as :class:`Clip` (a video and the stretch of it that is needed);
* ``targets(clip, times)``: per-step labels at the given step times, the one-second segments
  of the per-segment figures, and the annotated segments that the EPIC-100 protocol scores;
* ``class_names``, ``verbs``, ``nouns``: the heads' label names (background is added by the model).

AVE and avsynth (:mod:`~avbind.models.data.ave`), EPIC-KITCHENS-100
(:mod:`~avbind.models.data.epic`), EPIC-SOUNDS (:mod:`~avbind.models.data.epic_sounds`) and
folders of takes, one subfolder per class (:mod:`~avbind.models.data.folder`, what ``avbind
teach record`` writes) implement it; :func:`open_dataset` is the only place that knows which is which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

IGNORE = -100  # label value that losses skip (e.g. verb/noun of a background step)
SEGMENT_S = 1.0  # s: the per-segment figures' segment length (AVE's)
FORMATS = ("ave", "epic", "epic-sounds", "avsynth", "folder")
SPLITS = ("train", "val", "test")
EPIC_SPLIT_FILES = {"train": ("EPIC_100_train.csv", "EPIC_100_uda_source_train.csv"),
                    "val": ("EPIC_100_validation.csv",)}
EPIC_SOUNDS_SPLIT_FILES = {"train": ("EPIC_Sounds_train.csv",), "val": ("EPIC_Sounds_validation.csv",)}


@dataclass(frozen=True)
class Clip:
    """A video and the stretch of it a data set needs decoded (stop None: to the media's end)."""

    clip_id: str
    path: Path
    start_s: float = 0.0
    stop_s: float | None = None


@dataclass
class StepTargets:
    """What a clip's steps should predict, at the step times it was asked for."""

    labels: np.ndarray  # (T,) event class per step; background = len(class_names)
    verbs: np.ndarray  # (T,) verb per step, IGNORE where none
    nouns: np.ndarray  # (T,) noun per step, IGNORE where none
    segment_labels: np.ndarray  # (S,) class of each one-second segment
    step_segments: np.ndarray  # (T,) the one-second segment each step falls in
    # (A, 5) annotated segments scored one prediction each (EPIC-100's protocol): [first step,
    # stop step, event class, verb, noun] (IGNORE where none); empty where the data set scores
    # one-second segments only (AVE).
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.int64))


class DataSet(Protocol):
    format: str
    class_names: tuple[str, ...]

    @property
    def verbs(self) -> tuple[str, ...]: ...

    @property
    def nouns(self) -> tuple[str, ...]: ...

    @property
    def background(self) -> int: ...

    @property
    def cache_home(self) -> Path:
        """Where its prepared features go unless ``--cache`` says otherwise."""
        ...

    def clips(self) -> list[Clip]: ...

    def targets(self, clip: Clip, times: np.ndarray) -> StepTargets: ...


def detect_format(root: str | Path) -> str:
    """The format of the data set at ``root``, from the files present; ValueError says what was looked for."""
    root = Path(root)
    if (root / "avsynth.json").is_file():
        return "avsynth"
    if (root / "Annotations.txt").is_file():
        return "ave"
    if any((root / name).is_file() for names in EPIC_SPLIT_FILES.values() for name in names):
        return "epic"
    if any((root / name).is_file() for names in EPIC_SOUNDS_SPLIT_FILES.values() for name in names):
        return "epic-sounds"
    from avbind.models.data.folder import looks_like_take_folder

    if looks_like_take_folder(root):  # last: an AVE folder holds its media in a subfolder too
        return "folder"
    looked = [*(n for names in EPIC_SPLIT_FILES.values() for n in names),
              *(n for names in EPIC_SOUNDS_SPLIT_FILES.values() for n in names)]
    raise ValueError(f"{root}: no data set found: not an AVE-layout folder (no Annotations.txt) nor avsynth's "
                     f"(avsynth.json), no <class>/*.mp4 subfolders, and none of {', '.join(looked)}")


def split_file(folder: Path, split: str, files: dict[str, tuple[str, ...]], what: str) -> Path:
    """The annotation CSV of ``split`` in ``folder``; errors say which names were looked for."""
    if split == "test":
        raise ValueError(f"{what}: the test split's labels are not published; use --split val")
    if split not in files:
        raise ValueError(f"{what}: split must be one of {sorted(files)}, got {split!r}")
    for name in files[split]:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {split} annotations ({' or '.join(files[split])})")


def open_dataset(
    data: str | Path | None = None, split: str | None = None, format: str | None = None,
    annotations: str | Path | None = None, videos: str | Path | None = None, require_media: bool = True,
) -> DataSet:
    """The data set at ``data`` (or ``annotations`` + ``videos`` for EPIC), one split of it or all.

    ``format`` forces the format; otherwise it is detected from the files present.
    """
    root = Path(annotations or data) if (annotations or data) else None
    if root is None:
        raise ValueError("no data set given: --data DIR (or --annotations DIR --videos DIR for EPIC)")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    format = format or detect_format(root)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    media = Path(videos) if videos else Path(data) if data else root
    split = {"validation": "val"}.get(split, split)  # EPIC's files say "validation"
    if format in ("ave", "avsynth"):
        from avbind.models.data.ave import load_ave

        return load_ave(root, split, require_media=require_media)
    if format == "folder":
        from avbind.models.data.folder import load_folder

        return load_folder(root, split)
    if format == "epic":
        from avbind.models.data.epic import load_epic

        csv = split_file(root, split or "train", EPIC_SPLIT_FILES, "EPIC-KITCHENS-100")
        classes = [root / f"EPIC_100_{kind}_classes.csv" for kind in ("verb", "noun")]
        for path in classes:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; the heads' sizes come from the class files")
        return load_epic(csv, media, *classes, require_media=require_media)
    from avbind.models.data.epic_sounds import load_epic_sounds

    csv = split_file(root, split or "train", EPIC_SOUNDS_SPLIT_FILES, "EPIC-SOUNDS")
    return load_epic_sounds(csv, media, require_media=require_media)
