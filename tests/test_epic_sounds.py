"""EPIC-SOUNDS: the loader and ``avbind data check`` on the published validation CSV and small real files.

The published CSV is read from ``../shared/data/epic-sounds`` (next to the repository), never copied
into it; those tests skip with a reason where it is absent. Expected counts are computed here with
the ``csv`` module, independently of the loader. Variants (CRLF, a byte-order mark, reordered
columns, a corrupted row) and the hand-written CSVs are written to ``tmp_path``.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from avbind_testing import avbind_exe

from avbind.models.data.check import check_dataset
from avbind.models.data.dataset import IGNORE, detect_format, open_dataset
from avbind.models.data.epic import CONTEXT_S
from avbind.models.data.epic_sounds import EpicSoundsDataset, check_epic_sounds, load_epic_sounds

SOUNDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "epic-sounds"
VALIDATION = SOUNDS / "EPIC_Sounds_validation.csv"
needs_sounds = pytest.mark.skipif(not VALIDATION.is_file(), reason=f"no EPIC-SOUNDS annotations at {SOUNDS}")
HEADER = ["annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_sample",
          "stop_sample", "description", "class", "class_id"]
SAMPLE_RATE = 24_000  # Hz: EPIC-SOUNDS' start_sample/stop_sample are at 24 kHz


def _published() -> list[dict[str, str]]:
    with VALIDATION.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def _counts(report) -> dict:
    return {name: (s.videos, s.segments, s.classes) for name, s in report.splits.items()}


def _row(annotation_id: str, video_id: str, start: str, stop: str, name: str, class_id: int | str) -> list[str]:
    seconds = [sum(float(x) * m for x, m in zip(t.split(":"), (3600, 60, 1), strict=True)) for t in (start, stop)]
    return [annotation_id, video_id.split("_")[0], video_id, start, stop,
            *(str(round(s * SAMPLE_RATE)) for s in seconds), name, name, str(class_id)]


def _write(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


# -- the published validation CSV -------------------------------------------------------------------


@needs_sounds
def test_the_published_validation_csv_loads_and_checks_with_the_counts_the_csv_module_sees() -> None:
    rows = _published()
    videos = list(dict.fromkeys(r["video_id"] for r in rows))
    names = {int(r["class_id"]): r["class"] for r in rows}
    per_class: dict[str, int] = {}
    for r in rows:
        per_class[r["class"]] = per_class.get(r["class"], 0) + 1
    assert (len(rows), len(videos), len(names)) == (8035, 137, 44)  # as ../shared/data/README.md says

    dataset = load_epic_sounds(VALIDATION, SOUNDS, require_media=False)
    assert len(dataset.events) == len(rows) and dataset.videos() == tuple(videos)
    assert dataset.class_names == tuple(names[i] for i in range(len(names)))  # ids 0..43, no gaps
    assert dataset.background == len(names) and dataset.verbs == () and dataset.nouns == ()
    assert dataset.cache_home == SOUNDS / ".avbind-cache"

    report = check_epic_sounds(SOUNDS, None, annotations_only=True)
    assert report.format == "epic-sounds" and report.errors == [] and report.media is None
    assert _counts(report) == {"validation": (len(videos), len(rows), dict(sorted(per_class.items())))}
    # The published set has no train CSV here, and one of its sound classes is called "background".
    assert any("no train annotations" in w for w in report.warnings)
    assert any("class_id 13 is named 'background'" in w for w in report.warnings)


@needs_sounds
def test_open_dataset_finds_the_sounds_by_their_files() -> None:
    assert detect_format(SOUNDS) == "epic-sounds"
    dataset = open_dataset(annotations=SOUNDS, split="val", require_media=False)
    assert isinstance(dataset, EpicSoundsDataset) and dataset.format == "epic-sounds"
    assert len(dataset.events) == len(_published())
    with pytest.raises(FileNotFoundError, match=r"EPIC_Sounds_train\.csv"):
        open_dataset(annotations=SOUNDS, split="train", require_media=False)
    with pytest.raises(FileNotFoundError, match=r"P01[/\\]videos[/\\]P01_11\.MP4"):  # none of the videos is here
        open_dataset(annotations=SOUNDS, split="val", require_media=True)


@needs_sounds
def test_a_corrupted_row_is_named_by_its_line_and_the_rest_still_count(tmp_path: Path) -> None:
    rows = list(csv.reader(VALIDATION.open(newline="", encoding="utf-8-sig")))
    rows[10][rows[0].index("start_timestamp")] = "00:00:xx"  # line 11 of the file
    rows[20][rows[0].index("class_id")] = "-3"  # line 21
    path = tmp_path / VALIDATION.name
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    report = check_dataset(tmp_path, annotations_only=True)
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{path}:11", f"{path}:21"], report.errors
    assert "HH:MM:SS" in report.errors[0] and "class_id must be >= 0" in report.errors[1]
    assert report.splits["validation"].segments == len(rows) - 1 - 2
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:11: timestamp '00:00:xx'"):
        load_epic_sounds(path, tmp_path)


@needs_sounds
def test_crlf_a_byte_order_mark_and_reordered_columns_count_the_same(tmp_path: Path) -> None:
    rows = list(csv.reader(VALIDATION.open(newline="", encoding="utf-8-sig")))
    order = list(reversed(range(len(rows[0]))))  # every column moved
    path = tmp_path / VALIDATION.name
    with path.open("w", newline="", encoding="utf-8-sig") as handle:  # -sig writes the BOM
        csv.writer(handle, lineterminator="\r\n").writerows([[row[i] for i in order] for row in rows])
    assert path.read_bytes().startswith(b"\xef\xbb\xbfclass_id,class,") and b"\r\n" in path.read_bytes()
    report = check_epic_sounds(tmp_path, None, annotations_only=True)
    assert report.errors == [] and _counts(report) == _counts(check_epic_sounds(SOUNDS, None, True))
    reference = load_epic_sounds(VALIDATION, SOUNDS)
    dataset = load_epic_sounds(path, SOUNDS)
    assert dataset.events == reference.events and dataset.class_names == reference.class_names


@needs_sounds
def test_the_command_prints_json_with_the_format_and_fails_on_missing_media(tmp_path: Path) -> None:
    result = subprocess.run([avbind_exe(), "data", "check", "--annotations-only", "--json", str(SOUNDS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "epic-sounds" and report["errors"] == [] and "verbs" not in report
    assert report["splits"]["validation"]["segments"] == len(_published())
    missing = subprocess.run([avbind_exe(), "data", "check", str(SOUNDS), "--videos", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "137 of 137 annotated videos missing" in missing.stdout


# -- small hand-written CSVs ----------------------------------------------------------------------------


def _overlapping(tmp_path: Path) -> Path:
    """Overlapping sounds in P01_01 (a long one, two starting together inside it), P02_03 between."""
    return _write(tmp_path / "EPIC_Sounds_validation.csv", [
        _row("P01_01_0", "P01_01", "00:00:01.000", "00:00:04.000", "water", 2),
        _row("P01_01_1", "P01_01", "00:00:02.000", "00:00:03.000", "click", 0),
        _row("P01_01_2", "P01_01", "00:00:02.000", "00:00:02.500", "beep", 5),  # same start: later row wins
        _row("P02_03_0", "P02_03", "00:00:00.500", "00:00:01.500", "water", 2),
        _row("P01_01_3", "P01_01", "00:00:05.100", "00:00:05.200", "click", 0),  # shorter than a step
    ])


def test_targets_follow_the_latest_sound_and_score_each_annotated_sound(tmp_path: Path) -> None:
    dataset = load_epic_sounds(_overlapping(tmp_path), tmp_path / "videos")
    # ids 0, 2, 5 seen: the gaps are named, so a class id is the head's output index
    assert dataset.class_names == ("click", "class_1", "water", "class_3", "class_4", "beep")
    background = dataset.background
    assert background == 6
    (tmp_path / "videos" / "P01" / "videos").mkdir(parents=True)
    (tmp_path / "videos" / "P02").mkdir()
    (tmp_path / "videos" / "P01" / "videos" / "P01_01.MP4").touch()  # the two layouts of the download scripts
    (tmp_path / "videos" / "P02" / "P02_03.mp4").touch()
    clips = dataset.clips()
    assert [(c.clip_id, c.path.relative_to(tmp_path), c.start_s) for c in clips] == [
        ("P01_01", Path("videos/P01/videos/P01_01.MP4"), 0.0), ("P02_03", Path("videos/P02/P02_03.mp4"), 0.0)]
    assert [c.stop_s for c in clips] == pytest.approx([5.2 + CONTEXT_S, 1.5 + CONTEXT_S])

    times = np.arange(14) * 0.5  # 2 Hz steps, 0 .. 6.5 s
    targets = dataset.targets(clips[0], times)
    b = background
    assert targets.labels.tolist() == [b, b, 2, 2, 5, 0, 2, 2, b, b, b, b, b, b]
    assert targets.verbs.tolist() == [IGNORE] * 14 and targets.nouns.tolist() == [IGNORE] * 14
    assert targets.step_segments.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert targets.segment_labels.tolist() == [b, 2, 0, 2, b, b, b]  # a 5/0 tie goes to the smaller class
    assert targets.actions.tolist() == [  # [first step, stop step, class, verb, noun], in CSV order
        [2, 8, 2, IGNORE, IGNORE], [4, 6, 0, IGNORE, IGNORE], [4, 5, 5, IGNORE, IGNORE],
        [11, 12, 0, IGNORE, IGNORE]]  # the 0.1 s click is scored on the first step after it starts
    other = dataset.targets(clips[1], times[:7])
    assert other.labels.tolist() == [b, 2, 2, b, b, b, b] and other.actions.tolist() == [[1, 3, 2, IGNORE, IGNORE]]

    with pytest.raises(FileNotFoundError, match="P03_01"):
        load_epic_sounds(_write(tmp_path / "more.csv", [_row("a", "P03_01", "00:00:00.000", "00:00:01.000", "x", 0)]),
                         tmp_path / "videos", require_media=True)
    assert load_epic_sounds(tmp_path / "EPIC_Sounds_validation.csv", tmp_path / "videos", require_media=True)


BAD_ROWS = {  # what is wrong with the second row -> what the error says
    "timestamp": (_row("b", "P01_01", "00:00:1.5", "00:00:02.000", "click", 0), "expected HH:MM:SS"),
    "empty": (_row("b", "P01_01", "00:00:02.000", "00:00:02.000", "click", 0), "must be after start_timestamp"),
    "backwards": (_row("b", "P01_01", "00:00:03.000", "00:00:02.000", "click", 0), "must be after start_timestamp"),
    "class id": (_row("b", "P01_01", "00:00:01.000", "00:00:02.000", "click", "zero"), "class_id must be an integer"),
    "negative": (_row("b", "P01_01", "00:00:01.000", "00:00:02.000", "click", -1), "class_id must be >= 0"),
    "repeat": (_row("a", "P01_01", "00:00:01.000", "00:00:02.000", "click", 0), "annotation_id a repeats"),
    "renamed": (_row("b", "P01_01", "00:00:01.000", "00:00:02.000", "clack", 0), "class_id 0 is named 'clack'"),
    "fields": (["b", "P01", "P01_01"], "expected 10 fields, got 3"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_stops_the_loader_naming_its_line(tmp_path: Path, case: str) -> None:
    row, what = BAD_ROWS[case]
    path = _write(tmp_path / "sounds.csv", [_row("a", "P01_01", "00:00:00.000", "00:00:01.000", "click", 0), row])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: .*{re.escape(what)}"):
        load_epic_sounds(path, tmp_path)


def test_the_check_lists_every_bad_row_and_counts_the_good_ones(tmp_path: Path) -> None:
    good = [_row("a", "P01_01", "00:00:00.000", "00:00:01.000", "click", 0),
            _row("z", "P02_01", "00:00:00.000", "00:00:01.000", "water", 2)]
    _write(tmp_path / "EPIC_Sounds_validation.csv", [good[0], *(row for row, _ in BAD_ROWS.values()), good[1]])
    _write(tmp_path / "EPIC_Sounds_train.csv", [_row("t", "P01_01", "00:00:00.000", "00:00:01.000", "click", 0)])
    (tmp_path / "P02" / "videos").mkdir(parents=True)
    (tmp_path / "P02" / "videos" / "P02_01.MP4").touch()
    report = check_epic_sounds(tmp_path, None, annotations_only=False)
    path = tmp_path / "EPIC_Sounds_validation.csv"
    expected = sorted(f"{path}:{line}" for line in range(3, 3 + len(BAD_ROWS)))
    assert sorted(e.split(": ", 1)[0] for e in report.errors[:-1]) == expected, report.errors
    assert all(any(what in e for e in report.errors) for _, what in BAD_ROWS.values())
    assert report.errors[-1].startswith(f"{tmp_path}: 1 of 2 annotated videos missing")  # P01_01
    assert report.media == {"folder": str(tmp_path), "present": 1, "missing": 1, "missing_examples": ["P01_01"]}
    assert _counts(report) == {"train": (1, 1, {"click": 1}), "validation": (2, 2, {"click": 1, "water": 1})}
    assert any("1 videos are annotated in more than one split (e.g. P01_01)" in w for w in report.warnings)


def test_the_check_says_when_there_is_nothing_to_check(tmp_path: Path) -> None:
    report = check_epic_sounds(tmp_path, None, annotations_only=True)
    assert report.splits == {} and report.errors == [
        f"{tmp_path}: no EPIC-SOUNDS annotations (looked for EPIC_Sounds_train.csv, EPIC_Sounds_validation.csv)"]
    _write(tmp_path / "EPIC_Sounds_validation.csv", [], header=["annotation_id", "video_id"])
    report = check_epic_sounds(tmp_path, None, annotations_only=True)
    assert len(report.errors) == 1 and "missing columns" in report.errors[0]
