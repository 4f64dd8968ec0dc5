"""EPIC-Kitchens-100 on disk: action CSVs, class-name CSVs and ``<participant>/[videos/]<video>.MP4``.

EPIC labels are untrimmed actions (start/stop times, a verb and a noun) inside long videos, not
whole clips, so each model step takes the verb and noun of the action running at its time. Steps
are cut with the same decoder and timestamp rules as :mod:`avbind.models.data.steps`, so an EPIC
video is seen in training exactly as a live stream would be. Only ``csv`` and numpy: evaluation
machines without pandas or torch can read it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from avbind.models.config import ModelConfig
from avbind.models.data.dataset import Clip, StepTargets
from avbind.models.data.steps import IGNORE, SEGMENT_S, PreparedVideo, step_audio
from avbind.realtime.features.frames import square_resize
from avbind.realtime.sources.decode import decode_media
from avbind.realtime.sync.windows import EPSILON_S, frame_index_at, step_times

ANNOTATION_COLUMNS = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
    "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
    "all_noun_classes",
)
CLASS_COLUMNS = ("id", "key", "instances", "category")
VIDEO_SUFFIXES = (".MP4", ".mp4")  # the release uses .MP4; re-encoded copies are often .mp4
_TIMESTAMP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")  # HH:MM:SS.ss
SECONDS_PER_MINUTE = 60  # s
SECONDS_PER_HOUR = 3600  # s


def parse_timestamp(text: str) -> float:
    """Seconds from an EPIC ``HH:MM:SS.ss`` timestamp; strict, so a shifted CSV column fails loudly."""
    match = _TIMESTAMP.match(text.strip())
    if not match:
        raise ValueError(f"timestamp {text!r}: expected HH:MM:SS.ss")
    hours, minutes, seconds = match.groups()
    return int(hours) * SECONDS_PER_HOUR + int(minutes) * SECONDS_PER_MINUTE + float(seconds)


@dataclass(frozen=True)
class EpicAction:
    narration_id: str
    video_id: str
    participant_id: str
    start_s: float  # s from the start of the video
    stop_s: float  # s, exclusive
    verb: str
    verb_class: int
    noun: str
    noun_class: int


CONTEXT_S = 2.0  # s decoded after a video's last annotated action (its end is scored, then background)


@dataclass(frozen=True)
class EpicDataset:
    """EPIC-KITCHENS-100 through the data-set interface (:mod:`avbind.models.data.dataset`).

    Event classes are the verbs (plus background between actions); the verb and noun heads are
    trained on the same steps, and the action prior counts (verb, noun) pairs of the training steps.
    A clip is a video from its start (the stream's state builds up as it would live) to
    ``CONTEXT_S`` after its last annotated action.
    """

    root: Path  # videos root: <root>/<participant_id>/[videos/]<video_id>.MP4
    verb_names: tuple[str, ...]  # index = verb_class
    noun_names: tuple[str, ...]  # index = noun_class
    actions: tuple[EpicAction, ...]  # in CSV order
    format: str = "epic"

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.verb_names

    @property
    def verbs(self) -> tuple[str, ...]:
        return self.verb_names

    @property
    def nouns(self) -> tuple[str, ...]:
        return self.noun_names

    @property
    def cache_home(self) -> Path:
        return self.root / ".avbind-cache"

    def clips(self) -> list[Clip]:
        return [Clip(video_id, self.video_path(video_id), 0.0,
                     max(a.stop_s for a in self.actions_of(video_id)) + CONTEXT_S)
                for video_id in self.videos()]

    def targets(self, clip: Clip, times: np.ndarray) -> StepTargets:
        """Verb and noun of the action covering each step (see :func:`step_labels`), and each
        annotated action as one scored segment: the steps from its start to its stop; an action
        shorter than a step is scored on the first step at or after its start."""
        actions = self.actions_of(clip.clip_id)
        verbs, nouns = step_labels(actions, times)
        labels = np.where(verbs == IGNORE, self.background, verbs).astype(np.int64)
        segment_labels, step_segments = _segments(labels, times, self.background)
        return StepTargets(labels, verbs, nouns, segment_labels, step_segments,
                           scored_segments(actions, times, lambda a: (a.verb_class, a.verb_class, a.noun_class)))

    @cached_property
    def _by_video(self) -> dict[str, tuple[EpicAction, ...]]:
        # EPIC-100 train has ~67k actions over ~500 videos: index once instead of scanning per video
        return group_by_video(self.actions)

    @property
    def background(self) -> int:
        """Event class of a step that no action covers: one past the verbs, as the event head expects."""
        return len(self.verb_names)

    def head_sizes(self) -> dict[str, int]:
        """Keyword arguments for ``get_config(name, **sizes)``: events are verbs, plus verb and noun heads."""
        return {"num_classes": len(self.verb_names), "num_verbs": len(self.verb_names),
                "num_nouns": len(self.noun_names)}

    def videos(self) -> tuple[str, ...]:
        """Video ids in order of first appearance in the CSV, so splits and caches are reproducible."""
        return tuple(self._by_video)

    def actions_of(self, video_id: str) -> tuple[EpicAction, ...]:
        """The video's actions in CSV order; empty for a video without annotations."""
        return self._by_video.get(video_id, ())

    def video_path(self, video_id: str) -> Path:
        """Path of an annotated video; raises naming the expected path when it is not on disk."""
        actions = self.actions_of(video_id)
        if not actions:
            raise KeyError(f"video {video_id!r} has no annotated actions in this dataset")
        return find_video(self.root, actions[0].participant_id, video_id)


def _column_order(header: list[str] | None, expected: tuple[str, ...], path: Path) -> list[int]:
    """Where each expected column is in ``header``: any order, extra columns ignored, none missing.

    Exported from a spreadsheet or another tool, the same CSV may come with its columns reordered
    or one added; what must not happen is a missing column read as another.
    """
    if header is None:
        raise ValueError(f"{path}: empty file; expected header {','.join(expected)}")
    header = [name.strip() for name in header]
    missing = [name for name in expected if name not in header]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected header {','.join(expected)}")
    return [header.index(name) for name in expected]


def _read_rows(path: Path, expected: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs after a header check; every later error can point at a line."""
    rows, errors = read_rows_collecting(path, expected)
    if errors:
        raise ValueError(errors[0])
    return rows


def read_rows_collecting(path: Path, expected: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """Like :func:`_read_rows`, but a malformed row is reported (``file:line: what``) and skipped."""
    rows, errors = [], []
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets add a BOM
        reader = csv.reader(handle)
        header = next(reader, None)
        order = _column_order(header, expected, path)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                errors.append(f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(row)}")
                continue
            rows.append((reader.line_num, {name: row[i] for name, i in zip(expected, order, strict=True)}))
    return rows, errors


def _int_field(row: dict[str, str], column: str, where: str) -> int:
    try:
        value = int(row[column])
    except ValueError as err:
        raise ValueError(f"{where}: {column} must be an integer, got {row[column]!r}") from err
    if value < 0:
        raise ValueError(f"{where}: {column} must be >= 0, got {value}")
    return value


def load_class_names(path: str | Path) -> tuple[str, ...]:
    """Class keys indexed by id; ids must be 0..n-1 so that a class id is a head output index."""
    path = Path(path)
    names: dict[int, str] = {}
    for line, row in _read_rows(path, CLASS_COLUMNS):
        class_id = _int_field(row, "id", f"{path}:{line}")
        if class_id in names:
            raise ValueError(f"{path}:{line}: class id {class_id} appears twice")
        names[class_id] = row["key"]
    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise ValueError(f"{path}: class ids must be 0..{len(names) - 1} without gaps; missing {gaps}")
    return tuple(names[i] for i in range(len(names)))


def _parse_action(row: dict[str, str], where: str) -> EpicAction:
    try:
        start_s = parse_timestamp(row["start_timestamp"])
        stop_s = parse_timestamp(row["stop_timestamp"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if not stop_s > start_s:
        raise ValueError(f"{where}: stop_timestamp {row['stop_timestamp']} must be after start_timestamp "
                         f"{row['start_timestamp']}")
    return EpicAction(
        narration_id=row["narration_id"], video_id=row["video_id"], participant_id=row["participant_id"],
        start_s=start_s, stop_s=stop_s, verb=row["verb"], verb_class=_int_field(row, "verb_class", where),
        noun=row["noun"], noun_class=_int_field(row, "noun_class", where),
    )


def load_epic(
    annotations_csv: str | Path, videos_root: str | Path,
    verb_classes_csv: str | Path | None = None, noun_classes_csv: str | Path | None = None,
    require_media: bool = False,
) -> EpicDataset:
    """Actions of one EPIC-100 annotation CSV, checked row by row; errors name the file and line.

    Without class files the names are ``verb_<id>``/``noun_<id>`` up to the largest id seen, so head
    sizes still cover every label (but differ between splits: pass the class files for training).
    With ``require_media`` every annotated video must be on disk (FileNotFoundError names the first
    missing one); otherwise :meth:`EpicDataset.video_path` checks when a video is used.
    """
    annotations_csv = Path(annotations_csv)
    class_files = {"verb": verb_classes_csv, "noun": noun_classes_csv}
    known = {kind: load_class_names(path) for kind, path in class_files.items() if path is not None}
    actions: list[EpicAction] = []
    first_line: dict[str, int] = {}
    participants: dict[str, str] = {}
    for line, row in _read_rows(annotations_csv, ANNOTATION_COLUMNS):
        where = f"{annotations_csv}:{line}"
        action = _parse_action(row, where)
        if action.narration_id in first_line:
            raise ValueError(f"{where}: narration_id {action.narration_id} repeats line "
                             f"{first_line[action.narration_id]}")
        first_line[action.narration_id] = line
        if participants.setdefault(action.video_id, action.participant_id) != action.participant_id:
            raise ValueError(f"{where}: video {action.video_id} listed under participants "
                             f"{participants[action.video_id]} and {action.participant_id}")
        for kind, names in known.items():
            class_id = getattr(action, f"{kind}_class")
            if class_id >= len(names):
                raise ValueError(f"{where}: {kind}_class {class_id} is out of range: "
                                 f"{Path(class_files[kind]).name} has {len(names)} classes")
        actions.append(action)
    verb_names = known.get("verb") or _numbered("verb", [a.verb_class for a in actions])
    noun_names = known.get("noun") or _numbered("noun", [a.noun_class for a in actions])
    dataset = EpicDataset(Path(videos_root), verb_names, noun_names, tuple(actions))
    if require_media:
        for video_id in dataset.videos():
            dataset.video_path(video_id)
    return dataset


def _numbered(kind: str, ids: list[int]) -> tuple[str, ...]:
    return tuple(f"{kind}_{i}" for i in range(max(ids, default=-1) + 1))


def media_candidates(root: Path, participant_id: str, video_id: str) -> list[Path]:
    """Where an EPIC-KITCHENS video may be, most likely first: the download scripts' two layouts,
    ``<participant>/videos/<id>.MP4`` and ``<participant>/<id>.MP4`` (EPIC-SOUNDS uses the same videos)."""
    participant = Path(root) / participant_id
    return [folder / f"{video_id}{suffix}" for folder in (participant / "videos", participant)
            for suffix in VIDEO_SUFFIXES]


def find_video(root: Path, participant_id: str, video_id: str) -> Path:
    """The first of :func:`media_candidates` on disk; FileNotFoundError names where it was looked for."""
    candidates = media_candidates(root, participant_id, video_id)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{candidates[0]}: video {video_id} is annotated but missing (also tried "
                            f"{', '.join(p.name for p in candidates[1:])})")


def group_by_video(rows: Iterable) -> dict[str, tuple]:
    """Rows (anything with ``video_id``) by video, videos in order of first appearance, rows in order."""
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row.video_id, []).append(row)
    return {video_id: tuple(items) for video_id, items in grouped.items()}


def covering(spans: Sequence, times: np.ndarray) -> np.ndarray:
    """(T,) index into ``spans`` of the span covering each step time, -1 where none does.

    A span (anything with ``start_s``/``stop_s``) covers ``start_s <= t < stop_s``. Annotations
    overlap (one hand washes while the other reaches; a tap runs while a pan clatters); the one
    that started last wins, as it is the freshest evidence at that moment; equal starts go to the
    later CSV row. Times get the windowing tolerance, so a step at 0.3 s is inside a span that
    starts at ``00:00:00.30`` despite float rounding.
    """
    times = np.asarray(times, dtype=np.float64) + EPSILON_S
    index = np.full(times.shape, -1, np.int64)
    for i in sorted(range(len(spans)), key=lambda i: spans[i].start_s):  # stable: later rows win ties
        index[(times >= spans[i].start_s) & (times < spans[i].stop_s)] = i
    return index


def step_labels(actions: Sequence[EpicAction], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(verbs, nouns), each (T,) int64: the classes of the action covering each step time (see
    :func:`covering`), else IGNORE."""
    index = covering(actions, times)
    verbs = np.array([a.verb_class for a in actions] + [IGNORE], np.int64)[index]
    nouns = np.array([a.noun_class for a in actions] + [IGNORE], np.int64)[index]
    return verbs, nouns


def scored_segments(actions: Iterable, times: np.ndarray, classes) -> np.ndarray:
    """(A, 5) [first step, stop step, event, verb, noun] of each annotated segment with a step.

    A segment covers the steps with ``start_s <= t < stop_s``; one shorter than a step gets the
    first step at or after its start (the first prediction that has seen it begin). A segment past
    the last step (media shorter than its annotations) is left out.
    """
    times = np.asarray(times, dtype=np.float64) + EPSILON_S
    rows = []
    for a in actions:
        first = int(np.searchsorted(times, a.start_s, side="left"))
        if first >= len(times):
            continue
        stop = max(int(np.searchsorted(times, a.stop_s, side="left")), first + 1)
        rows.append([first, stop, *classes(a)])
    return np.asarray(rows, np.int64).reshape(-1, 5)


def _segments(labels: np.ndarray, times: np.ndarray, background: int) -> tuple[np.ndarray, np.ndarray]:
    """(segment_labels, step_segments) over SEGMENT_S segments: a segment takes its most common step label.

    Ties go to the smaller class, so an action beats background (the largest class) in a segment
    it half fills. Segments run up to the last step's; one without steps (step rate below 1 Hz) is
    background.
    """
    step_segments = (times // SEGMENT_S).astype(np.int64)
    n_segments = int(step_segments[-1]) + 1 if len(step_segments) else 0
    segment_labels = np.array([
        np.bincount(labels[step_segments == s]).argmax() if np.any(step_segments == s) else background
        for s in range(n_segments)
    ], dtype=np.int64)
    return segment_labels, step_segments


def prepare_epic_video(dataset: EpicDataset, video_id: str, config: ModelConfig) -> PreparedVideo:
    """Per-step frames, log-mel windows and labels of a whole EPIC video, for training or evaluation.

    Steps span the decoded duration (``floor(duration * step_rate_hz)`` of them); the event label
    of a step is its verb class, or ``dataset.background`` between actions.
    """
    media = decode_media(dataset.video_path(video_id), config.features.sample_rate,
                         partial(square_resize, size=config.video.input_size))
    times = step_times(media.duration, config.step_rate_hz)
    if not len(times):
        raise ValueError(f"video {video_id}: {media.duration:.3f} s is shorter than one step "
                         f"({1 / config.step_rate_hz:.3f} s)")
    frames = media.frames[frame_index_at(media.frame_times, times)]
    mel, first = step_audio(media, times, config)
    t = dataset.targets(Clip(video_id, dataset.video_path(video_id)), times)
    return PreparedVideo(video_id, frames, mel, first, t.labels, t.segment_labels, t.step_segments, t.verbs, t.nouns,
                         t.actions)

