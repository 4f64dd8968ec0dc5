"""Decoding, timestamp windowing, the AVE loader and step preparation, on real media files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avbind.models.config import get_config
from avbind.models.data.ave import HEADER, load_ave
from avbind.models.data.avsynth import SIZES, write_dataset
from avbind.models.data.steps import prepare_dataset
from avbind.realtime.features.frames import square_resize, to_model_input
from avbind.realtime.features.log_mel import LogMelSettings, log_mel
from avbind.realtime.sources.decode import MediaError, decode_media
from avbind.realtime.sync.windows import (
    cut_log_mel_window,
    frame_index_at,
    log_mel_window_range,
    step_times,
)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("avsynth") / "tiny", SIZES["tiny"], progress=False)


def test_step_times_and_frame_choice() -> None:
    times = step_times(10.0, 10.0)
    assert len(times) == 100 and times[0] == 0.0 and abs(times[-1] - 9.9) < 1e-9
    frame_times = np.arange(250) / 25.0  # 25 fps
    # The latest frame at or before the step; exact coincidences count as "at".
    assert frame_index_at(frame_times, 0.0) == 0
    assert frame_index_at(frame_times, 0.1) == 2  # 0.08 and 0.12 around it -> 0.08
    assert frame_index_at(frame_times, 0.12) == 3
    assert frame_index_at(frame_times + 0.5, 0.2) == 0  # before the first frame: the first
    assert list(frame_index_at(frame_times, np.array([0.0, 0.04, 0.0399]))) == [0, 1, 0]


def test_log_mel_window_ends_within_the_lookahead() -> None:
    s = LogMelSettings()
    first, stop = log_mel_window_range(2.0, s, window_frames=96, end_offset_s=0.04)
    assert stop - first == 96
    last = stop - 1
    # The last frame is complete by t + 40 ms; the next one would not be.
    assert (last * s.hop + s.window) / s.sample_rate <= 2.04 + 1e-9
    assert ((last + 1) * s.hop + s.window) / s.sample_rate > 2.04
    # Audio that starts later shifts the indices back by the same amount.
    first_late, stop_late = log_mel_window_range(2.0, s, 96, 0.04, audio_start_s=0.5)
    assert stop - stop_late == 50 and first - first_late == 50


def test_cut_window_pads_with_silence() -> None:
    frames = np.arange(12, dtype=np.float32).reshape(6, 2)
    window = cut_log_mel_window(frames, -2, 3, floor_value=-13.0)
    assert window.shape == (5, 2)
    assert np.all(window[:2] == -13.0) and np.array_equal(window[2:], frames[:3])
    assert np.all(cut_log_mel_window(frames, 10, 12, -1.0) == -1.0)


def test_square_resize_crops_the_centre() -> None:
    wide = np.zeros((90, 160, 3), np.uint8)
    wide[:, 35:125] = 255  # the centre square is white, the sides black
    out = square_resize(wide, 45)
    assert out.shape == (45, 45, 3) and out.min() == 255
    assert to_model_input(out[None]).shape == (1, 3, 45, 45)
    with pytest.raises(ValueError, match=r"expected shape \(height, width, 3\) uint8, got \(4, 4\) uint8"):
        square_resize(np.zeros((4, 4), np.uint8), 2)


def test_decode_real_mp4(tiny_set: Path) -> None:
    path = next((tiny_set / "AVE").glob("*.mp4"))
    media = decode_media(path)
    assert media.frames.shape[1:] == (160, 160, 3) and media.frames.dtype == np.uint8
    assert abs(len(media.frames) - 250) <= 1
    assert np.allclose(np.diff(media.frame_times), 0.04, atol=1e-3)
    assert media.sample_rate == 16_000 and abs(len(media.audio) / 16_000 - 10.0) < 0.1
    assert np.abs(media.audio).max() > 0.01  # there is sound
    resized = decode_media(path, sample_rate=8_000, frame_transform=lambda f: square_resize(f, 64))
    assert resized.frames.shape[1:] == (64, 64, 3)
    assert abs(len(resized.audio) / 8_000 - 10.0) < 0.1  # resampled by PyAV


def test_bad_media_errors_name_the_file(tiny_set: Path, tmp_path: Path) -> None:
    path = next((tiny_set / "AVE").glob("*.mp4"))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(MediaError, match=r"truncated\.mp4"):
        decode_media(truncated)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(MediaError, match=r"notes\.mp4: cannot open media"):
        decode_media(text)
    with pytest.raises(MediaError, match="no such media file"):
        decode_media(tmp_path / "absent.mp4")


def test_ave_loader_reads_the_exact_format(tiny_set: Path) -> None:
    lines = (tiny_set / "Annotations.txt").read_text().splitlines()
    assert lines[0] == HEADER
    everything = load_ave(tiny_set)
    splits = {s: load_ave(tiny_set, s) for s in ("train", "val", "test")}
    ids = [v.video_id for s in splits.values() for v in s.videos]
    assert sorted(ids) == sorted(v.video_id for v in everything.videos) and len(set(ids)) == len(ids)
    category, video_id, _, start, end = lines[1].split("&")
    video = next(v for v in everything.videos if v.video_id == video_id)
    labels = everything.labels(video)
    index = everything.class_names.index(category)
    assert list(labels) == [index if int(start) <= s < int(end) else everything.background for s in range(10)]
    assert everything.class_verb_noun and len(everything.verbs) >= 2 and len(everything.nouns) >= 2


def test_ave_loader_errors(tiny_set: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_set, broken)
    lines = (broken / "Annotations.txt").read_text().splitlines()
    (broken / "Annotations.txt").write_text("\n".join([lines[0], lines[1], "Oops&only&three"]) + "\n")
    with pytest.raises(ValueError, match=r"Annotations.txt:3: expected 'Category&VideoID"):
        load_ave(broken)
    (broken / "Annotations.txt").write_text("\n".join(lines) + "\n")
    first_id = lines[1].split("&")[1]
    (broken / "AVE" / f"{first_id}.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=f"{first_id}.mp4: listed in Annotations.txt but missing"):
        load_ave(broken)
    with pytest.raises(FileNotFoundError, match="AVE-layout"):
        load_ave(tmp_path / "nowhere")


def test_prepared_steps_follow_the_timestamp_rules(tiny_set: Path, tmp_path: Path) -> None:
    config = get_config("avbind-xs")
    dataset = load_ave(tiny_set, "val")
    prepared = prepare_dataset(dataset, config, tmp_path / "cache", workers=1, progress=False)
    cached = prepare_dataset(dataset, config, tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("features-*/*/meta.json"))) == len(dataset.videos)  # once each
    video, again = prepared[0], cached[0]
    for name in ("frames", "log_mel", "window_first", "labels", "verbs", "nouns"):
        assert np.array_equal(getattr(video, name), getattr(again, name)), name
    media = decode_media(dataset.videos[0].path)
    steps = step_times(10.0, config.step_rate_hz)
    assert video.frames.shape == (len(steps), config.video.input_size, config.video.input_size, 3)
    # Step 7 (0.7 s) sees the frame shown at 0.68 s, resized exactly as the realtime path does.
    expected = square_resize(media.frames[frame_index_at(media.frame_times, steps[7])], config.video.input_size)
    assert np.array_equal(video.frames[7], expected)
    inputs = video.step_inputs(40, 45, config)
    assert inputs["log_mel"].shape == (5, config.audio.window_frames, config.features.n_mels)
    first, stop = log_mel_window_range(steps[40], config.features, config.audio.window_frames,
                                       config.audio.end_offset_s, media.audio_start)
    # float16 on disk: within half a float16 step of the float32 log-mel (|values| < 32: 0.008)
    np.testing.assert_allclose(inputs["log_mel"][0], log_mel(media.audio, config.features)[first:stop], atol=0.01)
    assert np.array_equal(video.labels, dataset.labels(dataset.videos[0])[video.step_segments])
    background = len(dataset.class_names)
    assert np.all((video.verbs == -100) == (video.labels == background))
