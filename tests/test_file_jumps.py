"""A file's timestamps, not its sample counts, keep its audio with its video; jumps are closed over.

Real parts: an MPEG-TS file made by ffmpeg, remuxed by PyAV with its second half's timestamps
moved 1000 s ahead (what a splice or a broken muxer leaves), played paced by the file source; and
parts joined by ``ffmpeg -f concat -c copy``, whose AAC audio overlaps itself by 60-80 ms at every
join (more samples than timeline), played as a file, decoded offline and served over HTTP.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from avbind_testing import free_port

from avbind.realtime.sources.base import CollectingSink
from avbind.realtime.sources.decode import decode_media, place_audio
from avbind.realtime.sources.media_stream import MediaStreamSource

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (apt ffmpeg)")


def _with_jump(source: Path, out: Path, jump_s: float, at_s: float,
               kinds: tuple[str, ...] = ("video", "audio")) -> None:
    with av.open(str(source)) as inp, av.open(str(out), "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux():
            if packet.dts is None or packet.size == 0:
                continue
            target = streams[packet.stream.index]
            if packet.stream.type in kinds and float(packet.dts * packet.time_base) >= at_s:
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


def _ts_clip(out: Path, seconds: float = 4.0) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=16000", "-t", str(seconds), "-c:v", "libx264", "-bf", "0",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts", str(out)], check=True, timeout=120)


def test_a_jump_in_a_files_audio_alone_is_closed_over(tmp_path: Path) -> None:
    plain, jumped = tmp_path / "plain.ts", tmp_path / "jumped.ts"
    _ts_clip(plain)
    _with_jump(plain, jumped, 30.0, at_s=2.0, kinds=("audio",))
    sink = CollectingSink()
    MediaStreamSource(jumped, speed=0).start(sink, time.monotonic())
    assert sink.ended.wait(60)
    assert any("audio timestamps jumped by +30" in s.message for s in sink.statuses), sink.statuses
    # Followed literally, the second half of the audio would sit 30 s after the video's end.
    audio, start = place_audio([(c.time, c.samples) for c in sink.audio], 16_000)
    assert abs(start + len(audio) / 16_000 - (sink.frames[-1].time + 0.1)) < 0.25
    offline = decode_media(jumped)
    assert abs(offline.audio_start + len(offline.audio) / 16_000 - (offline.frame_times[-1] + 0.1)) < 0.25
    assert any("audio timestamps jumped" in p for p in offline.problems)


PARTS = 8
PART_HZ = [300 + 100 * k for k in range(PARTS)]  # each part's tone, so where its audio lies can be heard


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 1 s mp4 parts joined with ``ffmpeg -f concat -c copy``: 8.7 s of samples over 8.06 s of timeline."""
    out = tmp_path_factory.mktemp("concat")
    for k, hz in enumerate(PART_HZ):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-t", "1", "-i", "testsrc=size=64x64:rate=10",
                        "-f", "lavfi", "-t", "1", "-i", f"sine=frequency={hz}:sample_rate=16000", "-c:v", "libx264",
                        "-bf", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out / f"part{k}.mp4")],
                       check=True, timeout=120)
    (out / "list.txt").write_text("".join(f"file part{k}.mp4\n" for k in range(PARTS)))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(out / "list.txt"), "-c", "copy",
                    str(out / "joined.mp4")], check=True, timeout=120)
    return out / "joined.mp4"


def _tone_per_part(frame_times: list[float], audio: np.ndarray, audio_start: float) -> list[int]:
    """The loudest frequency (Hz) of the audio around the middle frame of each part."""
    tones = []
    for k in range(PARTS):
        middle = frame_times[10 * k + 5]
        first = round((middle - 0.2 - audio_start) * 16_000)
        window = audio[first : first + 6400]  # 0.4 s: a 2.5 Hz resolution
        spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
        tones.append(round(float(np.argmax(spectrum)) * 16_000 / len(window)))
    return tones


def test_a_concatenated_files_audio_stays_with_its_video_live_and_offline(joined: Path) -> None:
    sink = CollectingSink()
    source = MediaStreamSource(joined, speed=0)
    source.start(sink, time.monotonic())
    assert sink.ended.wait(60)
    assert len(sink.frames) == 10 * PARTS
    audio, start = place_audio([(c.time, c.samples) for c in sink.audio], 16_000)  # as the engine's ring does
    # Counted in samples, the last part's tone would sit 0.5 s late: under the previous part's frames.
    assert _tone_per_part([f.time for f in sink.frames], audio, start) == PART_HZ
    assert source.counters.audio_resyncs >= PARTS - 1
    assert any("overlaps itself" in s.message and "realigned" in s.message for s in sink.statuses), sink.statuses
    assert not any(s.discontinuity for s in sink.statuses)  # sync held without resetting the model
    audio_end = start + len(audio) / 16_000
    assert abs(audio_end - (sink.frames[-1].time + 0.1)) < 0.1, audio_end

    offline = decode_media(joined)
    np.testing.assert_array_equal(offline.frame_times, [f.time for f in sink.frames])
    assert _tone_per_part(list(offline.frame_times), offline.audio, offline.audio_start) == PART_HZ
    assert len(offline.audio) == len(audio) and offline.audio_start == start
    assert any("realigned" in p for p in offline.problems)


def test_a_concatenated_stream_over_http_keeps_sync_without_resets(joined: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    server = subprocess.Popen(["ffmpeg", "-v", "error", "-i", str(joined), "-c", "copy", "-f", "mpegts",
                               "-listen", "1", url], stdin=subprocess.DEVNULL)
    try:
        sink = CollectingSink()
        source = MediaStreamSource(url, open_timeout_s=10, reconnect=False)
        deadline = time.monotonic() + 20
        while True:  # the server needs a moment before it listens
            source.start(sink, time.monotonic())
            assert sink.ended.wait(60)
            if sink.frames or time.monotonic() > deadline:
                break
            sink = CollectingSink()
            time.sleep(0.2)
            source = MediaStreamSource(url, open_timeout_s=10, reconnect=False)
        assert len(sink.frames) == 10 * PARTS, sink.statuses
        audio, start = place_audio([(c.time, c.samples) for c in sink.audio], 16_000)
        assert _tone_per_part([f.time for f in sink.frames], audio, start) == PART_HZ
        assert source.counters.audio_resyncs >= PARTS - 1
        assert not any(s.discontinuity for s in sink.statuses), sink.statuses  # a reset at every join before
    finally:
        server.kill()
        server.wait()
