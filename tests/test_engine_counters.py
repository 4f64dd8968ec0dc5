"""Honest counters: a drop is counted only when something was really dropped.

Real parts: a low-frame-rate H.264 file made by ffmpeg, paced by the file source, stepped by the
engine on the shipped model.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from avbind.models.weights import default_onnx
from avbind.realtime.backends import create_backend
from avbind.realtime.engine import Engine
from avbind.realtime.scheduler.stream import StreamSettings
from avbind.realtime.sources.media_stream import MediaStreamSource

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (apt ffmpeg)")

SECONDS = 10
SPEED = 2.0  # twice real time: 5 s of wall time


def test_a_low_frame_rate_file_is_not_counted_as_engine_lag(tmp_path: Path) -> None:
    """At 0.5 frame/s each frame serves ten steps; the frame is up to 2 s old when they can run.

    Those steps waited for nothing (their input was complete the moment the next frame came), so
    none may be skipped as engine lag. ``max_lag_s`` is 0.75 s of wall time, far above any wait on a loaded
    machine, while the shown frame's age reaches 2 s of stream time (1 s of wall time at 2x), so a
    skip rule that measured the frame's age would skip most steps.
    """
    path = tmp_path / "slow.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=128x128:rate=0.5", "-f", "lavfi",
         "-i", "sine=frequency=440:sample_rate=16000", "-t", str(SECONDS), "-c:v", "libx264", "-pix_fmt", "yuv420p",
         "-c:a", "aac", str(path)],
        check=True, timeout=120,
    )
    engine = Engine(create_backend(default_onnx()))
    engine.start()
    try:
        stream = engine.add_stream("slow", [MediaStreamSource(path, speed=SPEED)],
                                   StreamSettings(max_lag_s=0.75))
        assert engine.wait(timeout_s=120), "the stream did not end"
    finally:
        engine.stop()
    counters = stream.counters
    assert counters.steps_skipped == 0, stream.describe()
    # Every step of the video's timeline ran (the last frame at 8 s carries the steps up to it).
    assert counters.steps >= 8 * stream.rate, stream.describe()


def test_a_file_with_audio_interleaved_late_plays_in_sync(tmp_path: Path) -> None:
    """avsynth's own writer leaves the audio packets about a second behind the video in the file.

    Paced in packet order, each step's audio arrived a second after its frame and nearly every
    step ran degraded; paced by presentation time, both arrive together.
    """
    import av
    import numpy as np

    from avbind.models.data.avsynth import SynthConfig, render_clip, write_mp4

    config = SynthConfig()
    parts = [render_clip(config, 350 + i) for i in range(2)]
    path = tmp_path / "late_audio.mp4"
    write_mp4(path, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), config.fps,
              config.sample_rate)
    with av.open(str(path)) as container:  # precondition: the file really is interleaved late
        newest_video, lag = 0.0, 0.0
        for packet in container.demux():
            if packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if packet.stream.type == "video":
                newest_video = max(newest_video, t)
            else:
                lag = max(lag, newest_video - t)
    assert lag > 0.5, f"audio is only {lag:.2f} s behind video in the file: the test would prove nothing"

    engine = Engine(create_backend(default_onnx()))
    engine.start()
    try:
        stream = engine.add_stream("late", [MediaStreamSource(path, speed=SPEED)])
        assert engine.wait(timeout_s=120), "the stream did not end"
    finally:
        engine.stop()
    steps, degraded = stream.counters.steps, stream.aligner.degraded_steps
    assert steps + stream.counters.steps_skipped >= 19 * stream.rate, stream.describe()
    # A loaded machine may delay the source's thread past the audio wait now and then; a file
    # played in packet order degrades nearly every step.
    assert degraded <= 0.1 * steps, stream.describe()


def test_an_unknown_scheme_is_not_retried() -> None:
    """A typo in a URL's scheme cannot be fixed by waiting: one error, at once, and the source ends."""
    from avbind.realtime.sources.base import CollectingSink

    source = MediaStreamSource("rtps://127.0.0.1:8554/cam")  # rtsp mistyped; a network URL: reconnects by default
    sink = CollectingSink()
    source.start(sink, 0.0)
    assert sink.ended.wait(30), [s.message for s in sink.statuses]
    source.stop()
    assert [s.level for s in sink.statuses] == ["error"], [s.message for s in sink.statuses]
    assert "Protocol not found" in sink.statuses[0].message and "reconnect" not in sink.statuses[0].message


def test_a_source_that_is_down_is_published_as_reconnecting_and_given_up_on_time() -> None:
    """While a network source retries, status says ``reconnecting`` (not ``running``); ``give_up_s`` ends it."""
    from avbind_testing import free_port, messages_until_ended

    port = free_port()  # nothing listens: every attempt is refused
    source = MediaStreamSource(f"rtsp://127.0.0.1:{port}/cam", open_timeout_s=1, read_timeout_s=1, backoff_s=0.2,
                               max_backoff_s=0.4, give_up_s=3.0)
    messages = messages_until_ended("cam", [source], timeout_s=60)
    states = [m["state"] for m in messages if m["type"] == "status"]
    assert "reconnecting" in states and "running" not in states, states
    gave_up = [m["message"] for m in messages if m["type"] == "status" and "giving up" in m.get("message", "")]
    assert gave_up and "s of reconnect attempts" in gave_up[0], states


def test_audio_past_the_end_of_the_video_is_reported(tmp_path: Path) -> None:
    """Steps follow the video; audio that runs on after the last frame is said to be unheard, not dropped silently."""
    path = tmp_path / "long_audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x96:rate=10:duration=2", "-f", "lavfi",
         "-i", "sine=frequency=440:sample_rate=16000:duration=5", "-c:v", "libx264", "-pix_fmt", "yuv420p",
         "-c:a", "aac", str(path)],
        check=True, timeout=120,
    )
    engine = Engine(create_backend(default_onnx()))
    messages: list[dict] = []
    engine.listeners.append(messages.append)
    engine.start()
    try:
        engine.add_stream("tail", [MediaStreamSource(path, speed=0)])
        assert engine.wait(timeout_s=120), "the stream did not end"
    finally:
        engine.stop()
    (ended,) = [m for m in messages if m["type"] == "status" and m["state"] == "ended"]
    assert ended["level"] == "warning" and "audio after the video's last frame" in ended["message"], ended
    shown = float(ended["message"].split("; ")[1].split(" s ")[0])
    assert 2.5 <= shown <= 3.5, ended["message"]  # 5 s of audio, 2 s of video


def test_decode_that_cannot_keep_up_drops_late_frames_and_counts_them(tmp_path: Path) -> None:
    """A 4K file asked to play at 16x (480 frames/s of 4K) cannot be decoded in time on any machine
    this runs on: late frames are dropped and counted, and the file still ends about on time.
    The same file unpaced (the control) delivers every frame and drops none."""
    from avbind.realtime.sources.base import CollectingSink

    path = tmp_path / "huge.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=3840x2160:rate=30", "-t", "2",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, timeout=300)
    control = CollectingSink()
    MediaStreamSource(path, speed=0).start(control, 0.0)
    assert control.ended.wait(300)
    assert len(control.frames) == 60

    paced = CollectingSink()
    source = MediaStreamSource(path, speed=16.0)
    import time

    source.start(paced, time.monotonic())
    assert paced.ended.wait(300)
    assert source.counters.frames_dropped > 0
    assert len(paced.frames) + source.counters.frames_dropped == 60
    assert any("late video frames dropped" in s.message for s in paced.statuses)
