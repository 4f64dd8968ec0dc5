"""``avbind data check``: validate a data set's annotations and media before hours go into training.

Every row is read; a malformed one is reported as ``file:line: what is wrong`` and the rest still
load, so one pass lists every problem instead of stopping at the first. The report counts videos,
segments and classes per split as the evaluation protocols count them:

* AVE: a video is ten one-second segments (the reference code scores all of them), classes are
  the 28 event categories (plus background in the model), splits come from the split files.
* EPIC-KITCHENS-100: a segment is an annotated action; classes are verbs, and verbs and nouns are
  counted from their class files. Durations come from the media or ``EPIC_100_video_info.csv``.

Formats are detected from the files present (``detect_format``); ``--format`` forces one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avbind.models.data.ave import HEADER, SEGMENTS, SPLIT_FILES, class_names, parse_line
from avbind.models.data.dataset import EPIC_SPLIT_FILES, FORMATS, detect_format

AVE_MEDIA_FOLDERS = ("AVE", "AVE_Dataset")
EPIC_VIDEO_INFO = "EPIC_100_video_info.csv"


@dataclass
class SplitCounts:
    videos: int = 0
    segments: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # class name -> segments (AVE: videos) of it


@dataclass
class CheckReport:
    format: str
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    verbs: int | None = None
    nouns: int | None = None
    errors: list[str] = field(default_factory=list)  # the data set is wrong here: fix before training
    warnings: list[str] = field(default_factory=list)  # loads, but probably not as meant
    media: dict | None = None  # {"present", "missing", "missing_examples"}; None: not checked

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.verbs is None:
            del out["verbs"], out["nouns"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check_dataset(
    data: str | Path, format: str | None = None, videos: str | Path | None = None, annotations_only: bool = False,
) -> CheckReport:
    """Check the data set at ``data`` (EPIC: the annotations folder; ``videos`` its media root)."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such folder")
    format = format or detect_format(data)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "epic":
        return check_epic(data, videos, annotations_only)
    if format == "epic-sounds":
        from avbind.models.data.epic_sounds import check_epic_sounds

        return check_epic_sounds(data, videos, annotations_only)
    if format == "folder":
        return check_folder(data)
    report = check_ave(data, annotations_only)
    report.format = format
    return report


# -- a folder of takes ----------------------------------------------------------------------------


def check_folder(root: Path) -> CheckReport:
    """Takes per class and split (videos: takes); a class without a take is an error, no
    background a warning, as ``avbind teach train`` would refuse or warn."""
    from avbind.models.data.folder import load_folder

    report = CheckReport("folder")
    for split in ("all", "train", "val"):
        dataset = load_folder(root, None if split == "all" else split)
        counts = SplitCounts(videos=len(dataset.takes))
        counts.classes = {c: len(dataset.takes_of(c)) for c in (*dataset.class_names, "background")}
        report.splits[split] = counts
    everything = report.splits["all"].classes
    report.errors += [f"{root}: class {c!r} has no takes (record some with avbind teach record)"
                      for c, n in everything.items() if not n and c != "background"]
    if not everything.get("background"):
        report.warnings.append(f"{root}: no background takes: the model will always name one of the classes")
    return report


# -- AVE ----------------------------------------------------------------------------------------


def _ave_rows(path: Path, report: CheckReport) -> list[tuple[str, str, int, int]]:
    """(category, video id, start, end) of each good row; bad rows reported with their line."""
    rows = []
    # utf-8-sig: a byte-order mark from a Windows editor; splitlines: LF or CRLF alike.
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        text = line.strip()
        if not text or text == HEADER:
            continue
        where = f"{path}:{number}"
        try:
            category, video_id, _, start, end = parse_line(text, where)
        except ValueError as err:
            report.errors.append(str(err))
            continue
        if start == end:
            report.warnings.append(f"{where}: zero-length event ({video_id}, {start}-{end}): "
                                   f"no segment of it is labelled {category!r}")
        if end > SEGMENTS:
            report.warnings.append(f"{where}: event ends at {end} s, after the clip's {SEGMENTS} s")
        rows.append((category, video_id, start, end))
    return rows


