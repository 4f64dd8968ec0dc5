"""A file's timeline starts where its video starts, whatever the container's clock says.

MPEG-TS files typically start their clocks at 1.4 s; the same content in mp4 starts at 0. Live
(the file source) and offline (``decode_media``, used by eval and training) must both count from
the video's start, or every segment straddles two seconds of content.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from avbind.realtime.sources.base import CollectingSink
from avbind.realtime.sources.decode import decode_media
from avbind.realtime.sources.media_stream import MediaStreamSource

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (apt ffmpeg)")


def _drain(path: Path) -> CollectingSink:
    sink = CollectingSink()
    MediaStreamSource(path, speed=0).start(sink, 0.0)
    assert sink.ended.wait(60), "the file source did not end"
    return sink


def test_mpegts_and_mp4_of_the_same_content_share_one_timeline(tmp_path: Path) -> None:
    mp4, ts = tmp_path / "clip.mp4", tmp_path / "clip.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=16000", "-t", "3", "-c:v", "libx264", "-bf", "0",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(mp4)], check=True, timeout=120)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-c", "copy", "-f", "mpegts", str(ts)],
                   check=True, timeout=120)
    import av

    with av.open(str(ts)) as container:  # precondition: the TS clock does not start at 0
        assert float(container.streams.video[0].start_time * container.streams.video[0].time_base) > 0.5

    live_mp4, live_ts = _drain(mp4), _drain(ts)
    times_mp4 = np.array([f.time for f in live_mp4.frames])
    times_ts = np.array([f.time for f in live_ts.frames])
    assert len(times_mp4) == len(times_ts) == 30
    np.testing.assert_allclose(times_ts, times_mp4, atol=1e-3)
    assert times_ts[0] == pytest.approx(0.0, abs=1e-3)
    # Audio lands at the same place on both timelines (within one AAC frame of priming).
    assert live_ts.audio[0].time == pytest.approx(live_mp4.audio[0].time, abs=0.07)

    offline_mp4, offline_ts = decode_media(mp4), decode_media(ts)
    np.testing.assert_allclose(offline_ts.frame_times, offline_mp4.frame_times, atol=1e-3)
    np.testing.assert_allclose(offline_ts.frame_times, times_ts, atol=1e-3)  # live == offline
    assert offline_ts.audio_start == pytest.approx(offline_mp4.audio_start, abs=0.07)
