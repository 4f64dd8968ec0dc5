"""avsynth through real files: written with PyAV, decoded back, and checked against the design.

The content checks measure pixels and samples (colour masks, spectral peaks, band energy) rather
than reading the generator's internals, so they fail if a clip stops showing or sounding its event.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from avbind.models.config import get_config
from avbind.models.data.ave import load_ave
from avbind.models.data.avsynth import (
    ANNOTATION_HEADER,
    CLASS_NAMES,
    CLASS_VERB_NOUN,
    NOUN_RGB,
    SIZES,
    TREMOLO_HZ,
    SynthConfig,
    add_cli,
    annotate_clip,
    render_clip,
    write_dataset,
)
from avbind.models.data.steps import prepare_dataset

TINY = SIZES["tiny"]
WIDE = dataclasses.replace(TINY, n_train=60)  # more clips to find every class; only rendered, never written
LOCAL = SIZES["localization"]
# Two long clips at a small frame size: written and decoded in a few seconds.
LOCAL_FEW = dataclasses.replace(LOCAL, n_train=1, n_val=0, n_test=1, size=64)
LINE = re.compile(r"^(?P<cat>[^&\n]+)&(?P<vid>[A-Za-z0-9_-]{11})&good&(?P<start>\d{1,2})&(?P<end>\d{1,2})$")
FPS, SR = TINY.fps, TINY.sample_rate


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("avsynth") / "tiny", TINY, progress=False, workers=2)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, audio


@cache
def _render(config: SynthConfig, index: int) -> tuple[np.ndarray, np.ndarray, object]:
    return render_clip(config, index)


def _find(config: SynthConfig, category: str) -> int:
    """Index of the first clip of ``category`` whose event lasts at least 3 s."""
    for i in range(config.n_clips):
        ann = annotate_clip(config, i)
        if ann.category == category and ann.end_s - ann.start_s >= 3:
            return i
    raise AssertionError(f"no clip of {category!r} in {config.n_clips} clips")


def _object_track(config: SynthConfig, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per event frame: object pixel count, centroid x, centroid y, marker angle (radians)."""
    frames, _, ann = _render(config, index)
    noun = CLASS_VERB_NOUN[ann.category][1]
    event = frames[ann.start_s * FPS : ann.end_s * FPS].astype(np.int16)
    mask = (np.abs(event - np.array(NOUN_RGB[noun], np.int16)) < 60).all(axis=-1)
    white = (event > 215).all(axis=-1)
    area, xs, ys, angles = [], [], [], []
    for m, w in zip(mask, white, strict=True):
        yy, xx = np.nonzero(m)
        cx, cy = xx.mean(), yy.mean()
        dist = np.hypot(*np.mgrid[: m.shape[0], : m.shape[1]][::-1] - np.array([cx, cy])[:, None, None])
        near = w & (dist < np.sqrt(m.sum() / np.pi))  # the marker, not a clutter shape's stripe nearby
        wy, wx = np.nonzero(near)
        area.append(m.sum())
        xs.append(cx)
        ys.append(cy)
        angles.append(np.arctan2(wy.mean() - cy, wx.mean() - cx) if len(wx) else np.nan)
    return np.array(area), np.array(xs), np.array(ys), np.array(angles)


def test_media_decode_to_ten_seconds_of_h264_and_aac(tiny_dir: Path) -> None:
    files = sorted((tiny_dir / "AVE").glob("*.mp4"))
    assert len(files) == TINY.n_clips
    assert not list((tiny_dir / "AVE").glob("*.part"))
    for path in files:
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert (video.codec_context.name, video.width, video.height) == ("h264", 160, 160)
            assert (audio.codec_context.name, audio.rate, audio.channels) == ("aac", 16_000, 1)
        frames, samples = _decode(path)
        assert abs(len(frames) - 250) <= 1
        assert abs(len(samples) / 16_000 - 10.0) <= 0.1


