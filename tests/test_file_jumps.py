"""A timestamp jump inside a file is reported and closed over, not waited out.

Real parts: an MPEG-TS file made by ffmpeg, remuxed by PyAV with its second half's timestamps
moved 1000 s ahead (what a splice or a broken muxer leaves), played paced by the file source.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from pathlib import Path

import av
import pytest

from avbind.realtime.sources.base import CollectingSink
from avbind.realtime.sources.media_stream import MediaStreamSource

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (apt ffmpeg)")


def _with_jump(source: Path, out: Path, jump_s: float, at_s: float) -> None:
    with av.open(str(source)) as inp, av.open(str(out), "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux():
            if packet.dts is None or packet.size == 0:
                continue
            target = streams[packet.stream.index]
            if float(packet.dts * packet.time_base) >= at_s:
                shift = round(jump_s / packet.time_base)
                packet.pts += shift
                packet.dts += shift
            packet.stream = target
            dst.mux(packet)


@pytest.mark.parametrize("jump_s", [1000.0, 20.0])
def test_a_jump_forward_in_a_file_is_reported_and_the_timeline_stays_whole(tmp_path: Path, jump_s: float) -> None:
    plain, jumped = tmp_path / "plain.ts", tmp_path / "jumped.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=16000", "-t", "4", "-c:v", "libx264", "-bf", "0",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts", str(plain)], check=True, timeout=120)
    _with_jump(plain, jumped, jump_s, at_s=3.0)

    sink = CollectingSink()
    started = time.monotonic()
    MediaStreamSource(jumped, speed=4.0).start(sink, started)
    # 4 s at 4x: about 1 s of wall time. Waiting out the jump would take jump_s / 4 (250 s or 5 s).
    assert sink.ended.wait(60), "the source did not end: it waited out the jump"
    messages = [s.message for s in sink.statuses]
    assert any("jumped by +" in m for m in messages), messages
    times = [f.time for f in sink.frames]
    assert len(times) == 40
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.15 and min(gaps) > 0.05, gaps  # one frame every 0.1 s across the jump
    # The audio's timeline (counted in samples) and the video's end together, as in the file before the jump.
    audio_end = sink.audio[-1].time + len(sink.audio[-1].samples) / 16_000
    assert abs(audio_end - (times[-1] + 0.1)) < 0.25, (audio_end, times[-1])
