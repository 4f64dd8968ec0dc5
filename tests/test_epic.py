"""The EPIC-Kitchens-100 loader on a tiny real tree: CSVs written with csv.writer, mp4s with PyAV.

Each test video shows its own frame index (two grey levels) and P01_01 is silent until a tone at
2 s, so the checks read pixels and sound back rather than trusting the loader's bookkeeping.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from avbind.models.config import get_config
from avbind.models.data.avsynth import write_mp4
from avbind.models.data.epic import (
    ANNOTATION_COLUMNS,
    CLASS_COLUMNS,
    EpicAction,
    EpicDataset,
    load_epic,
    parse_timestamp,
    prepare_epic_video,
    step_labels,
)
from avbind.models.data.steps import IGNORE
from avbind.realtime.sources.decode import decode_media

FPS = 25  # video frames per second of the test clips
SAMPLE_RATE = 16_000  # Hz
CLIP_S = 4  # s per test video
FRAME_SIZE = 64  # px, width = height
LEVEL = 25  # grey-level step of the frame-index code: far above H.264's error on flat grey
TONE_START_S = 2.0  # s: P01_01 is silent before this, a 440 Hz tone after
TONE_HZ = 440.0  # Hz

VERBS = [(0, "take", "['take', 'grab']", "retrieve"), (1, "put", "['put']", "leave"),
         (2, "wash", "['wash', 'rinse']", "clean"), (3, "open", "['open']", "access")]
NOUNS = [(0, "tap", "['tap', 'faucet']", "appliances"), (1, "plate", "['plate']", "cutlery"),
         (2, "cupboard", "['cupboard']", "furniture"), (3, "water", "['water']", "drinks")]


def action_row(narration_id: str, start: str, stop: str, verb: tuple, noun: tuple,
               all_nouns: str, all_noun_classes: str) -> list[str]:
    video_id = narration_id.rsplit("_", 1)[0]
    frame = lambda ts: str(round(parse_timestamp(ts) * 50))  # noqa: E731 - EPIC videos run at 50 fps
    return [narration_id, video_id.split("_")[0], video_id, start, start, stop, frame(start), frame(stop),
            f"{verb[1]} {noun[1]}", verb[1], str(verb[0]), noun[1], str(noun[0]), all_nouns, all_noun_classes]


# Out of time order on purpose: the later-starting P01_01 action comes first, P02_03 sits in between.
ROWS = [
    action_row("P01_01_1", "00:00:01.40", "00:00:03.00", VERBS[2], NOUNS[1], "['plate']", "[1]"),
    action_row("P02_03_0", "00:00:01.00", "00:00:02.50", VERBS[0], NOUNS[2], "['cupboard']", "[2]"),
    action_row("P01_01_0", "00:00:00.30", "00:00:02.00", VERBS[3], NOUNS[0], "['tap', 'water']", "[0, 3]"),
]


def write_csv(path: Path, header: tuple[str, ...] | list[str], rows: list) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def frame_code_video(tone: bool) -> tuple[np.ndarray, np.ndarray]:
    """Frame i: left half grey (i % 10) * LEVEL, right half (i // 10) * LEVEL; audio silent or tone."""
    index = np.arange(CLIP_S * FPS)
    frames = np.zeros((len(index), FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    frames[:, :, : FRAME_SIZE // 2] = ((index % 10) * LEVEL)[:, None, None, None]
    frames[:, :, FRAME_SIZE // 2 :] = ((index // 10) * LEVEL)[:, None, None, None]
    t = np.arange(CLIP_S * SAMPLE_RATE) / SAMPLE_RATE
    audio = 0.3 * np.sin(2 * np.pi * TONE_HZ * t) * (t >= TONE_START_S) if tone else 0.01 * np.sin(t)
    return frames, audio.astype(np.float32)


def decode_frame_code(frames: np.ndarray) -> np.ndarray:
    """Frame index shown in each (T, S, S, 3) frame, read from the two grey halves."""
    quarter = frames.shape[2] // 4
    ones = np.rint(frames[:, :, :quarter].mean(axis=(1, 2, 3)) / LEVEL)
    tens = np.rint(frames[:, :, -quarter:].mean(axis=(1, 2, 3)) / LEVEL)
    return (tens * 10 + ones).astype(np.int64)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("epic")
    for participant, video_id, tone in (("P01", "P01_01", True), ("P02", "P02_03", False)):
        folder = root / participant / "videos"
        folder.mkdir(parents=True)
        write_mp4(folder / f"{video_id}.MP4", *frame_code_video(tone), fps=FPS, sample_rate=SAMPLE_RATE)
    write_csv(root / "EPIC_100_train.csv", ANNOTATION_COLUMNS, ROWS)
    write_csv(root / "EPIC_100_verb_classes.csv", CLASS_COLUMNS, VERBS)
    write_csv(root / "EPIC_100_noun_classes.csv", CLASS_COLUMNS, NOUNS)
    return root


def load(root: Path, annotations: str = "EPIC_100_train.csv") -> EpicDataset:
    return load_epic(root / annotations, root, root / "EPIC_100_verb_classes.csv", root / "EPIC_100_noun_classes.csv")


def make_action(
    start_s: float, stop_s: float, verb_class: int, noun_class: int, video_id: str = "P09_01",
) -> EpicAction:
    return EpicAction(f"{video_id}_{verb_class}", video_id, video_id[:3], start_s, stop_s, f"v{verb_class}",
                      verb_class, f"n{noun_class}", noun_class)


def test_parse_timestamp() -> None:
    assert parse_timestamp("00:01:02.37") == pytest.approx(62.37)
    assert parse_timestamp("01:00:00.00") == 3600.0
    assert parse_timestamp("00:00:07") == 7.0
    for bad in ("1:02.37", "00:61:00.00", "00:00:1x.00", ""):
        with pytest.raises(ValueError, match=f"timestamp '{bad}'"):
            parse_timestamp(bad)


def test_dataset_contents(tree: Path) -> None:
    ds = load(tree)
    assert ds.verb_names == ("take", "put", "wash", "open")
    assert ds.noun_names == ("tap", "plate", "cupboard", "water")
    assert ds.videos() == ("P01_01", "P02_03")
    assert [a.narration_id for a in ds.actions_of("P01_01")] == ["P01_01_1", "P01_01_0"]
    assert [a.narration_id for a in ds.actions_of("P02_03")] == ["P02_03_0"]
    assert ds.actions_of("P07_10") == ()
    assert ds.actions_of("P01_01")[1] == EpicAction("P01_01_0", "P01_01", "P01", 0.3, 2.0, "open", 3, "tap", 0)
    assert ds.video_path("P02_03") == tree / "P02" / "videos" / "P02_03.MP4"
    assert ds.background == 4
    assert ds.head_sizes() == {"num_classes": 4, "num_verbs": 4, "num_nouns": 4}


def test_names_without_class_files(tree: Path) -> None:
    ds = load_epic(tree / "EPIC_100_train.csv", tree)
    assert ds.verb_names == ("verb_0", "verb_1", "verb_2", "verb_3")
    assert ds.noun_names == ("noun_0", "noun_1", "noun_2")  # noun 3 is only in all_noun_classes


def test_video_path_accepts_lowercase_suffix_and_names_missing_file(tmp_path: Path) -> None:
    (tmp_path / "P03" / "videos").mkdir(parents=True)
    (tmp_path / "P03" / "videos" / "P03_01.mp4").write_bytes(b"")
    ds = EpicDataset(tmp_path, ("v",), ("n",), (make_action(0, 1, 0, 0, "P03_01"), make_action(0, 1, 0, 0, "P04_01")))
    assert ds.video_path("P03_01") == tmp_path / "P03" / "videos" / "P03_01.mp4"
    with pytest.raises(FileNotFoundError, match=r"P04[/\\]videos[/\\]P04_01\.MP4"):
        ds.video_path("P04_01")
    with pytest.raises(KeyError, match="P05_01"):
        ds.video_path("P05_01")


def test_header_must_match(tree: Path, tmp_path: Path) -> None:
    header = [c for c in ANNOTATION_COLUMNS if c != "verb_class"]
    rows = [[v for c, v in zip(ANNOTATION_COLUMNS, row, strict=True) if c != "verb_class"] for row in ROWS]
    path = write_csv(tmp_path / "no_verb_class.csv", header, rows)
    with pytest.raises(ValueError, match=r"missing columns \['verb_class'\]"):
        load_epic(path, tree)
    path = write_csv(tmp_path / "classes.csv", ("id", "key", "instances"), [r[:3] for r in VERBS])
    with pytest.raises(ValueError, match=r"missing columns \['category'\]"):
        load_epic(tree / "EPIC_100_train.csv", tree, verb_classes_csv=path)


def test_out_of_range_class_ids(tree: Path, tmp_path: Path) -> None:
    bad_verb = action_row("P01_01_2", "00:00:03.00", "00:00:03.50", (7, "stir"), NOUNS[1], "['plate']", "[1]")
    path = write_csv(tmp_path / "EPIC_100_train.csv", ANNOTATION_COLUMNS, [*ROWS, bad_verb])
    (tmp_path / "EPIC_100_verb_classes.csv").write_bytes((tree / "EPIC_100_verb_classes.csv").read_bytes())
    (tmp_path / "EPIC_100_noun_classes.csv").write_bytes((tree / "EPIC_100_noun_classes.csv").read_bytes())
    with pytest.raises(ValueError, match=r"EPIC_100_train\.csv:5: verb_class 7 is out of range"):
        load(tmp_path)
    assert load_epic(path, tmp_path).verb_names[-1] == "verb_7"  # fine when no class list bounds it
    bad_noun = action_row("P01_01_2", "00:00:03.00", "00:00:03.50", VERBS[0], (4, "pan"), "['pan']", "[4]")
    write_csv(tmp_path / "EPIC_100_train.csv", ANNOTATION_COLUMNS, [*ROWS, bad_noun])
    with pytest.raises(ValueError, match="noun_class 4 is out of range"):
        load(tmp_path)


def test_stop_must_follow_start(tree: Path, tmp_path: Path) -> None:
    backwards = action_row("P01_01_2", "00:00:03.50", "00:00:03.50", VERBS[0], NOUNS[1], "['plate']", "[1]")
    path = write_csv(tmp_path / "EPIC_100_train.csv", ANNOTATION_COLUMNS, [backwards])
    with pytest.raises(ValueError, match=r"EPIC_100_train\.csv:2: stop_timestamp 00:00:03.50 must be after"):
        load_epic(path, tree)


def test_step_labels_overlaps() -> None:
    outer = make_action(0.0, 1.0, 0, 10)
    inner = make_action(0.2, 0.5, 1, 11)  # inside outer and started later: wins while it runs
    tail = make_action(0.8, 1.2, 2, 12)  # overlaps outer's end
    times = np.arange(14) / 10  # 0.0 .. 1.3 s
    verbs, nouns = step_labels([tail, inner, outer], times)
    #                    0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 1.1  1.2     1.3
    assert verbs.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 2, 2, IGNORE, IGNORE]
    assert nouns.tolist() == [10, 10, 11, 11, 11, 10, 10, 10, 12, 12, 12, 12, IGNORE, IGNORE]
    assert verbs.dtype == nouns.dtype == np.int64
    first, second = make_action(0.0, 1.0, 5, 5), make_action(0.0, 1.0, 6, 6)
    assert step_labels([first, second], np.array([0.5]))[0].tolist() == [6]  # same start: later row
    assert step_labels([second, first], np.array([0.5]))[0].tolist() == [5]
    assert step_labels([], times)[0].tolist() == [IGNORE] * 14


def test_prepare_epic_video(tree: Path) -> None:
    # 10 steps/s, whatever the shipped default, so the hand-computed step indices below hold.
    config = dataclasses.replace(get_config("avbind-xs"), step_rate_hz=10.0)
    ds = load(tree)
    size, rate = config.video.input_size, config.step_rate_hz
    video = prepare_epic_video(ds, "P01_01", config)
    steps = len(video.frames)
    assert steps == math.floor(decode_media(ds.video_path("P01_01")).duration * rate) == CLIP_S * rate
    assert video.video_id == "P01_01"
    assert video.frames.shape == (steps, size, size, 3) and video.frames.dtype == np.uint8
    k = np.arange(steps)
    np.testing.assert_array_equal(decode_frame_code(video.frames), k * FPS // int(rate))  # latest frame at k/rate

    # open/tap 0.3-2.0 s, then wash/plate 1.4-3.0 s takes over (started later), nothing after 3.0 s
    expected_verbs = np.select([k < 3, k < 14, k < 30], [IGNORE, 3, 2], IGNORE)
    expected_nouns = np.select([k < 3, k < 14, k < 30], [IGNORE, 0, 1], IGNORE)
    np.testing.assert_array_equal(video.verbs, expected_verbs)
    np.testing.assert_array_equal(video.nouns, expected_nouns)
    np.testing.assert_array_equal(video.labels, np.where(expected_verbs == IGNORE, 4, expected_verbs))
    np.testing.assert_array_equal(video.step_segments, k // 10)
    assert video.segment_labels.tolist() == [3, 2, 2, 4]  # 7 of 10 open; 6 of 10 wash; all wash; background

    inputs = video.step_inputs(0, steps, config)
    assert inputs["frame"].shape == (steps, 3, size, size)
    windows = inputs["log_mel"]
    assert windows.shape == (steps, config.audio.window_frames, config.features.n_mels)
    loudest = windows.max(axis=(1, 2))  # the tone's mel band
    floor_value = np.log(config.features.log_floor)
    tone_step = int(TONE_START_S * rate)  # its window ends end_offset_s (40 ms) into the tone
    np.testing.assert_allclose(loudest[: tone_step - 1], floor_value, atol=1e-3)  # k - 1: room for AAC pre-echo
    assert loudest[tone_step:].min() > floor_value + 10.0  # nats above silence

    other = prepare_epic_video(ds, "P02_03", config)
    k = np.arange(len(other.verbs))
    np.testing.assert_array_equal(other.verbs, np.where((k >= 10) & (k < 25), 0, IGNORE))
    np.testing.assert_array_equal(other.nouns, np.where((k >= 10) & (k < 25), 2, IGNORE))
