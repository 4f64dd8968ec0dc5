"""The AVE data set's on-disk layout: a folder of mp4 files, Annotations.txt and split files.

Lines are ``Category&VideoID&Quality&StartTime&EndTime`` (times in whole seconds; the clip is ten
one-second segments). avsynth writes exactly this layout, so one loader serves both; its longer
localization clips, with a line per event, record their length in ``avsynth.json``.

The published files are read as published: with or without the header line, CRLF or LF, with or
without a byte-order mark, media in ``AVE/`` or ``AVE_Dataset/``. A clip is a (category, video
id) pair, as the reference code counts them: 45 AVE videos are labelled with two categories
(male and female speech over the same seconds, say), and each pair is its own clip. The one
zero-length row (``VWi2ENBuTbw``, 0-0) is a clip whose segments are all background, logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from avbind.models.data.dataset import IGNORE, SEGMENT_S, Clip, StepTargets

HEADER = "Category&VideoID&Quality&StartTime&EndTime"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
SEGMENTS = 10  # one-second segments per AVE clip
MEDIA_FOLDERS = ("AVE", "AVE_Dataset")  # as avsynth writes it; as the data set's zip unpacks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AveVideo:
    video_id: str  # the clip's id: the video's, or ``VIDEO~Category`` for a video labelled twice
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
    format: str = "ave"

    @property
    def cache_home(self) -> Path:
        return self.root / ".avbind-cache"

    def clips(self) -> list[Clip]:
        """Each clip whole: AVE's are ten seconds; a video labelled twice is two clips of one file."""
        return [Clip(v.video_id, v.path, 0.0, float(v.duration_s)) for v in self.videos]

    def targets(self, clip: Clip, times: np.ndarray) -> StepTargets:
        """Each step takes its one-second segment's label (AVE's reference code scores segments)."""
        video = self._by_id[clip.clip_id]
        segment_labels = self.labels(video)
        step_segments = np.minimum((np.asarray(times) // SEGMENT_S).astype(np.int64), len(segment_labels) - 1)
        labels = segment_labels[step_segments]
        verbs = np.full(len(times), IGNORE, np.int64)
        nouns = np.full(len(times), IGNORE, np.int64)
        for i, label in enumerate(labels):
            if int(label) in self._verb_noun_of_class:
                verbs[i], nouns[i] = self._verb_noun_of_class[int(label)]
        return StepTargets(labels, verbs, nouns, segment_labels, step_segments)

    @cached_property
    def _by_id(self) -> dict[str, AveVideo]:
        return {v.video_id: v for v in self.videos}

    @cached_property
    def _verb_noun_of_class(self) -> dict[int, tuple[int, int]]:
        """class index -> (verb index, noun index), where the data has them."""
        verbs, nouns = self.verbs, self.nouns
        return {self.class_names.index(name): (verbs.index(v), nouns.index(n))
                for name, (v, n) in (self.class_verb_noun or {}).items()}

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
    if not 0 <= start_s <= end_s:
        raise ValueError(f"{where}: need 0 <= StartTime <= EndTime, got {line.strip()!r}")
    return category, video_id, quality, start_s, end_s


def _read_lines(path: Path) -> list[tuple[str, str, str, int, int]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.strip() == HEADER:
            continue
        rows.append(parse_line(line, f"{path}:{number}"))
    return rows


def class_names(root: Path, rows: list[tuple], errors: list[str] | None = None) -> tuple[str, ...]:
    """classes.txt (a name a line), else classes_index.txt (``index<TAB>name``), else first appearance.

    First appearance in Annotations.txt (``rows``, category first) is the reference code's class
    order. A malformed line of classes_index.txt raises, or with ``errors`` given is appended there
    and skipped (``avbind data check`` reports every one).
    """
    names_file, index_file = root / "classes.txt", root / "classes_index.txt"
    if names_file.is_file():
        return tuple(n.strip() for n in names_file.read_text(encoding="utf-8-sig").splitlines() if n.strip())
    if index_file.is_file():
        indexed = {}
        for number, line in enumerate(index_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            index, _, name = line.partition("\t")
            if not index.strip().isdigit() or not name.strip():
                problem = f"{index_file}:{number}: expected 'index<TAB>name', got {line!r}"
                if errors is None:
                    raise ValueError(problem)
                errors.append(problem)
                continue
            indexed[int(index)] = name.strip()
        names = [indexed[i] for i in sorted(indexed)]
        # The reference code's file lists background last (index 28); the event head adds its own.
        return tuple(names[:-1] if names and names[-1].lower() == "background" else names)
    return tuple(dict.fromkeys(r[0] for r in rows))


def load_ave(root: str | Path, split: str | None = None, require_media: bool = True) -> AveDataset:
    """Clips of one split (or all), with their events; raises naming any missing file.

    ``require_media`` False lists clips whose media are absent (for counting and checking).
    """
    root = Path(root)
    annotations = root / "Annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: not found; is {root} an AVE-layout folder?")
    rows = _read_lines(annotations)
    names = class_names(root, rows)
    if split is not None:
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
        wanted = {(r[0], r[1]) for r in _read_lines(root / SPLIT_FILES[split])}
        rows = [r for r in rows if (r[0], r[1]) in wanted]
    events: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for category, video_id, _, start, end in rows:
        if category not in names:
            raise ValueError(f"{annotations}: category {category!r} of video {video_id} is not a known class")
        spans = events.setdefault((category, video_id), [])
        if end > start:
            spans.append((start, end))
        else:
            log.warning("%s: zero-length event of %s (%s, %d-%d): all its segments are background",
                        annotations, video_id, category, start, end)
    labelled = {}
    for _, video_id in events:
        labelled[video_id] = labelled.get(video_id, 0) + 1
    verb_noun = None
    durations: dict[str, int] = {}  # AVE's own clips are all SEGMENTS long and have no such record
    meta = root / "avsynth.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        verb_noun = {k: tuple(v) for k, v in info["class_verb_noun"].items()}
        durations = {c["video_id"]: int(c["duration_s"]) for c in info.get("clips", []) if "duration_s" in c}
    folder = next((root / f for f in MEDIA_FOLDERS if (root / f).is_dir()), root / MEDIA_FOLDERS[0])
    videos = []
    for (category, video_id), spans in events.items():
        path = folder / f"{video_id}.mp4"
        if require_media and not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {annotations.name} but missing")
        clip_id = video_id if labelled[video_id] == 1 else f"{video_id}~{category}"
        videos.append(AveVideo(clip_id, category, path, tuple(spans), durations.get(video_id, SEGMENTS)))
    return AveDataset(root, names, tuple(videos), verb_noun, "avsynth" if meta.is_file() else "ave")