def check_ave(root: Path, annotations_only: bool = False) -> CheckReport:
    report = CheckReport("ave")
    annotations = root / "Annotations.txt"
    if not annotations.is_file():
        report.errors.append(f"{annotations}: not found")
        return report
    rows = _ave_rows(annotations, report)
    classes = class_names(root, rows, report.errors)
    # A clip is a (category, video id) pair: AVE labels 45 of its videos twice (male and female
    # speech over the same 10 s, say), and the reference code scores each pair as its own clip.
    # Several rows of one pair are several events of one clip (avsynth's long clips).
    clips: dict[tuple[str, str], int] = {}
    for category, video_id, *_ in rows:
        if category not in classes:
            report.errors.append(f"{annotations}: video {video_id}: category {category!r} is not a known class")
        clips[(category, video_id)] = clips.get((category, video_id), 0) + 1
    shared = Counter(video_id for _, video_id in clips)
    twice = sorted(v for v, n in shared.items() if n > 1)
    if twice:
        report.warnings.append(f"{annotations}: {len(twice)} videos are labelled with more than one category "
                               f"(e.g. {twice[0]}); each category is its own clip, as the reference code counts")
    report.splits["all"] = _ave_counts(list(clips))
    seen: dict[tuple[str, str], str] = {}
    for split, name in SPLIT_FILES.items():
        path = root / name
        if not path.is_file():
            report.warnings.append(f"{path}: missing: no {split} split")
            continue
        keys = {(category, video_id) for category, video_id, *_ in _ave_rows(path, report)}
        for key in sorted(keys):
            if key not in clips:
                report.errors.append(f"{path}: clip {key[1]} ({key[0]}) is not in {annotations.name}")
            elif key in seen:
                report.errors.append(f"{path}: clip {key[1]} ({key[0]}) is also in the {seen[key]} split")
            seen.setdefault(key, split)
        report.splits[split] = _ave_counts([k for k in keys if k in clips])
    video_ids = sorted(shared)
    if not annotations_only:
        folder = next((root / f for f in AVE_MEDIA_FOLDERS if (root / f).is_dir()), root / AVE_MEDIA_FOLDERS[0])
        missing = [v for v in video_ids if not (folder / f"{v}.mp4").is_file()]
        report.media = {"folder": str(folder), "present": len(video_ids) - len(missing), "missing": len(missing),
                        "missing_examples": [str(folder / f"{v}.mp4") for v in missing[:5]]}
        if missing:
            report.errors.append(f"{folder}: {len(missing)} of {len(video_ids)} videos missing "
                                 f"(e.g. {missing[0]}.mp4)")
    return report


def _ave_counts(clips: list[tuple[str, str]]) -> SplitCounts:
    return SplitCounts(videos=len(clips), segments=SEGMENTS * len(clips),
                       classes=dict(sorted(Counter(category for category, _ in clips).items())))


# -- EPIC-KITCHENS-100 --------------------------------------------------------------------------


def _read_csv(path: Path, columns: tuple[str, ...], report: CheckReport) -> list[tuple[int, dict[str, str]]] | None:
    """The good rows of an EPIC CSV; its bad rows, or a header it cannot be read by, go to ``report``."""
    from avbind.models.data.epic import read_rows_collecting

    try:
        rows, errors = read_rows_collecting(path, columns)
    except ValueError as err:
        report.errors.append(str(err))
        return None
    report.errors += errors
    return rows


def check_epic(annotations: Path, videos: str | Path | None = None, annotations_only: bool = False) -> CheckReport:
    from avbind.models.data.epic import ANNOTATION_COLUMNS, CLASS_COLUMNS, _parse_action

    report = CheckReport("epic")
    names: dict[str, list[str]] = {}
    for kind in ("verb", "noun"):
        path = annotations / f"EPIC_100_{kind}_classes.csv"
        if not path.is_file():
            report.errors.append(f"{path}: not found: {kind} ids cannot be checked")
            continue
        rows = _read_csv(path, CLASS_COLUMNS, report)
        if rows is None:
            continue
        by_id = {}
        for line, row in rows:
            if not row["id"].strip().isdigit():
                report.errors.append(f"{path}:{line}: id must be an integer, got {row['id']!r}")
                continue
            by_id[int(row["id"])] = row["key"]
        if sorted(by_id) != list(range(len(by_id))):
            report.errors.append(f"{path}: class ids must be 0..{len(by_id) - 1} without gaps")
        names[kind] = [by_id[i] for i in sorted(by_id)]
    report.verbs, report.nouns = len(names.get("verb", [])), len(names.get("noun", []))
    durations = _epic_durations(annotations / EPIC_VIDEO_INFO, report)
    participants: dict[str, str] = {}
    for key, candidates in EPIC_SPLIT_FILES.items():
        split = {"val": "validation"}.get(key, key)  # as the data set names its files
        path = next((annotations / n for n in candidates if (annotations / n).is_file()), None)
        if path is None:
            report.warnings.append(f"{annotations}: no {split} annotations ({' or '.join(candidates)})")
            continue
        rows = _read_csv(path, ANNOTATION_COLUMNS, report)
        if rows is None:
            continue
        counts, ids, seen = SplitCounts(), set(), set()
        verbs: Counter[str] = Counter()
        for line, row in rows:
            where = f"{path}:{line}"
            try:
                action = _parse_action(row, where)
            except ValueError as err:
                report.errors.append(str(err))
                continue
            if action.narration_id in seen:
                report.errors.append(f"{where}: narration_id {action.narration_id} repeats")
                continue
            seen.add(action.narration_id)
            bad = [f"{kind}_class {getattr(action, f'{kind}_class')} is out of range ({len(names[kind])} classes)"
                   for kind in ("verb", "noun")
                   if kind in names and getattr(action, f"{kind}_class") >= len(names[kind])]
            if bad:
                report.errors.append(f"{where}: {'; '.join(bad)}")
                continue
            if participants.setdefault(action.video_id, action.participant_id) != action.participant_id:
                report.errors.append(f"{where}: video {action.video_id} is under two participants")
            if action.video_id in durations and action.stop_s > durations[action.video_id] + 0.5:
                report.errors.append(f"{where}: stop_timestamp {row['stop_timestamp']} is after the video's end "
                                     f"({durations[action.video_id]:.2f} s)")
            ids.add(action.video_id)
            counts.segments += 1
            verbs[names["verb"][action.verb_class] if "verb" in names else str(action.verb_class)] += 1
        counts.videos, counts.classes = len(ids), dict(sorted(verbs.items()))
        report.splits[split] = counts
    if not annotations_only:
        report.media = _epic_media(Path(videos) if videos else annotations, participants, report)
    return report


