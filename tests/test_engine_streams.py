"""Engine behaviour with several streams, and the commands built on it (demo, listen, run, live's view)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from avbind_testing import avbind_exe, free_port, wait_for

from avbind.models.weights import default_onnx
from avbind.realtime.backends import create_backend
from avbind.realtime.engine import Engine, EngineSettings
from avbind.realtime.publish.messages import schema
from avbind.realtime.scheduler.stream import StreamSettings
from avbind.realtime.sources.synthetic import SyntheticSource

VALIDATOR = jsonschema.Draft202012Validator(schema())



def _segments(messages: list[dict], name: str) -> list[tuple[int, int, float]]:
    return [(m["segment"], m["class_index"], m["confidence"]) for m in messages
            if m["stream"] == name and m["type"] == "segment"]


# Correctness must not depend on timing: on a loaded machine a step may otherwise run with late
# audio (degraded) or be skipped, and batched and alone would differ for reasons unrelated to
# batching. Waiting for complete input makes both runs see exactly the same steps.
EXACT = StreamSettings(audio_wait_s=60.0, max_lag_s=60.0)


def test_streams_share_one_backend_batch_and_keep_their_own_state() -> None:
    """Two streams of the same content, batched together, predict what one stream alone predicts; a
    third stream joins late and is removed while the engine runs."""
    alone_engine = Engine(create_backend(default_onnx()))
    alone: list[dict] = []
    alone_engine.listeners.append(alone.append)
    alone_engine.start()
    try:
        alone_engine.add_stream("a", [SyntheticSource(seed=7, clips=1, speed=4)], EXACT)
        assert alone_engine.wait(30)
    finally:
        alone_engine.stop()
    assert max(alone_engine.batch_sizes) == 1

    # Steps of the two streams fall due within a millisecond or so: a short batching window makes
    # them share calls (without one they usually do too, but only by the luck of thread timing).
    engine = Engine(create_backend(default_onnx()), settings=EngineSettings(batch_wait_s=0.05))
    messages: list[dict] = []
    engine.listeners.append(messages.append)
    engine.start()
    try:
        engine.add_stream("a", [SyntheticSource(seed=7, clips=1, speed=4)], EXACT)
        engine.add_stream("b", [SyntheticSource(seed=7, clips=1, speed=4)], EXACT)
        assert wait_for(lambda: engine.streams["a"].counters.steps >= 10, 20)
        late = engine.add_stream("late", [SyntheticSource(seed=8, speed=4)])
        assert wait_for(lambda: late.counters.steps >= 10, 20)
        engine.remove_stream("late")
        assert engine.wait(30), "finite streams did not end"
    finally:
        engine.stop()
    assert max(engine.batch_sizes) >= 2  # due steps of several streams went into one call

    reference = _segments(alone, "a")
    assert len(reference) == 10
    for name in ("a", "b"):
        batched = _segments(messages, name)
        assert [x[:2] for x in batched] == [x[:2] for x in reference]
        np.testing.assert_allclose([x[2] for x in batched], [x[2] for x in reference], atol=1e-4)
    ended = [m for m in messages if m["stream"] == "late" and m["type"] == "status" and m["state"] == "ended"]
    assert ended and "removed" in ended[0]["message"]
    assert engine.finished_streams["a"].counters.steps == 50
    for message in messages:
        assert message["type"] in ("segment", "event", "status")




@pytest.mark.slow
def test_demo_command_publishes_valid_messages_and_summarises(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    summary = tmp_path / "demo.json"
    demo = subprocess.Popen(
        [avbind_exe(), "demo", "--seconds", "20", "--speed", "4", "--publish", endpoint, "--json", str(summary)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listen = subprocess.run([avbind_exe(), "listen", endpoint, "--json", "--count", "8", "--seconds", "30"],
                            capture_output=True, text=True, timeout=60)
    out, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, out
    assert "summary" in out and "accuracy against the synthetic ground truth" in out
    received = [json.loads(line) for line in listen.stdout.splitlines() if line.startswith("{")]
    assert len(received) == 8, listen.stdout + listen.stderr
    for message in received:
        VALIDATOR.validate(message)
    report = json.loads(summary.read_text())
    assert report["segments"] >= 18 and report["steps"] >= 95
    assert report["segment_accuracy"] is not None and report["messages_lost"] == 0
    assert report["latency_ms"]["p50"] > 0


def test_run_command_with_a_missing_file_reports_and_ends(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = subprocess.run([avbind_exe(), "run", "--video", str(tmp_path / "nope.mp4"), "--publish", endpoint,
                             "--seconds", "20"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr  # every source failed: the run failed
    assert "status error" in result.stdout and "nope.mp4: no such media file" in result.stdout
    assert "status ended" in result.stdout  # the stream ended on its own, long before --seconds


def test_run_command_rejects_a_source_without_the_asked_modality() -> None:
    result = subprocess.run([avbind_exe(), "run", "--audio", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "has no audio" in result.stderr


def test_overlay_draws_scores_timeline_and_level_and_live_falls_back_without_display() -> None:
    from avbind.realtime.views.overlay import OverlayView, display_available

    engine = Engine(create_backend(default_onnx()))
    engine.start()
    try:
        stream = engine.add_stream("v", [SyntheticSource(seed=3, speed=4)])
        overlay = OverlayView(stream)
        engine.listeners.append(overlay.on_message)
        blank = overlay.render()
        assert wait_for(lambda: stream.counters.steps >= 10, 20)
        overlay.on_message({"stream": "v", "type": "event", "event": "start", "event_id": 0, "class_index": 1,
                            "start": 0.4})
        image = overlay.render()
    finally:
        engine.stop()
    assert image.ndim == 3 and image.shape[1] == 640 and image.dtype == np.uint8
    panel = image[-150:]
    assert panel[:60, 10:130].max() > 100  # score bars were drawn
    assert panel[97:123, 10:630].std() > 5  # the event timeline has a bar
    assert not np.array_equal(image[:-150], np.zeros_like(image[:-150]))  # the camera picture is shown
    assert blank.shape[1] == 640
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    probe = subprocess.run([sys.executable, "-c", "from avbind.realtime.views.overlay import display_available as d;"
                            "print(d())"], capture_output=True, text=True, env=env, timeout=60)
    assert probe.stdout.strip() == "False"
    assert display_available() in (True, False)
