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
    batches: tuple[int, ...] = (1, 4), steps: int = 200, threads: int = 0,
) -> dict:
    """All figures of one run, as JSON-ready data."""
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
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