def _epic_durations(path: Path, report: CheckReport) -> dict[str, float]:
    if not path.is_file():
        report.warnings.append(f"{path}: not found: annotation times are not checked against video lengths")
        return {}
    rows = _read_csv(path, ("video_id", "duration", "fps", "resolution"), report)
    if rows is None:
        return {}
    durations = {}
    for line, row in rows:
        try:
            durations[row["video_id"]] = float(row["duration"])
        except ValueError:
            report.errors.append(f"{path}:{line}: duration must be a number, got {row['duration']!r}")
    return durations


def _epic_media(root: Path, participants: dict[str, str], report: CheckReport) -> dict:
    from avbind.models.data.epic import media_candidates

    missing = [video_id for video_id, participant in sorted(participants.items())
               if not any(p.is_file() for p in media_candidates(root, participant, video_id))]
    if missing:
        report.errors.append(f"{root}: {len(missing)} of {len(participants)} annotated videos missing "
                             f"(e.g. {participants[missing[0]]}/videos/{missing[0]}.MP4)")
    return {"folder": str(root), "present": len(participants) - len(missing), "missing": len(missing),
            "missing_examples": missing[:5]}


def format_report(report: CheckReport) -> str:
    lines = [f"format: {report.format}"]
    for name, split in report.splits.items():
        lines.append(f"  {name}: {split.videos} videos, {split.segments} segments, {len(split.classes)} classes")
    if report.verbs is not None:
        lines.append(f"  verbs {report.verbs}, nouns {report.nouns}")
    if report.media is not None:
        lines.append(f"  media in {report.media['folder']}: {report.media['present']} present, "
                     f"{report.media['missing']} missing")
    lines += [f"error: {e}" for e in report.errors[:50]]
    if len(report.errors) > 50:
        lines.append(f"... and {len(report.errors) - 50} more errors (--json lists them all)")
    lines += [f"warning: {w}" for w in report.warnings[:20]]
    lines.append(f"{len(report.errors)} errors, {len(report.warnings)} warnings")
    return "\n".join(lines)


def add_check_cli(data_sub) -> None:
    p = data_sub.add_parser("check", help="validate a data set's annotations and media before training on it")
    p.add_argument("data", type=Path, nargs="?", help="the data set's folder (EPIC: same as --annotations)")
    p.add_argument("--annotations", type=Path, help="EPIC-KITCHENS-100: the folder of its CSVs")
    p.add_argument("--videos", type=Path, help="EPIC-KITCHENS-100: the videos root (<participant>/[videos/]<id>.MP4)")
    p.add_argument("--format", choices=FORMATS, help="force the format (default: detected from the files)")
    p.add_argument("--annotations-only", action="store_true", help="do not look for the media files")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_check_command)


def _check_command(args) -> int:
    data = args.annotations or args.data
    if data is None:
        raise SystemExit("avbind data check: give the data set's folder (or --annotations for EPIC)")
    report = check_dataset(data, args.format, args.videos, args.annotations_only)
    print(report.to_json() if args.json else format_report(report))
    return 1 if report.errors else 0
