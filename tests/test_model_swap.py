"""Hot model swap: a running engine takes another model between two steps and keeps everything else.

The models are the shipped one and two real ONNX files made from it: one with another, shorter
class list (its event head keeps 8 of the 10 classes' rows, in reverse order, under new names) and
one whose log-mel settings differ, which must be refused because the streams' features no longer
fit it. Messages are checked as a real ZeroMQ subscriber receives them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from avbind_testing import avbind_exe, free_port, wait_for  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from avbind.models.weights import default_onnx  # noqa: E402
from avbind.realtime.backends import create_backend, read_model_info  # noqa: E402
from avbind.realtime.engine import Engine  # noqa: E402
from avbind.realtime.model_swap import swap_problems  # noqa: E402
from avbind.realtime.publish.messages import schema  # noqa: E402
from avbind.realtime.publish.publisher import Publisher  # noqa: E402
from avbind.realtime.publish.subscriber import Subscriber  # noqa: E402
from avbind.realtime.scheduler.stream import StreamSettings  # noqa: E402
from avbind.realtime.sources.base import AudioChunk, Source, SourceSink, VideoFrame  # noqa: E402

VALIDATOR = jsonschema.Draft202012Validator(schema())
NEW_CLASSES = [f"new class {i}" for i in range(8)]
KEPT_ROWS = [7, 6, 5, 4, 3, 2, 1, 0, 10]  # event head rows of the new model; 10 is background
# No skipped or degraded steps however loaded the machine: the checks must not depend on timing.
PATIENT = StreamSettings(audio_wait_s=60.0, max_lag_s=60.0)


def _edited(folder: Path, name: str, model_name: str, classes: list[str] | None = None,
            f_max: float | None = None) -> Path:
    """The shipped model as another model: its name, and its class list or log-mel f_max changed."""
    model = onnx.load(str(default_onnx()))
    meta = {p.key: p.value for p in model.metadata_props}
    config = json.loads(meta["avbind.config"])
    config["name"] = model_name
    if classes is not None:
        gemm = next(n for n in model.graph.node if "event_logits" in n.output)
        for tensor in model.graph.initializer:
            if tensor.name in gemm.input[1:]:  # the event head's weight (11, D) and bias (11,)
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[KEPT_ROWS], tensor.name))
        output = next(o for o in model.graph.output if o.name == "event_logits")
        output.type.tensor_type.shape.dim[1].dim_value = len(KEPT_ROWS)
        meta["avbind.class_names"] = json.dumps(classes)
        config["heads"]["num_classes"] = len(classes)
    if f_max is not None:
        features = json.loads(meta["avbind.features"])
        features["f_max"] = config["features"]["f_max"] = f_max
        meta["avbind.features"] = json.dumps(features, sort_keys=True)
    meta["avbind.config"] = json.dumps(config, sort_keys=True)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    path = folder / name
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("swap")
    return {
        "old": default_onnx(),
        "new": _edited(folder, "retrained.onnx", "avbind-s-retrained", classes=NEW_CLASSES),
        "unfit": _edited(folder, "other-features.onnx", "avbind-s-7k", f_max=7000.0),
    }


class _PatternSource(Source):
    """A moving picture and a tone at twice real time until stopped: cheap, so 3 streams fit 2 cores."""

    has_video = True
    has_audio = True
    speed = 2.0

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.name = f"pattern {seed}"
        self.seed = seed

    def _serve(self, sink: SourceSink, origin: float) -> None:
        rng = np.random.default_rng(self.seed)
        base = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
        fps, rate, chunk = 10, 16_000, 320  # 20 ms chunks
        frame_i = sample_i = 0
        while not self._stop.is_set():
            t_video, t_audio = frame_i / fps, sample_i / rate
            t = min(t_video, t_audio)
            due = origin + t / self.speed
            if (wait := due - time.monotonic()) > 0:
                self._stop.wait(wait)
            if t_video <= t_audio:
                sink.on_video(VideoFrame(np.roll(base, 4 * frame_i, axis=1), t_video, max(due, origin)))
                frame_i += 1
            else:
                n = np.arange(sample_i, sample_i + chunk)
                tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * self.seed) * n / rate)
                sink.on_audio(AudioChunk(tone.astype(np.float32), t_audio, time.monotonic()))
                sample_i += chunk


class _Collector:
    """Everything a real subscriber receives, in order, from a background thread."""

    def __init__(self, endpoint: str) -> None:
        self.subscriber = Subscriber(endpoint, types=("segment", "event", "status"))
        self.messages: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            received = self.subscriber.receive(0.05)
            if received is not None:
                self.messages.append(received.message)

    def of(self, stream: str, kind: str | None = None) -> list[dict]:
        return [m for m in list(self.messages) if m["stream"] == stream and (kind is None or m["type"] == kind)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.subscriber.close()


def _connect(publisher: Publisher, collector: _Collector) -> None:
    """ZeroMQ's slow joiner: publish on a probe stream until the subscriber hears it."""
    probe = {"state": "starting", "level": "info", "message": "probe", "backend": "-", "fps": 0.0, "steps": 0,
             "steps_per_s": 0.0, "latency_ms": {"p50": None, "p99": None}, "sources": [],
             "drops": {k: 0 for k in ("steps_skipped", "frames_evicted", "audio_overflows", "audio_overwritten",
                                      "audio_underruns", "degraded_steps", "resets")}}
    for _ in range(500):
        publisher.publish("probe", "status", probe, time.monotonic())
        if wait_for(lambda: collector.of("probe"), 0.02, poll_s=0.005):
            return
    raise AssertionError("subscriber never connected")


