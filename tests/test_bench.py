"""`avbind bench` produces its figures and baselines (structure only: speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from avbind_testing import avbind_exe, calibrated_model  # noqa: E402

from avbind.export.onnx import export_model  # noqa: E402
from avbind.models.checkpoint import save_checkpoint  # noqa: E402
from avbind.models.config import get_config  # noqa: E402
from avbind.realtime.bench import format_bench, run_bench  # noqa: E402


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench")
    model = calibrated_model(get_config("avbind-xs"))
    export_model(model, folder / "xs.onnx")
    return folder / "xs.onnx", save_checkpoint(folder / "xs.pt", model)


def test_bench_reports_backends_and_baselines(small_model: tuple[Path, Path]) -> None:
    onnx_path, checkpoint = small_model
    report = run_bench(onnx_path, checkpoint=checkpoint, batches=(1, 2), steps=10)
    results = report["results"]
    assert [r["batch"] for r in results["onnxruntime fp32"]] == [1, 2]
    assert "baseline: sliding window (8 frames, onnxruntime fp32)" in results
    assert "baseline: pytorch eager fp32" in results
    for rows in results.values():
        for r in rows:
            assert 0 < r["p50_ms"] <= r["p99_ms"] and r["steps"] >= 10
    assert set(report["ratios_at_batch_1"]) == {"sliding_window_over_streaming", "pytorch_eager_over_onnxruntime"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert "p50" in format_bench(report)


def test_bench_command_writes_json(small_model: tuple[Path, Path], tmp_path: Path) -> None:
    onnx_path, _ = small_model
    out = tmp_path / "bench.json"
    from avbind.models.weights import default_onnx

    subprocess.run([avbind_exe(), "bench", "--model", str(onnx_path), "--no-torch", "--batch", "1", "--steps", "5",
                    "--compare", str(default_onnx()), "--engine-seconds", "0", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["model_name"] == "avbind-xs" and "onnxruntime fp32" in report["results"]
    # Another model timed in the same run, beside the first (figures compared, never asserted).
    label = "onnxruntime fp32: avbind-s at 128 px"
    assert [r["batch"] for r in report["results"][label]] == [1] and report["compared"][label]["streams"] >= 0
