"""EPIC-SOUNDS on disk: timestamped audio events over the EPIC-KITCHENS-100 videos.

EPIC-SOUNDS (Huh et al., ICASSP 2023) annotates what is *heard* in the EPIC-KITCHENS-100 videos:
each CSV row is one sound event (start/stop time, a description and one of 44 sound classes)
inside a long untrimmed video. It has no verbs or nouns, so through the data-set interface
(:mod:`avbind.models.data.dataset`) the event head learns the sound classes, the verb and noun
heads are left out, and each annotated sound is one scored segment, as EPIC-100's actions are.

The audio comes from the EPIC-KITCHENS videos themselves, so media are found exactly where
:mod:`avbind.models.data.epic` finds them (``<root>/<participant>/[videos/]<video>.MP4``), and rows
are read and checked by the same rules (columns by header name, strict ``HH:MM:SS.sss``
timestamps, every error as ``file:line: what``). Only ``csv`` and numpy, like the EPIC loader.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avbind.models.config import BACKGROUND
from avbind.models.data.dataset import EPIC_SOUNDS_SPLIT_FILES, IGNORE, Clip, StepTargets
from avbind.models.data.epic import (
    CONTEXT_S,
    _segments,
    covering,
    find_video,
    group_by_video,
    parse_timestamp,
    read_rows_collecting,
    scored_segments,
)

if TYPE_CHECKING:
    from avbind.models.data.check import CheckReport

# The columns read (by header name: any order, extra ones such as start_sample/description ignored).
ANNOTATION_COLUMNS = ("annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp",
                      "class", "class_id")
SPLIT_NAMES = {"train": "train", "val": "validation"}  # as the data set names its files


@dataclass(frozen=True)
class SoundEvent:
    annotation_id: str
    video_id: str
    participant_id: str
    start_s: float  # s from the start of the video
    stop_s: float  # s, exclusive
    class_name: str
    class_id: int


@dataclass(frozen=True)
class EpicSoundsDataset:
    """EPIC-SOUNDS through the data-set interface: event classes are the sound classes.

    A clip is a whole video from its start (the stream's state builds up as it would live) to
    ``CONTEXT_S`` after its last annotated sound; steps that no sound covers are background.
    """

    root: Path  # videos root: <root>/<participant_id>/[videos/]<video_id>.MP4
    class_names: tuple[str, ...]  # index = class_id
    events: tuple[SoundEvent, ...]  # in CSV order
    format: str = "epic-sounds"

    @property
    def verbs(self) -> tuple[str, ...]:
        """Empty: EPIC-SOUNDS labels sounds, not actions, so there is no verb (or noun) head to train."""
        return ()

    @property
    def nouns(self) -> tuple[str, ...]:
        return ()

    @property
    def background(self) -> int:
        """Event class of a step that no sound covers: one past the sound classes, as the head expects."""
        return len(self.class_names)

    @property
    def cache_home(self) -> Path:
        return self.root / ".avbind-cache"

    def head_sizes(self) -> dict[str, int]:
        """Keyword arguments for ``get_config(name, **sizes)``: sound classes only, no verb/noun heads."""
        return {"num_classes": len(self.class_names)}

    def clips(self) -> list[Clip]:
        return [Clip(video_id, self.video_path(video_id), 0.0,
                     max(e.stop_s for e in self.events_of(video_id)) + CONTEXT_S)
                for video_id in self.videos()]

    def targets(self, clip: Clip, times: np.ndarray) -> StepTargets:
        """Sound class covering each step (see :func:`step_labels`), background elsewhere, and each
        annotated sound as one scored segment (a sound shorter than a step is scored on the first
        step at or after its start). Verbs and nouns are IGNORE throughout."""
        times = np.asarray(times, dtype=np.float64)
        events = self.events_of(clip.clip_id)
        labels = step_labels(events, times, self.background)
        segment_labels, step_segments = _segments(labels, times, self.background)
        none = np.full(times.shape, IGNORE, np.int64)
        return StepTargets(labels, none, none.copy(), segment_labels, step_segments,
                           scored_segments(events, times, lambda e: (e.class_id, IGNORE, IGNORE)))

    @cached_property
    def _by_video(self) -> dict[str, tuple[SoundEvent, ...]]:
        # ~8k events over ~140 videos in validation alone: index once instead of scanning per video
        return group_by_video(self.events)

    def videos(self) -> tuple[str, ...]:
        """Video ids in order of first appearance in the CSV, so splits and caches are reproducible."""
        return tuple(self._by_video)

    def events_of(self, video_id: str) -> tuple[SoundEvent, ...]:
        """The video's sounds in CSV order; empty for a video without annotations."""
        return self._by_video.get(video_id, ())

    def video_path(self, video_id: str) -> Path:
        """Path of an annotated video; raises naming the expected path when it is not on disk."""
        events = self.events_of(video_id)
        if not events:
            raise KeyError(f"video {video_id!r} has no annotated sounds in this dataset")
        return find_video(self.root, events[0].participant_id, video_id)


def step_labels(events: Sequence[SoundEvent], times: np.ndarray, background: int) -> np.ndarray:
    """(T,) int64: the class of the sound covering each step time (EPIC-100's overlap rule,
    :func:`avbind.models.data.epic.covering`), else ``background``."""
    return np.array([e.class_id for e in events] + [background], np.int64)[covering(events, times)]


def parse_event(row: dict[str, str], where: str) -> SoundEvent:
    """One CSV row as a :class:`SoundEvent`; ValueError ``where: what`` if any field is malformed."""
    try:
        start_s = parse_timestamp(row["start_timestamp"])
        stop_s = parse_timestamp(row["stop_timestamp"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if not stop_s > start_s:
        raise ValueError(f"{where}: stop_timestamp {row['stop_timestamp']} must be after start_timestamp "
                         f"{row['start_timestamp']}")
    text = row["class_id"].strip()
    try:
        class_id = int(text)
    except ValueError as err:
        raise ValueError(f"{where}: class_id must be an integer, got {row['class_id']!r}") from err
    if class_id < 0:
        raise ValueError(f"{where}: class_id must be >= 0, got {class_id}")
    return SoundEvent(annotation_id=row["annotation_id"].strip(), video_id=row["video_id"].strip(),
                      participant_id=row["participant_id"].strip(), start_s=start_s, stop_s=stop_s,
                      class_name=row["class"].strip(), class_id=class_id)


class _Consistency:
    """The cross-row rules, shared by the loader (raise at the first) and the check (collect all).

    An annotation id is one event; a class id is one class name (else the head's output ``i`` would
    mean two things); a video belongs to one participant (its media path depends on it).
    """

    def __init__(self) -> None:
        self.annotations: dict[str, str] = {}  # annotation_id -> where first seen
        self.names: dict[int, tuple[str, str]] = {}  # class_id -> (name, where first seen)
        self.participants: dict[str, str] = {}  # video_id -> participant_id

    def problems(self, event: SoundEvent, where: str) -> list[str]:
        """What is wrong with ``event`` given the rows seen before it; records it if nothing is."""
        out = []
        if event.annotation_id in self.annotations:
            out.append(f"{where}: annotation_id {event.annotation_id} repeats {self.annotations[event.annotation_id]}")
        name, first = self.names.get(event.class_id, (event.class_name, where))
        if name != event.class_name:
            out.append(f"{where}: class_id {event.class_id} is named {event.class_name!r} here but {name!r} at "
                       f"{first}")
        participant = self.participants.get(event.video_id, event.participant_id)
        if participant != event.participant_id:
            out.append(f"{where}: video {event.video_id} listed under participants {participant} and "
                       f"{event.participant_id}")
        if not out:
            self.annotations[event.annotation_id] = where
            self.names.setdefault(event.class_id, (event.class_name, where))
            self.participants.setdefault(event.video_id, event.participant_id)
        return out

    def class_names(self) -> tuple[str, ...]:
        """Names indexed by class id, 0..max; an id never seen is ``class_<id>``, so ids stay head indices."""
        return tuple(self.names[i][0] if i in self.names else f"class_{i}"
                     for i in range(max(self.names, default=-1) + 1))


def load_epic_sounds(csv: str | Path, videos_root: str | Path, require_media: bool = False) -> EpicSoundsDataset:
    """The sound events of one EPIC-SOUNDS annotation CSV, every row checked; errors name file and line.

    Class names come from the CSV's (class_id, class) pairs, so the event head has ``max id + 1``
    outputs (the 44 published classes when all appear, as they do in each published split). With
    ``require_media`` every annotated video must be on disk (FileNotFoundError names the first
    missing one); otherwise :meth:`EpicSoundsDataset.video_path` checks when a video is used.
    """
    csv = Path(csv)
    rows, errors = read_rows_collecting(csv, ANNOTATION_COLUMNS)
    if errors:
        raise ValueError(errors[0])
    rules = _Consistency()
    events = []
    for line, row in rows:
        where = f"{csv}:{line}"
        event = parse_event(row, where)
        problems = rules.problems(event, where)
        if problems:
            raise ValueError(problems[0])
        events.append(event)
    dataset = EpicSoundsDataset(Path(videos_root), rules.class_names(), tuple(events))
    if require_media:
        for video_id in dataset.videos():
            dataset.video_path(video_id)
    return dataset


def check_epic_sounds(annotations: Path, videos: Path | None = None, annotations_only: bool = False) -> CheckReport:
    """``avbind data check`` for EPIC-SOUNDS: every bad row listed, per-split counts, media found.

    A segment is an annotated sound (EPIC-SOUNDS scores each one); classes are counted by name.
    Annotation ids, class names and participants must agree across both splits, since train and
    validation share one head and one videos root.
    """
    from avbind.models.data.check import CheckReport, SplitCounts, _epic_media, _read_csv

    annotations = Path(annotations)
    report = CheckReport("epic-sounds")
    rules = _Consistency()
    split_videos: dict[str, set[str]] = {}
    for key, candidates in EPIC_SOUNDS_SPLIT_FILES.items():
        split = SPLIT_NAMES.get(key, key)
        path = next((annotations / n for n in candidates if (annotations / n).is_file()), None)
        if path is None:
            report.warnings.append(f"{annotations}: no {split} annotations ({' or '.join(candidates)})")
            continue
        rows = _read_csv(path, ANNOTATION_COLUMNS, report)  # None: a header no row of it can be trusted under
        if rows is None:
            continue
        counts, ids = SplitCounts(), set()
        classes: Counter[str] = Counter()
        for line, row in rows:
            where = f"{path}:{line}"
            try:
                event = parse_event(row, where)
            except ValueError as err:
                report.errors.append(str(err))
                continue
            problems = rules.problems(event, where)
            if problems:
                report.errors += problems
                continue
            ids.add(event.video_id)
            counts.segments += 1
            classes[event.class_name] += 1
        counts.videos, counts.classes = len(ids), dict(sorted(classes.items()))
        report.splits[split] = counts
        split_videos[split] = ids
    if not any((annotations / n).is_file() for names in EPIC_SOUNDS_SPLIT_FILES.values() for n in names):
        looked = [n for names in EPIC_SOUNDS_SPLIT_FILES.values() for n in names]
        report.errors.append(f"{annotations}: no EPIC-SOUNDS annotations (looked for {', '.join(looked)})")
    shared = set.intersection(*split_videos.values()) if len(split_videos) > 1 else set()
    if shared:
        report.warnings.append(f"{len(shared)} videos are annotated in more than one split (e.g. {min(shared)}): "
                               f"validation figures would be measured on training videos")
    names = rules.class_names()
    for class_id, name in enumerate(names):
        if name.lower() == BACKGROUND:
            report.warnings.append(f"class_id {class_id} is named {name!r}, as is the class the event head adds "
                                   f"(index {len(names)}, no sound annotated): reports by name cannot tell them apart")
    if not annotations_only:
        report.media = _epic_media(Path(videos) if videos else annotations, rules.participants, report)
    return report