def test_written_clip_matches_render_clip_with_audio_in_sync(tiny_dir: Path) -> None:
    frames, audio, ann = render_clip(TINY, 1)
    decoded_frames, decoded_audio = _decode(tiny_dir / "AVE" / f"{ann.video_id}.mp4")
    mse = np.mean((decoded_frames[: len(frames)].astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 28  # dB: lossy, but the same picture
    x, y = audio[4000:-4000], decoded_audio[: len(audio)]
    lags = np.arange(-1200, 1201, 4)  # samples; an AAC priming shift would show up as 1024
    corr = [np.dot(x, y[4000 + lag : len(audio) - 4000 + lag]) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0
    assert np.corrcoef(audio, y)[0, 1] > 0.98


def test_annotation_files_follow_ave_format(tiny_dir: Path) -> None:
    lines = _lines(tiny_dir / "Annotations.txt")
    assert lines[0] == ANNOTATION_HEADER == "Category&VideoID&Quality&StartTime&EndTime"
    assert len(lines) == 1 + TINY.n_clips
    for line in lines[1:]:
        match = LINE.match(line)
        assert match, line
        start, end = int(match["start"]), int(match["end"])
        assert match["cat"] in CLASS_NAMES
        assert 0 <= start < end <= 10 and end - start >= TINY.min_event_s
        assert (tiny_dir / "AVE" / f"{match['vid']}.mp4").is_file()
    assert _lines(tiny_dir / "classes.txt") == list(CLASS_NAMES)


def test_splits_are_disjoint_and_cover_every_clip(tiny_dir: Path) -> None:
    all_lines = _lines(tiny_dir / "Annotations.txt")[1:]
    splits = {name: _lines(tiny_dir / f"{name}Set.txt") for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 2}
    ids = {k: {LINE.match(line)["vid"] for line in v} for k, v in splits.items()}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(all_lines)


def test_settings_json_records_offsets_within_the_binding_window(tiny_dir: Path) -> None:
    import json

    meta = json.loads((tiny_dir / "avsynth.json").read_text(encoding="utf-8"))
    assert meta["classes"] == list(CLASS_NAMES)
    assert meta["settings"]["seed"] == 0 and meta["settings"]["fps"] == 25
    offsets = [clip["audio_offset_s"] for clip in meta["clips"]]
    assert offsets == [annotate_clip(TINY, i).audio_offset_s for i in range(TINY.n_clips)]
    assert all(abs(o) <= 0.2 for o in offsets) and len(set(offsets)) == len(offsets)


def test_cli_rewrites_the_identical_data_set_with_one_worker(tiny_dir: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="avbind data")
    add_cli(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--size", "tiny"])  # --out is required
    args = parser.parse_args(["synth", "--out", str(tmp_path / "cli"), "--size", "tiny", "--workers", "1"])
    assert args.func(args) == 0
    out = tmp_path / "cli"
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt", "classes.txt"):
        assert (out / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    video_id = LINE.match(_lines(out / "Annotations.txt")[1])["vid"]
    for mine, theirs in zip(
        _decode(out / "AVE" / f"{video_id}.mp4"), _decode(tiny_dir / "AVE" / f"{video_id}.mp4"), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)


def test_seed_fixes_everything_and_another_seed_changes_it() -> None:
    first, again = render_clip(TINY, 3), render_clip(TINY, 3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]
    other = dataclasses.replace(TINY, seed=1)
    lines = [annotate_clip(TINY, i).lines() for i in range(TINY.n_clips)]
    assert lines != [annotate_clip(other, i).lines() for i in range(TINY.n_clips)]
    assert not np.array_equal(first[0], render_clip(other, 3)[0])


def test_direction_pairs_share_a_noun() -> None:
    pairs = [("slide left", "slide right"), ("rotate clockwise", "rotate counter-clockwise"), ("grow", "shrink")]
    for a, b in pairs:
        nouns_a = {n for v, n in CLASS_VERB_NOUN.values() if v == a}
        nouns_b = {n for v, n in CLASS_VERB_NOUN.values() if v == b}
        assert nouns_a & nouns_b, (a, b)
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES) == 10
    assert all("&" not in name for name in CLASS_NAMES)


def test_event_sound_is_loud_inside_the_event_and_absent_in_quiet_background() -> None:
    checked = 0
    for i in range(20):
        _, audio, ann = _render(WIDE, i)
        margin = WIDE.max_audio_offset_s + 0.05  # seconds kept clear of the shifted event edges
        inside = audio[round((ann.start_s + margin) * SR) : round((ann.end_s - margin) * SR)]
        d = ann.audio_distractors[0] if ann.audio_distractors else None
        busy = [(ann.start_s, ann.end_s)] + ([(d.start_s, d.end_s)] if d else [])
        quiet = [k for k in range(10) if all(not (a - margin < k + 1 and k < b + margin) for a, b in busy)]
        if not quiet:
            continue
        outside = np.concatenate([audio[k * SR : (k + 1) * SR] for k in quiet])
        assert np.mean(inside**2) > 2.5 * np.mean(outside**2), ann
        if d:  # the audio-only distractor is audible too
            heard = audio[round((d.start_s + 0.05) * SR) : round((d.end_s - 0.05) * SR)]
            assert np.mean(heard**2) > 2.5 * np.mean(outside**2), ann
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("noun", ["red disc", "yellow star"])
def test_slide_directions_look_alike_per_frame_but_move_opposite_ways(noun: str) -> None:
    left = _object_track(WIDE, _find(WIDE, f"Slide left {noun}"))
    right = _object_track(WIDE, _find(WIDE, f"Slide right {noun}"))
    area_l, x_l, y_l, _ = left
    area_r, x_r, y_r, _ = right
    for area in (area_l, area_r):  # one unchanging appearance per clip, moved around
        assert np.std(area) < 0.05 * np.mean(area)
    assert 0.5 < np.median(area_l) / np.median(area_r) < 2.0  # the same object, up to size jitter
    for xs in (x_l, x_r):  # sweeping a large part of the frame, horizontally only
        assert 0.3 * 160 < np.ptp(xs) < 0.75 * 160
    assert np.median(np.abs(np.diff(y_l))) < 0.5 and np.median(np.abs(np.diff(y_r))) < 0.5
    assert np.median(np.diff(x_l)) < -1.0 < 1.0 < np.median(np.diff(x_r))


def test_grow_and_shrink_are_time_mirrors() -> None:
    grow, _, _, _ = _object_track(WIDE, _find(WIDE, "Grow green triangle"))
    shrink, _, _, _ = _object_track(WIDE, _find(WIDE, "Shrink green triangle"))
    assert 0.5 < np.percentile(grow, 90) / np.percentile(shrink, 90) < 2.0  # same object, up to size jitter
    for area in (grow, shrink):  # the same range of sizes: (1 / 0.45) ** 2 = 4.9 in area
        assert 3.0 < np.percentile(area, 95) / np.percentile(area, 5) < 7.0
    assert np.mean(np.diff(grow) > 0) > 0.75 and np.mean(np.diff(shrink) < 0) > 0.75


def test_rotation_direction_is_visible_thanks_to_the_marker() -> None:
    for verb, sign in (("clockwise", 1), ("counter-clockwise", -1)):
        *_, angles = _object_track(WIDE, _find(WIDE, f"Rotate {verb} blue square"))
        steps = np.angle(np.exp(1j * np.diff(angles)))  # wrapped to (-pi, pi]; image y points down
        assert np.mean(sign * steps > 0) > 0.8, verb


@pytest.mark.parametrize("noun", ["red disc"])
def test_slide_sounds_are_falling_and_rising_chirps(noun: str) -> None:
    def peak_steps(index: int) -> np.ndarray:
        _, audio, ann = _render(WIDE, index)
        x = audio[round((ann.start_s + 0.25) * SR) : round((ann.end_s - 0.25) * SR)]
        hop, win = 160, 1024
        frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hanning(win)
        spectrum = np.abs(np.fft.rfft(frames, axis=1))
        band = slice(200 * win // SR, 1500 * win // SR)  # around the disc's 523 Hz +- 0.75 octave
        peaks = spectrum[:, band].argmax(axis=1)
        return np.sign(np.diff(peaks))

    falling = peak_steps(_find(WIDE, f"Slide left {noun}"))
    rising = peak_steps(_find(WIDE, f"Slide right {noun}"))
    assert (falling < 0).sum() > 3 * (falling > 0).sum()
    assert (rising > 0).sum() > 3 * (rising < 0).sum()


def test_rotation_sounds_are_rising_and_falling_chirps_with_tremolo() -> None:
    """Clockwise rises, counter-clockwise falls (a sine and its negative would be the same sound
    half a cycle apart); the loudness wobbles at TREMOLO_HZ, which a slide's chirp does not."""

    def rising_fraction(index: int) -> float:
        _, audio, ann = _render(WIDE, index)
        x = audio[round((ann.start_s + 0.25) * SR) : round((ann.end_s - 0.25) * SR)]
        hop, win = 160, 2048
        frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hanning(win)
        spectrum = np.abs(np.fft.rfft(frames, axis=1))
        band = slice(350 * win // SR, 1400 * win // SR)  # the square's 698 Hz fundamental +- 1 octave
        power = spectrum[:, band] ** 2
        pitch = (power * np.arange(power.shape[1])).sum(axis=1) / power.sum(axis=1)  # centroid, in bins
        slope = np.diff(np.convolve(pitch, np.ones(5) / 5, mode="valid"))
        return float(np.mean(slope > 0))  # share of the time the pitch goes up

    assert rising_fraction(_find(WIDE, "Rotate clockwise blue square")) > 0.6
    assert rising_fraction(_find(WIDE, "Rotate counter-clockwise blue square")) < 0.4

    def tremolo_share(index: int) -> float:
        _, audio, ann = _render(WIDE, index)
        x = audio[round((ann.start_s + 0.25) * SR) : round((ann.end_s - 0.25) * SR)]
        envelope = np.sqrt(np.convolve(x**2, np.ones(160) / 160, mode="valid"))[::160]  # 100 Hz
        spectrum = np.abs(np.fft.rfft(envelope - envelope.mean())) ** 2
        freqs = np.fft.rfftfreq(len(envelope), 0.01)
        near = (freqs > TREMOLO_HZ - 1) & (freqs < TREMOLO_HZ + 1)
        return float(spectrum[near].sum() / spectrum[freqs > 3].sum())  # above the cycle rate

    names = ("Rotate clockwise blue square", "Slide left red disc")
    rotation, slide = (tremolo_share(_find(WIDE, name)) for name in names)
    assert rotation > 0.4 and rotation > 2.5 * slide, (rotation, slide)


def test_default_sizes_keep_one_event_in_ten_seconds() -> None:
    for i in range(TINY.n_clips):
        ann = annotate_clip(TINY, i)
        assert ann.duration_s == 10 and len(ann.events) == 1 and len(ann.lines()) == 1
        assert len(ann.visual_distractors) <= 1 and len(ann.audio_distractors) <= 1
        assert (ann.start_s, ann.end_s) == ann.events[0]


@pytest.mark.parametrize(
    "change",
    [
        {"min_duration_s": 70},
        {"min_duration_s": 0},
        {"max_event_s": 0},
        {"max_event_s": 61},
        {"events_per_clip": (0, 2)},
        {"events_per_clip": (3, 2)},
        {"min_event_s": 40},  # longer than the shortest clip
    ],
)
def test_localization_settings_are_validated(change: dict) -> None:
    with pytest.raises(ValueError, match=r"min_event_s|events_per_clip|duration_s"):
        dataclasses.replace(LOCAL, **change)


def test_localization_clips_hold_several_separated_events_and_busy_background() -> None:
    durations, counts, lengths = set(), set(), set()
    for i in range(LOCAL.n_clips):  # annotations only: no rendering
        ann = annotate_clip(LOCAL, i)
        assert 30 <= ann.duration_s <= 60 and 2 <= len(ann.events) <= 5, ann
        assert all(1 <= b - a <= 8 for a, b in ann.events), ann
        assert ann.events[0][0] >= 0 and ann.events[-1][1] <= ann.duration_s, ann
        assert all(b + 1 <= c for (_, b), (c, _) in zip(ann.events[:-1], ann.events[1:], strict=True)), ann  # gaps
        assert len(ann.lines()) == len(ann.events) and ann.start_s == ann.events[0][0]
        for d in ann.visual_distractors + ann.audio_distractors:  # only in background
            assert 0 <= d.start_s < d.end_s <= ann.duration_s
            assert all(d.end_s <= a or b <= d.start_s for a, b in ann.events), (d, ann)
        for v in ann.visual_distractors:  # seen and heard together would be an event
            for a in ann.audio_distractors:
                assert v.class_index != a.class_index or v.end_s <= a.start_s or a.end_s <= v.start_s
        durations.add(ann.duration_s)
        counts.add(len(ann.events))
        lengths.update(b - a for a, b in ann.events)
    assert len(durations) > 15 and counts == {2, 3, 4, 5} and lengths == set(range(1, 9))
    assert sum(annotate_clip(LOCAL, i).duration_s for i in range(LOCAL.n_clips)) < 1.1 * SIZES["default"].n_clips * 10


def test_localization_object_moves_only_inside_events_and_sounds_there() -> None:
    """Between events the object stands where it stopped and picks up from there: no pose jump at
    an onset. Its sound is loud inside every event and absent in quiet background."""
    config = dataclasses.replace(LOCAL, size=96)

    def plain(i: int) -> bool:  # the object stays on screen, and no distractor shares its colour
        ann = annotate_clip(config, i)
        noun = CLASS_VERB_NOUN[ann.category][1]
        nouns = {CLASS_VERB_NOUN[CLASS_NAMES[d.class_index]][1] for d in ann.visual_distractors}
        return ann.idle_visible and noun not in nouns

    index = next(i for i in range(config.n_clips) if plain(i))
    frames, audio, ann = render_clip(config, index)
    assert frames.shape == (ann.duration_s * FPS, 96, 96, 3) and audio.shape == (ann.duration_s * SR,)
    noun = CLASS_VERB_NOUN[ann.category][1]
    mask = (np.abs(frames.astype(np.int16) - np.array(NOUN_RGB[noun], np.int16)) < 60).all(axis=-1)
    change = (mask[1:] ^ mask[:-1]).sum(axis=(1, 2))  # change[k]: pixels that differ from frame k to k + 1
    inside = np.zeros(len(frames), bool)
    for a, b in ann.events:
        inside[a * FPS : b * FPS] = True
    moving = np.median(change[inside[:-1] & inside[1:]])
    still = np.median(change[~inside[:-1] & ~inside[1:]])
    assert moving > 5 * max(still, 5), (moving, still)
    edges = [k * FPS - 1 for a, b in ann.events for k in (a, b) if 0 < k < ann.duration_s]
    assert edges  # into an event's first frame and out of its last: no motion, and no jump either
    assert all(change[e] < 0.3 * moving for e in edges), change[edges]

    margin = LOCAL.max_audio_offset_s + 0.05
    busy = list(ann.events) + [(d.start_s, d.end_s) for d in ann.audio_distractors]
    quiet = [k for k in range(ann.duration_s) if all(not (a - margin < k + 1 and k < b + margin) for a, b in busy)]
    assert quiet, ann
    background = np.mean(np.concatenate([audio[k * SR : (k + 1) * SR] for k in quiet]) ** 2)
    for a, b in ann.events:
        inside_audio = audio[round((a + margin) * SR) : round((b - margin) * SR)]
        assert np.mean(inside_audio**2) > 2.5 * background, (a, b)


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("avsynth") / "local", LOCAL_FEW, progress=False, workers=1)


def test_localization_set_writes_a_line_per_event_and_loads_with_its_durations(local_dir: Path) -> None:
    anns = [annotate_clip(LOCAL_FEW, i) for i in range(LOCAL_FEW.n_clips)]
    lines = _lines(local_dir / "Annotations.txt")
    assert lines[1:] == [line for ann in anns for line in ann.lines()]
    assert len(lines) == 1 + sum(len(ann.events) for ann in anns)
    assert _lines(local_dir / "testSet.txt") == anns[1].lines()
    dataset = load_ave(local_dir)
    videos = {v.video_id: v for v in dataset.videos}
    for ann in anns:
        video = videos[ann.video_id]
        assert video.events == ann.events and video.duration_s == ann.duration_s
        frames, samples = _decode(video.path)
        assert abs(len(frames) - ann.duration_s * FPS) <= 1 and abs(len(samples) / SR - ann.duration_s) <= 0.1

    config = get_config("avbind-xs")
    prepared = {p.video_id: p for p in prepare_dataset(dataset, config, workers=1, progress=False)}
    for ann in anns:
        expected = np.full(ann.duration_s, dataset.background)
        for a, b in ann.events:
            expected[a:b] = ann.class_index
        video = prepared[ann.video_id]
        assert len(video.labels) == ann.duration_s * config.step_rate_hz
        np.testing.assert_array_equal(video.segment_labels, expected)
        np.testing.assert_array_equal(video.labels, np.repeat(expected, round(config.step_rate_hz)))
