"""``avbind bench``: per-step latency of each backend, against baselines measured in the same run.

Baselines: recomputing an 8-frame sliding window per step (how an offline clip model is run live:
every step re-processes the last 8 frames from a fresh state), and PyTorch eager. Figures are
wall-clock per step on this machine, reported with the machine's description; compare only
figures from the same run.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from avbind.realtime.backends import Backend, create_backend

SLIDING_WINDOW = 8  # frames an offline clip model re-processes per step when run live


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    import onnxruntime

    info = {"cpu": cpu, "cores": cores, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _inputs(backend: Backend, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shapes = backend.info.input_shapes(batch)
    return {
        "frame": rng.random(shapes["frame"], dtype=np.float32),
        "log_mel": (rng.standard_normal(shapes["log_mel"]) * 3 - 6).astype(np.float32),
        "modality_mask": np.ones(shapes["modality_mask"], np.float32),
    }


def _summary(seconds: list[float], batch: int) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "batch": batch, "steps": len(ms),
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
        "stream_steps_per_s": float(batch * 1000 / ms.mean()),
    }


def time_steps(backend: Backend, batch: int = 1, steps: int = 200, warmup: int = 20, seed: int = 0) -> dict:
    """Latency of one step call for ``batch`` streams, state carried as in streaming."""
    rng = np.random.default_rng(seed)
    inputs = _inputs(backend, batch, rng)
    state = backend.initial_state(batch)
    seconds = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        _, state = backend.step(inputs, state)
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
    return _summary(seconds, batch)


def time_sliding_window(backend: Backend, steps: int = 50, warmup: int = 5, window: int = SLIDING_WINDOW) -> dict:
    """Per-step cost of re-processing the last ``window`` frames from a fresh state (the baseline)."""
    rng = np.random.default_rng(1)
    frames = [_inputs(backend, 1, rng) for _ in range(window)]
    seconds = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        state = backend.initial_state(1)
        for inputs in frames:
            _, state = backend.step(inputs, state)
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
    return {**_summary(seconds, 1), "window": window}


def run_bench(
    model: str | Path, int8_model: str | Path | None = None, checkpoint: str | Path | None = None,
    batches: tuple[int, ...] = (1, 4), steps: int = 200, threads: int = 0, compare: tuple[str | Path, ...] = (),
) -> dict:
    """All figures of one run, as JSON-ready data; ``compare``: other fp32 models timed beside ``model``."""
    report: dict = {"machine": machine(), "model": str(model), "results": {}}
    options = {"intra_op_threads": threads}
    ort = create_backend(model, "onnxruntime", **options)
    report["model_name"] = ort.info.name
    report["input_size"] = ort.info.input_size
    report["backend"] = str(ort.describe())
    results = report["results"]
    results["onnxruntime fp32"] = [time_steps(ort, b, steps) for b in batches]
    results["baseline: sliding window (8 frames, onnxruntime fp32)"] = [time_sliding_window(ort, max(steps // 4, 10))]
    if int8_model:
        int8 = create_backend(int8_model, "onnxruntime", **options)
        results["onnxruntime int8"] = [time_steps(int8, b, steps) for b in batches]
    if checkpoint:
        torch_backend = create_backend(checkpoint, "torch", threads=threads)
        results["baseline: pytorch eager fp32"] = [time_steps(torch_backend, b, max(steps // 2, 20)) for b in batches]
    report["compared"] = {}
    for other_path in compare:
        other = create_backend(other_path, "onnxruntime", **options)
        label = f"onnxruntime fp32: {other.info.name} at {other.info.input_size} px"
        results[label] = [time_steps(other, b, steps) for b in batches]
        best_other = max(r["stream_steps_per_s"] for r in results[label])
        report["compared"][label] = {"model": str(other_path),
                                     "streams": int(best_other // other.info.step_rate_hz)}
    fp32 = results["onnxruntime fp32"][0]["p50_ms"]
    window = results["baseline: sliding window (8 frames, onnxruntime fp32)"][0]["p50_ms"]
    ratios = {"sliding_window_over_streaming": window / fp32}
    if "onnxruntime int8" in results:
        ratios["int8_over_fp32_latency"] = results["onnxruntime int8"][0]["p50_ms"] / fp32
    if "baseline: pytorch eager fp32" in results:
        ratios["pytorch_eager_over_onnxruntime"] = results["baseline: pytorch eager fp32"][0]["p50_ms"] / fp32
    report["ratios_at_batch_1"] = ratios
    step_rate = ort.info.step_rate_hz
    best = max(r["stream_steps_per_s"] for r in results["onnxruntime fp32"])
    # Inference only; decoding, features and publishing also cost CPU: the engine bench measures those.
    report["streams_inference_capacity"] = {"step_rate_hz": step_rate, "streams": int(best // step_rate)}
    return report


def format_bench(report: dict) -> str:
    m = report["machine"]
    lines = [f"{report['model_name']} ({report['input_size']} px) on {m['cpu']}, {m['cores']} cores; "
             f"{report['backend']}"]
    for name, rows in report["results"].items():
        for r in rows:
            lines.append(f"  {name:<52} batch {r['batch']}: p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                         f"  ({r['stream_steps_per_s']:.0f} stream-steps/s)")
    for name, value in report["ratios_at_batch_1"].items():
        lines.append(f"  {name}: {value:.2f}x")
    cap = report["streams_inference_capacity"]
    lines.append(f"  inference alone keeps up with {cap['streams']} streams at {cap['step_rate_hz']:.0f} steps/s")
    for label, other in report.get("compared", {}).items():
        lines.append(f"  {label}: inference alone keeps up with {other['streams']} streams")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))


# The whole engine: sources -> buffers -> sync -> scheduler -> backend -> post-processing -> ZeroMQ.
CAMERA_SIZE = (480, 640)  # (height, width) of the bench's camera-like streams
STREAM_FPS = 25  # frames per second of each bench stream


def write_bench_clip(path: str | Path, seconds: int = 10) -> Path:
    """An avsynth test clip as a 640x480 H.264/AAC file, decoded live like a camera stream would be."""
    import cv2

    from avbind.models.data.avsynth import SynthConfig, render_clip, write_mp4

    config = SynthConfig(duration_s=seconds)
    frames, audio, _ = render_clip(config, config.n_train + config.n_val)  # the first test clip
    h, w = CAMERA_SIZE
    canvas = np.zeros((len(frames), h, w, 3), np.uint8)
    left = (w - h) // 2
    for i, frame in enumerate(frames):
        canvas[i, :, left : left + h] = cv2.resize(frame, (h, h), interpolation=cv2.INTER_LINEAR)
    write_mp4(path, canvas, audio, config.fps, config.sample_rate)
    return Path(path)


def run_engine(backend: Backend, clip: str | Path, streams: int, seconds: float) -> dict:
    """``streams`` copies of ``clip`` played in real time through one engine for ``seconds``.

    Every step is published on the step topic and a real subscriber drains the socket, so the
    latency is from a frame's capture time to the publication of its step's result.
    """
    from avbind.realtime.engine import Engine, percentiles_ms
    from avbind.realtime.postprocess.stream_outputs import OutputSettings
    from avbind.realtime.publish.publisher import Publisher
    from avbind.realtime.publish.subscriber import Subscriber
    from avbind.realtime.scheduler.stream import StreamSettings
    from avbind.realtime.sources.media_stream import MediaStreamSource

    publisher = Publisher("tcp://127.0.0.1:*")
    subscriber = Subscriber(publisher.bound[0], types=("step", "segment", "status"))
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            subscriber.receive(0.05)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    engine = Engine(backend, publisher)
    settings = StreamSettings(outputs=OutputSettings(publish_steps=True))
    engine.start()
    started = time.monotonic()
    for i in range(streams):
        engine.add_stream(f"bench{i}", [MediaStreamSource(clip, speed=1.0)], settings)
    time.sleep(seconds)
    live = engine.streams
    engine.stop()
    stop.set()
    reader.join(2)
    subscriber.close()
    publisher.close()
    wall = time.monotonic() - started
    latencies = [x for s in live.values() for x in s.latencies]
    steps = sum(s.counters.steps for s in live.values())
    skipped = sum(s.counters.steps_skipped for s in live.values())
    expected = streams * seconds * backend.info.step_rate_hz
    degraded = sum(s.aligner.degraded_steps for s in live.values())
    return {
        "streams": streams, "seconds": round(wall, 2), "steps": steps, "steps_expected": int(expected),
        "steps_skipped": skipped, "degraded_steps": degraded, "latency_ms": percentiles_ms(latencies),
        "mean_batch": float(np.mean(engine.batch_sizes)) if engine.batch_sizes else 0.0,
        "messages_lost_by_subscriber": subscriber.missed,
    }


def held_real_time(run: dict, max_p99_ms: float) -> bool:
    """Whether a run kept up: no step skipped, (almost) every step run, latency bounded."""
    p99 = run["latency_ms"]["p99"]
    return (run["steps_skipped"] == 0 and run["steps"] >= 0.95 * run["steps_expected"]
            and p99 is not None and p99 <= max_p99_ms)


def run_engine_bench(
    model: str | Path, workdir: str | Path, seconds: float = 8.0, max_streams: int = 32, threads: int = 0,
    max_p99_ms: float = 100.0,
) -> dict:
    """End-to-end latency with one stream, then the most concurrent 25 fps streams held in real time."""
    backend = create_backend(model, "onnxruntime", intra_op_threads=threads)
    clip = write_bench_clip(Path(workdir) / "bench-camera.mp4", seconds=max(2, int(np.ceil(seconds)) + 1))
    single = run_engine(backend, clip, 1, seconds)
    runs, held = [single], 1 if held_real_time(single, max_p99_ms) else 0
    failed = max_streams + 1  # fewest streams seen not to hold
    n = 2
    while held and n < failed:  # double until a failure, then bisect between the last hold and it
        result = run_engine(backend, clip, n, seconds)
        runs.append(result)
        if held_real_time(result, max_p99_ms):
            held = n
        else:
            failed = n
        n = min(2 * n, max_streams) if failed > max_streams and n < max_streams else (held + failed) // 2
        if n <= held:
            break
    runs.sort(key=lambda r: r["streams"])
    return {
        "stream": f"{CAMERA_SIZE[1]}x{CAMERA_SIZE[0]} H.264 + AAC at {STREAM_FPS} fps, decoded live (PyAV)",
        "end_to_end_latency_ms": single["latency_ms"],
        "held_real_time_criterion": f"no skipped step, >= 95% of steps run, end-to-end p99 <= {max_p99_ms:g} ms",
        "concurrent_streams_held": held,
        "runs": runs,
    }


def format_engine_bench(report: dict) -> str:
    lat = report["end_to_end_latency_ms"]
    lines = [f"  engine, one stream ({report['stream']}): capture -> publish p50 {lat['p50']} ms, p99 {lat['p99']} ms"]
    for r in report["runs"]:
        lines.append(f"    {r['streams']:>3} streams: {r['steps']}/{r['steps_expected']} steps, {r['steps_skipped']} "
                     f"skipped, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
                     f"mean batch {r['mean_batch']:.1f}")
    lines.append(f"  concurrent 25 fps streams held in real time: {report['concurrent_streams_held']} "
                 f"({report['held_real_time_criterion']})")
    return "\n".join(lines)
