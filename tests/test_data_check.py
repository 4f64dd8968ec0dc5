"""``avbind data check`` on the published annotation files of AVE and EPIC-KITCHENS-100.

The files are read from ``../shared/data`` (next to the repository), never copied into it; the
tests skip with a reason where that folder is absent. Variants (CRLF, a byte-order mark, a header
line, reordered columns, a corrupted row) are written by the tests from the real files.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from avbind_testing import avbind_exe

from avbind.models.data.check import check_dataset, detect_format

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AVE = SHARED / "ave"
EPIC = SHARED / "epic-kitchens-100"
needs_ave = pytest.mark.skipif(not (AVE / "Annotations.txt").is_file(), reason=f"no AVE annotations at {AVE}")
needs_epic = pytest.mark.skipif(not (EPIC / "EPIC_100_validation.csv").is_file(),
                                reason=f"no EPIC-KITCHENS-100 annotations at {EPIC}")
AVE_FILES = ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt", "classes_index.txt")
EPIC_FILES = ("EPIC_100_validation.csv", "EPIC_100_uda_source_train.csv", "EPIC_100_verb_classes.csv",
              "EPIC_100_noun_classes.csv", "EPIC_100_video_info.csv")


def _ave_counts(report) -> dict:
    return {name: (s.videos, len(s.classes)) for name, s in report.splits.items()}


@needs_ave
def test_ave_as_published() -> None:
    report = check_dataset(AVE, annotations_only=True)
    assert report.format == "ave" and report.errors == []
    assert _ave_counts(report) == {"all": (4143, 28), "train": (3339, 28), "val": (402, 28), "test": (402, 28)}
    assert report.splits["test"].segments == 4020  # ten one-second segments per clip, as AVE scores them
    zero = [w for w in report.warnings if "VWi2ENBuTbw" in w]
    assert zero and "Annotations.txt:" in zero[0] and "0-0" in zero[0]


@needs_ave
def test_ave_with_crlf_bom_and_header_counts_the_same_and_names_a_bad_row(tmp_path: Path) -> None:
    for name in AVE_FILES:
        text = (AVE / name).read_text()
        if name == "Annotations.txt":  # the data set's own zip has a header line
            text = "Category&VideoID&Quality&StartTime&EndTime\n" + text
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert _ave_counts(check_dataset(tmp_path, annotations_only=True)) == _ave_counts(
        check_dataset(AVE, annotations_only=True))
    lines = (tmp_path / "Annotations.txt").read_bytes().split(b"\r\n")
    lines[100] = b"Church bell&broken&good&ten&10"
    (tmp_path / "Annotations.txt").write_bytes(b"\r\n".join(lines))
    report = check_dataset(tmp_path, annotations_only=True)
    assert any(e.startswith(f"{tmp_path / 'Annotations.txt'}:101: ") and "whole seconds" in e for e in report.errors)
    assert report.splits["all"].videos == 4142  # the rest still loads


@needs_epic
def test_epic_as_published() -> None:
    report = check_dataset(EPIC, annotations_only=True)
    assert report.format == "epic" and report.errors == [] and report.warnings == []
    validation = report.splits["validation"]
    assert (validation.segments, validation.videos) == (9668, 138)
    assert (report.verbs, report.nouns) == (97, 300)
    assert report.splits["train"].segments == 16115
    assert sum(validation.classes.values()) == 9668


@needs_epic
def test_epic_with_reordered_columns_crlf_and_bom_counts_the_same_and_names_bad_rows(tmp_path: Path) -> None:
    for name in EPIC_FILES:
        with (EPIC / name).open(newline="") as handle:
            rows = list(csv.reader(handle))
        order = list(reversed(range(len(rows[0]))))  # every column moved
        with (tmp_path / name).open("w", newline="", encoding="utf-8-sig") as handle:
            csv.writer(handle, lineterminator="\r\n").writerows([[row[i] for i in order] for row in rows])
    reference = check_dataset(EPIC, annotations_only=True)
    report = check_dataset(tmp_path, annotations_only=True)
    assert report.errors == []
    assert {k: (s.videos, s.segments, s.classes) for k, s in report.splits.items()} == {
        k: (s.videos, s.segments, s.classes) for k, s in reference.splits.items()}
    # Corrupt two rows of validation: a bad timestamp on line 11 and a verb id out of range on line 21.
    path = tmp_path / "EPIC_100_validation.csv"
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    rows[10][header.index("start_timestamp")] = "00:00:xx"
    rows[20][header.index("verb_class")] = "500"
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle).writerows(rows)
    report = check_dataset(tmp_path, annotations_only=True)
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{path}:11", f"{path}:21"], report.errors
    assert "HH:MM:SS.ss" in report.errors[0] and "verb_class 500 is out of range" in report.errors[1]
    assert report.splits["validation"].segments == 9666


@needs_epic
def test_the_command_prints_json_and_its_exit_status_says_whether_the_data_is_sound(tmp_path: Path) -> None:
    result = subprocess.run([avbind_exe(), "data", "check", "--annotations", str(EPIC), "--annotations-only",
                             "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"format", "splits", "verbs", "nouns", "errors"}
    assert report["splits"]["validation"]["segments"] == 9668 and report["verbs"] == 97
    # Media are looked for unless --annotations-only: none of the 138 validation videos is here.
    missing = subprocess.run([avbind_exe(), "data", "check", str(EPIC), "--videos", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "annotated videos missing" in missing.stdout


def test_the_format_is_detected_from_the_files_present(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no data set found"):
        detect_format(tmp_path)
    (tmp_path / "Annotations.txt").write_text("Bark&abc&good&0&3\n")
    assert detect_format(tmp_path) == "ave"
    (tmp_path / "avsynth.json").write_text("{}")
    assert detect_format(tmp_path) == "avsynth"


# -- the AVE loader on the published files --------------------------------------------------------


@needs_ave
def test_the_ave_loader_reads_the_published_files_as_the_reference_code_counts_them() -> None:
    from avbind.models.data.ave import load_ave

    counts = {split: len(load_ave(AVE, split, require_media=False).videos) for split in ("train", "val", "test")}
    assert counts == {"train": 3339, "val": 402, "test": 402}
    everything = load_ave(AVE, require_media=False)
    assert len(everything.videos) == 4143 and len({v.video_id for v in everything.videos}) == 4143
    assert len(everything.class_names) == 28 and everything.class_names[0] == "Church bell"  # reference order
    twice = [v for v in everything.videos if v.path.stem == "-ccciEuH9FE"]
    assert sorted(v.category for v in twice) == ["Female speech, woman speaking", "Male speech, man speaking"]
    zero = next(v for v in everything.videos if v.video_id == "VWi2ENBuTbw")
    assert zero.events == () and set(everything.labels(zero)) == {everything.background}


@needs_ave
def test_a_stand_in_ave_folder_trains_and_evaluates_end_to_end(tmp_path: Path) -> None:
    """Real rows (a video labelled twice, the zero-length row), generated media, the zip's layout."""
    rows = [line for line in (AVE / "Annotations.txt").read_text().splitlines() if line.strip()]
    wanted = {"-ccciEuH9FE", "VWi2ENBuTbw"}
    picked = [r for r in rows if r.split("&")[1] in wanted] + [r for r in rows if r.split("&")[1] not in wanted][::700]
    root = tmp_path / "ave"
    (root / "AVE_Dataset").mkdir(parents=True)
    header = "Category&VideoID&Quality&StartTime&EndTime"
    (root / "Annotations.txt").write_bytes(("\r\n".join([header, *picked]) + "\r\n").encode("utf-8-sig"))
    (root / "classes_index.txt").write_bytes((AVE / "classes_index.txt").read_bytes())
    test_ids = {"-ccciEuH9FE", "VWi2ENBuTbw"}
    others = [r for r in picked if r.split("&")[1] not in test_ids]
    splits = {"trainSet.txt": others[1:], "valSet.txt": others[:1],
              "testSet.txt": [r for r in picked if r.split("&")[1] in test_ids]}
    for name, lines in splits.items():
        (root / name).write_text("\n".join(lines) + "\n")
    for k, video_id in enumerate(sorted({r.split("&")[1] for r in picked})):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-f", "lavfi",
                        "-i", f"sine=frequency={300 + 50 * k}:sample_rate=16000", "-t", "10", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", str(root / "AVE_Dataset" / f"{video_id}.mp4")],
                       check=True, timeout=120)
    check = check_dataset(root)
    assert check.errors == [] and check.splits["test"].videos == 3 and check.media["missing"] == 0
    out = tmp_path / "run"
    trained = subprocess.run([avbind_exe(), "train", "--data", str(root), "--out", str(out), "--config", "avbind-xs",
                              "--epochs", "1", "--crops-per-video", "1", "--batch-size", "2", "--threads", "2"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = subprocess.run([avbind_exe(), "eval", "--checkpoint", str(out / "model.pt"), "--data", str(root),
                                "--split", "test", "--out", str(tmp_path / "eval")],
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["videos"] == 3 and report["segments"] == 30 and report["skipped"] == []
    fusion = report["ablations"]["fusion"]
    assert 0 <= fusion["offline"]["segment_accuracy"] <= 1 and fusion["stream_offline_agreement"] == 1.0
