"""The AVE data set's on-disk layout: a folder of mp4 files, Annotations.txt and split files.

Lines are ``Category&VideoID&Quality&StartTime&EndTime`` (times in whole seconds; the clip is ten
one-second segments). avsynth writes exactly this layout, so one loader serves both; its longer
localization clips, with a line per event, record their length in ``avsynth.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER = "Category&VideoID&Quality&StartTime&EndTime"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
SEGMENTS = 10  # one-second segments per AVE clip


@dataclass(frozen=True)
class AveVideo:
    video_id: str
    category: str
    path: Path
    events: tuple[tuple[int, int], ...]  # (start_s, end_s) intervals of the event, end exclusive
    duration_s: int = SEGMENTS  # clip length in one-second segments (AVE: always 10)

    def segment_labels(self, class_index: int, background: int, segments: int = SEGMENTS) -> np.ndarray:
        """(segments,) class per one-second segment; ``background`` outside the event."""
        labels = np.full(segments, background, dtype=np.int64)
        for start, end in self.events:
            labels[max(start, 0) : min(end, segments)] = class_index
        return labels


@dataclass(frozen=True)
class AveDataset:
    root: Path
    class_names: tuple[str, ...]
    videos: tuple[AveVideo, ...]
    # class name -> (verb, noun), where the data defines one (avsynth does; AVE does not)
    class_verb_noun: dict[str, tuple[str, str]] | None = None

    @property
    def background(self) -> int:
        return len(self.class_names)

    @property
    def verbs(self) -> tuple[str, ...]:
        return tuple(sorted({v for v, _ in (self.class_verb_noun or {}).values()}))

    @property
    def nouns(self) -> tuple[str, ...]:
        return tuple(sorted({n for _, n in (self.class_verb_noun or {}).values()}))

    def labels(self, video: AveVideo) -> np.ndarray:
        """(video.duration_s,) class per one-second segment."""
        return video.segment_labels(self.class_names.index(video.category), self.background, video.duration_s)


def parse_line(line: str, where: str) -> tuple[str, str, str, int, int]:
    parts = line.strip().split("&")
    if len(parts) != 5:
        raise ValueError(f"{where}: expected {HEADER!r}, got {line.strip()!r}")
    category, video_id, quality, start, end = parts
    try:
        start_s, end_s = int(start), int(end)
    except ValueError as err:
        raise ValueError(f"{where}: StartTime/EndTime must be whole seconds, got {line.strip()!r}") from err
    if not 0 <= start_s < end_s:
        raise ValueError(f"{where}: need 0 <= StartTime < EndTime, got {line.strip()!r}")
    return category, video_id, quality, start_s, end_s


def _read_lines(path: Path) -> list[tuple[str, str, str, int, int]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.strip() == HEADER:
            continue
        rows.append(parse_line(line, f"{path}:{number}"))
    return rows


def load_ave(root: str | Path, split: str | None = None) -> AveDataset:
    """Videos of one split (or all), with their events; raises naming any missing file."""
    root = Path(root)
    annotations = root / "Annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: not found; is {root} an AVE-layout folder?")
    rows = _read_lines(annotations)
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        class_names = tuple(n for n in classes_file.read_text().splitlines() if n.strip())
    else:
        class_names = tuple(sorted({r[0] for r in rows}))
    if split is not None:
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        wanted = {r[1] for r in _read_lines(root / SPLIT_FILES[split])}
        rows = [r for r in rows if r[1] in wanted]
    events: dict[str, list[tuple[int, int]]] = {}
    categories: dict[str, str] = {}
    for category, video_id, _, start, end in rows:
        if categories.setdefault(video_id, category) != category:
            raise ValueError(f"{annotations}: video {video_id} has two categories")
        if category not in class_names:
            raise ValueError(f"{annotations}: category {category!r} is not in {classes_file.name}")
        events.setdefault(video_id, []).append((start, end))
    verb_noun = None
    durations: dict[str, int] = {}  # AVE's own clips are all SEGMENTS long and have no such record
    meta = root / "avsynth.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        verb_noun = {k: tuple(v) for k, v in info["class_verb_noun"].items()}
        durations = {c["video_id"]: int(c["duration_s"]) for c in info.get("clips", []) if "duration_s" in c}
    videos = []
    for video_id, spans in events.items():
        path = root / "AVE" / f"{video_id}.mp4"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {annotations.name} but missing")
        videos.append(AveVideo(video_id, categories[video_id], path, tuple(spans), durations.get(video_id, SEGMENTS)))
    return AveDataset(root, class_names, tuple(videos), verb_noun)