def _after(messages: list[dict], marker: dict) -> list[dict]:
    return messages[messages.index(marker) + 1:]


def _labels(segment: dict) -> set[str]:
    return {segment["label"], *(s["label"] for s in segment["top"])}


def test_swap_while_three_streams_run_loses_nothing_and_a_refused_model_leaves_the_old_one(models) -> None:
    old_names = set(read_model_info(models["old"]).event_names)
    new_names = {*NEW_CLASSES, "background"}
    streams = ("cam0", "cam1", "cam2")
    publisher = Publisher(f"tcp://127.0.0.1:{free_port()}")
    collector = _Collector(publisher.bound[0])
    engine = Engine(create_backend(models["old"], intra_op_threads=1), publisher)
    closed: list[bool] = []
    engine.backend.close = lambda: closed.append(True)  # the old backend must be closed once out of use
    try:
        _connect(publisher, collector)
        engine.start()
        for i, name in enumerate(streams):
            engine.add_stream(name, [_PatternSource(i)], PATIENT)
        assert wait_for(lambda: all(len(collector.of(s, "segment")) >= 2 for s in streams), 60)

        swap = engine.swap_model(models["new"])
        assert swap.name == "avbind-s-retrained" and list(swap.classes) == [*NEW_CLASSES, "background"]
        assert swap.streams == 3 and engine.backend.info.name == "avbind-s-retrained"
        assert publisher.model["model"] == "avbind-s-retrained" and publisher.model["classes"][0] == "new class 0"

        def swapped(s: str) -> dict | None:
            return next((m for m in collector.of(s, "status") if m["message"].startswith("model swapped")), None)

        assert closed == [True]
        assert wait_for(lambda: all(swapped(s) for s in streams), 30)
        assert wait_for(lambda: all(sum(m["type"] == "segment" for m in _after(collector.of(s), swapped(s))) >= 3
                                    for s in streams), 60)

        with pytest.raises(ValueError, match="f_max 7000, the running model uses 8000"):
            engine.swap_model(models["unfit"])
        assert engine.backend.info.name == "avbind-s-retrained"  # the running model stayed

        def refused(s: str) -> dict | None:
            return next((m for m in collector.of(s, "status") if "swap refused" in m["message"]), None)

        assert wait_for(lambda: all(refused(s) and sum(m["type"] == "segment" for m in _after(collector.of(s),
                                                                                                 refused(s))) >= 2
                                    for s in streams), 60)
        with pytest.raises(ValueError, match="cannot open"):
            engine.swap_model(models["new"].parent / "missing.onnx")
        steps_before_stop = {s: engine.streams[s].counters.steps for s in streams}
    finally:
        engine.stop()
        wait_for(lambda: all(any(m["state"] == "ended" for m in collector.of(s, "status")) for s in streams), 30)
        collector.close()
        publisher.close()

    for s in streams:
        messages = collector.of(s)
        for kind in ("segment", "event", "status"):
            seqs = [m["seq"] for m in messages if m["type"] == kind]
            assert seqs == list(range(len(seqs))), f"{s} {kind}: seq gaps or losses {seqs}"
        assert messages[-1]["type"] == "status" and messages[-1]["state"] == "ended"
        for m in messages:
            VALIDATOR.validate(m)
        # no step failed: the only errors are the two refusals, which say what still runs
        errors = [m for m in messages if m["type"] == "status" and m["level"] == "error"]
        assert len(errors) == 2 and "f_max" in errors[0]["message"] and "cannot open" in errors[1]["message"]
        assert all(m["model"]["name"] == "avbind-s-retrained" for m in errors), errors
        assert all("still running avbind-s-retrained" in m["message"] for m in errors)
        swap_status = swapped(s)
        assert swap_status["level"] == "info" and swap_status["model"]["classes"] == [*NEW_CLASSES, "background"]
        assert swap_status["message"] == f"model swapped: avbind-s-retrained; classes: {', '.join(NEW_CLASSES)}; " \
                                         "state reset"
        assert swap_status["drops"]["resets"] == 1
        before = messages[: messages.index(swap_status)]
        after = _after(messages, swap_status)
        assert all(_labels(m) <= old_names for m in before if m["type"] == "segment")
        assert all(_labels(m) <= new_names for m in after if m["type"] == "segment")
        assert all(m["label"] in new_names for m in after if m["type"] == "event")
        # every event that started also ended, under the label it started with, and ids stay unique
        starts = {m["event_id"]: m["label"] for m in messages if m["type"] == "event" and m["event"] == "start"}
        ends = {m["event_id"]: m["label"] for m in messages if m["type"] == "event" and m["event"] == "end"}
        assert starts == ends
        assert len(starts) == sum(m["type"] == "event" and m["event"] == "start" for m in messages)
        # steps went on through both: the segments after the refusal came from the new model's steps
        assert steps_before_stop[s] > swap_status["steps"]


