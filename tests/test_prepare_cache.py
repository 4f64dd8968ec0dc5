"""``avbind data prepare``: what the disk cache holds is what the whole-file decoder gives, a time
range decodes by seeking to the same steps, a killed run resumes, and memory does not grow with
a video's length."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from avbind_testing import avbind_exe

from avbind.models.config import get_config
from avbind.models.data.cache import clip_folder, prepare_clips, write_clip
from avbind.models.data.dataset import Clip
from avbind.models.data.steps import step_audio
from avbind.realtime.features.frames import square_resize
from avbind.realtime.sources.decode import decode_media
from avbind.realtime.sync.windows import frame_index_at, log_mel_window_range, step_times

CONFIG = get_config("avbind-xs")


def _video(path: Path, seconds: float, fps: str = "60000/1001", size: str = "320x180", tone: int = 440) -> Path:
    """A test pattern, and a tone that steps through eight pitches four times a second (so audio
    cut at the wrong place would not look right)."""
    sound = f"aevalsrc=0.5*sin(2*PI*t*({tone}+100*mod(floor(4*t)\\,8))):s=44100"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
                    "-f", "lavfi", "-i", sound, "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(path)], check=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    return _video(tmp_path_factory.mktemp("media") / "v.mp4", 12.0)


def test_cache_holds_what_the_whole_file_decoder_gives(clip_file: Path, tmp_path: Path) -> None:
    cached = write_clip(Clip("v", clip_file), CONFIG, tmp_path / "v")
    media = decode_media(clip_file, CONFIG.features.sample_rate,
                         lambda rgb: square_resize(rgb, CONFIG.video.input_size))
    times = step_times(media.duration, CONFIG.step_rate_hz)
    assert cached.steps == len(times) and cached.first_step == 0
    assert np.array_equal(cached.frames[:], media.frames[frame_index_at(media.frame_times, times)])
    mel, _ = step_audio(media, times, CONFIG)
    assert cached.log_mel.shape == mel.shape and cached.log_mel[:].dtype == np.float16
    np.testing.assert_allclose(cached.log_mel[:].astype(np.float32), mel, atol=0.01)  # float16 rounding only
    assert cached.audio_start == pytest.approx(media.audio_start)


def test_a_time_range_seeks_to_the_same_steps(clip_file: Path, tmp_path: Path) -> None:
    whole = write_clip(Clip("v", clip_file), CONFIG, tmp_path / "whole")
    part = write_clip(Clip("v", clip_file, 6.1, 9.0), CONFIG, tmp_path / "part")
    rate = CONFIG.step_rate_hz
    assert part.first_step == round(6.2 * rate) and part.steps == round(9.0 * rate) - part.first_step
    first = part.first_step
    assert np.array_equal(part.frames[:], whole.frames[first : first + part.steps])
    # The audio windows of those steps hear the same sound. The resampler restarts at the seek point,
    # so samples agree only up to a sub-sample phase (measured: ~0.3 log units in loud bins), while a
    # window 30 ms off is several times further (the pitch steps every 250 ms).
    w = CONFIG.audio.window_frames
    for k in range(first, first + part.steps, 3):
        a, b = (log_mel_window_range(k / rate, CONFIG.features, w, CONFIG.audio.end_offset_s, c.audio_start)[0]
                for c in (whole, part))
        y = part.log_mel[b : b + w].astype(np.float32)
        x, off = (whole.log_mel[a + s : a + s + w].astype(np.float32) for s in (0, 3))
        loud = x > np.log(CONFIG.features.log_floor) + 8
        near, far = np.abs(x - y)[loud].mean(), np.abs(off - y)[loud].mean()
        assert loud.mean() > 0.05 and near < 0.6 and far > 2 * near, (k, near, far)


def test_settings_are_in_the_key_and_labels_are_not(clip_file: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    bigger = replace(CONFIG, video=replace(CONFIG.video, input_size=128))
    clip = Clip("v", clip_file, 0.0, 4.0)
    assert clip_folder(tmp_path, clip, CONFIG) != clip_folder(tmp_path, clip, bigger)
    assert clip_folder(tmp_path, clip, CONFIG) != clip_folder(tmp_path, Clip("v", clip_file, 0.0, 5.0), CONFIG)
    # A clip id is a label-side name: two ids for one stretch of one file share one decode.
    ready, skipped = prepare_clips([clip, Clip("w", clip_file, 0.0, 4.0)], CONFIG, tmp_path, workers=1,
                                   progress=False)
    assert skipped == [] and ready["v"].folder == ready["w"].folder


def _ave_folder(root: Path, n: int) -> Path:
    """An AVE-layout folder of ``n`` 10 s clips (the train split)."""
    (root / "AVE").mkdir(parents=True)
    lines = ["Category&VideoID&Quality&StartTime&EndTime"]
    for i in range(n):
        _video(root / "AVE" / f"clip{i}.mp4", 10.0, "25", "160x120", 300 + 50 * i)
        lines.append(f"Bell&clip{i}&good&2&7")
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "trainSet.txt").write_text("\n".join(lines[1:]) + "\n")
    return root


def _finished(cache: Path) -> dict[str, int]:
    """Finished clip folders and their meta.json times. A ``*.part-PID`` folder may hold a meta.json
    too (written just before the rename that finishes it): a kill there leaves it unfinished."""
    return {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("features-*/*/meta.json")
            if ".part-" not in p.parent.name}


def test_a_killed_prepare_resumes_keeping_finished_videos(tmp_path: Path) -> None:
    data, cache = _ave_folder(tmp_path / "ave", 6), tmp_path / "cache"
    command = [avbind_exe(), "data", "prepare", "--data", str(data), "--split", "train", "--config", "avbind-xs",
               "--cache", str(cache), "--workers", "1", "--quiet"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _finished(cache) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = _finished(cache)
    assert finished, "the first video was not finished before the kill"
    if len(finished) == 6:
        pytest.skip("the whole set was prepared before the kill landed; nothing to resume")
    # A half-written folder of a killed run (this one may have died between videos: make sure).
    stale = next(cache.glob("features-*")) / "deadbeef.part-999999999"
    stale.mkdir(exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "6 videos prepared" in done.stdout and not list(cache.glob("features-*/*.part-*"))
    after = _finished(cache)
    assert len(after) == 6 and all(after[k] == v for k, v in finished.items())  # kept, not redone


_PEAK = """
import resource, sys
from avbind.models.config import get_config
from avbind.models.data.cache import write_clip
from avbind.models.data.dataset import Clip
from pathlib import Path
write_clip(Clip("v", Path(sys.argv[1])), get_config("avbind-xs"), Path(sys.argv[2]))
import resource
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_does_not_grow_with_the_video(tmp_path: Path) -> None:
    """Peak RSS preparing a 40 s 60 fps video is that of a 10 s one: nothing is kept per frame.

    (Kept as ``decode_media`` keeps them, the 40 s video's 2400 frames would add ~65 MB at 96 px.)
    """
    peaks = {}
    for seconds in (10, 40):
        path = _video(tmp_path / f"{seconds}.mp4", seconds, "60", "640x360")
        out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(tmp_path / f"c{seconds}")],
                             capture_output=True, text=True, timeout=600, check=True)
        peaks[seconds] = int(out.stdout.split()[-1]) / 1024  # MB (ru_maxrss is in kB on Linux)
    assert peaks[40] - peaks[10] < 30, peaks
    meta = json.loads((tmp_path / "c40" / "meta.json").read_text())
    assert meta["steps"] == 40 * CONFIG.step_rate_hz
