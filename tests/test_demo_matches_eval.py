"""``avbind demo``'s live synthetic stream must be what ``avbind eval`` scores: same decoded media, fresh
state per clip, same segments. Otherwise the demo's accuracy measures the source, not the model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from avbind.models.config import ModelConfig
from avbind.models.data.ave import AveVideo
from avbind.models.data.avsynth import CLASS_NAMES, render_clip, write_mp4
from avbind.models.data.steps import prepare_video
from avbind.models.evaluation import run_stream, segment_predictions
from avbind.models.weights import default_onnx
from avbind.realtime.backends import create_backend
from avbind.realtime.engine import Engine
from avbind.realtime.postprocess.stream_outputs import softmax
from avbind.realtime.scheduler.stream import StreamSettings
from avbind.realtime.sources.synthetic import SyntheticSource
from avbind.realtime.views.terminal import WIDTH, TerminalView

CLIPS = 4


def _offline(source: SyntheticSource, backend, tmp_path: Path) -> dict[int, int]:
    """Per stream segment, the class the streaming evaluator predicts for the same clips as mp4 files."""
    config = ModelConfig.from_dict(backend.info.config)
    predictions = {}
    for clip in range(CLIPS):
        frames, audio, annotation = render_clip(source.config, source.dataset_index(clip))
        path = tmp_path / f"clip{clip}.mp4"
        write_mp4(path, frames, audio, source.fps, source.sample_rate, source.config.crf, source.config.preset)
        segments = source.segments_per_clip
        video = AveVideo(f"clip{clip}", "x", path, tuple(annotation.events), duration_s=segments)
        prepared = prepare_video(video, np.zeros(segments, np.int64), config)
        out = run_stream(backend, prepared, (1.0, 1.0))
        pred = segment_predictions(softmax(out["event_logits"]), prepared.step_segments, segments)
        predictions.update({clip * segments + i: int(p) for i, p in enumerate(pred)})
    return predictions


def test_live_synthetic_segments_match_streaming_eval(tmp_path: Path) -> None:
    backend = create_backend(default_onnx())
    source = SyntheticSource(seed=2026, speed=4.0, clips=CLIPS)
    engine = Engine(backend)
    messages: list[dict] = []
    lock = threading.Lock()

    def keep(message: dict) -> None:
        with lock:
            messages.append(message)

    engine.listeners.append(keep)
    engine.start()
    try:
        engine.add_stream("demo", [source], StreamSettings(audio_wait_s=60, max_lag_s=60))
        assert engine.wait(60), "the synthetic stream did not end"
    finally:
        engine.stop()
    live = {m["segment"]: m["class_index"] for m in messages if m["type"] == "segment"}
    offline = _offline(source, backend, tmp_path)
    assert set(live) == set(offline), f"segments differ: live {sorted(live)}"
    agree = sum(live[k] == offline[k] for k in offline) / len(offline)
    assert agree >= 0.95, f"live and eval agree on {agree:.0%} of segments: {live} vs {offline}"

    view = TerminalView(subscriber=None, truth=source.truth, class_names=[*CLASS_NAMES, "background"])  # type: ignore[arg-type]
    lines = [view.line(m) for m in messages]
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    segment_lines = [line for line, m in zip(lines, messages, strict=True) if m["type"] == "segment"]
    assert all("truth: " in line and line.endswith((" ok", " XX")) for line in segment_lines)
    long = {**next(m for m in messages if m["type"] == "segment"), "label": "x" * 300}
    assert len(view.line(long)) <= WIDTH