def test_swap_problems_name_every_input_that_differs(models) -> None:
    from dataclasses import replace

    running = read_model_info(models["old"])
    assert swap_problems(running, read_model_info(models["new"])) == []
    config = json.loads(json.dumps(running.config))
    config["video"]["input_size"] = 160
    config["step_rate_hz"] = 10.0
    problems = swap_problems(running, replace(running, config=config))
    assert problems == ["input size 160 px, the running model takes 128 px",
                        "step rate 10 Hz, the running model steps at 5 Hz"]


def test_run_watch_model_swaps_when_the_file_is_replaced(models, tmp_path: Path) -> None:
    watched = tmp_path / "model.onnx"
    watched.write_bytes(models["old"].read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    collector = _Collector(endpoint)
    run = subprocess.Popen([avbind_exe(), "run", "--model", str(watched), "--watch-model", "--video", "synthetic",
                            "--speed", "2", "--publish", endpoint, "--quiet", "--threads", "1", "--seconds", "600"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def replace_with(source: Path) -> None:  # the documented way: write beside it, then rename over it
        partial = tmp_path / "model.onnx.partial"
        partial.write_bytes(source.read_bytes())
        os.replace(partial, watched)

    def status_with(text: str) -> dict | None:
        return next((m for m in collector.of("stream0", "status") if text in m["message"]), None)

    try:
        assert wait_for(lambda: collector.of("stream0", "segment"), 90), "the run never published a segment"
        replace_with(models["new"])
        assert wait_for(lambda: status_with("model swapped: avbind-s-retrained"), 30)
        # a file rewritten in place and cut short: refused, the running model stays
        watched.write_bytes(models["old"].read_bytes()[:100_000])
        assert wait_for(lambda: status_with("cannot open"), 30)
        replace_with(models["unfit"])
        assert wait_for(lambda: status_with("f_max 7000"), 30)
        refused = status_with("f_max 7000")
        assert wait_for(lambda: sum(m["type"] == "segment" for m in _after(collector.of("stream0"), refused)) >= 2, 60)
    finally:
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        collector.close()
    assert run.returncode == 130, err
    assert "model swapped to avbind-s-retrained" in err and "the old model keeps running" in err
    assert "stream0: ok" in err, err  # a refused model is not a failed stream
    messages = collector.of("stream0")
    after = _after(messages, status_with("model swapped: avbind-s-retrained"))
    segments = [m for m in after if m["type"] == "segment"]
    assert segments and all(_labels(m) <= {*NEW_CLASSES, "background"} for m in segments)
    for kind in ("segment", "status"):
        seqs = [m["seq"] for m in messages if m["type"] == kind]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{kind}: {seqs}"
