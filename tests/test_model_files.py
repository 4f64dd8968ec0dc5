"""Bad model files fail at load with one line naming the problem, not at every step.

Each bad file is the shipped model with one thing changed (metadata, or a deleted external-data
file), so the tests exercise exactly the check that should catch it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from avbind_testing import free_port  # noqa: E402

from avbind.models.weights import default_onnx  # noqa: E402
from avbind.realtime.backends import create_backend  # noqa: E402


def _avbind() -> str:
    script = Path(sys.executable).parent / "avbind"
    found = str(script) if script.is_file() else shutil.which("avbind")
    if found is None:
        pytest.skip("the avbind console script is not installed")
    return found


def _edit_metadata(tmp_path: Path, name: str, edit: Callable[[dict[str, str]], None]) -> Path:
    """The shipped model with its avbind metadata changed by ``edit`` (a dict of key -> value)."""
    model = onnx.load(str(default_onnx()))
    metadata = {p.key: p.value for p in model.metadata_props}
    edit(metadata)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def _set_config(key: str, value: object, sub: str | None = None) -> Callable[[dict[str, str]], None]:
    def edit(metadata: dict[str, str]) -> None:
        config = json.loads(metadata["avbind.config"])
        (config[sub] if sub else config)[key] = value
        metadata["avbind.config"] = json.dumps(config, sort_keys=True)
        flat = {"input_size": "input_size", "step_rate_hz": "step_rate_hz", "window_frames": "audio_window_frames"}
        if key in flat:
            metadata["avbind." + flat[key]] = str(value)

    return edit


def _fewer_classes(metadata: dict[str, str]) -> None:
    names = json.loads(metadata["avbind.class_names"])
    metadata["avbind.class_names"] = json.dumps(names[:-2])


def _state_shape(metadata: dict[str, str]) -> None:
    states = json.loads(metadata["avbind.states"])
    states[0]["shape"] = [2, 16, 16]
    metadata["avbind.states"] = json.dumps(states)


BAD_METADATA = {
    "input_size": (_set_config("input_size", 96, "video"), ["frame input is 3x128x128", "input_size 96"]),
    "window": (_set_config("window_frames", 50, "audio"), ["log_mel input", "window_frames 50"]),
    "state": (_state_shape, ["state input shift_0", "2x16x16"]),
    "classes": (_fewer_classes, ["event_logits has 11 outputs", "9 event names"]),
    "rate_zero": (_set_config("step_rate_hz", 0.0), ["step_rate_hz 0"]),
    "rate_negative": (_set_config("step_rate_hz", -5.0), ["step_rate_hz -5"]),
    "rate_nan": (_set_config("step_rate_hz", float("nan")), ["step_rate_hz nan"]),
}


@pytest.fixture
def missing_external_data(tmp_path: Path) -> Path:
    model = onnx.load(str(default_onnx()))
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.data", size_threshold=0)
    (tmp_path / "w.data").unlink()
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [_avbind(), "run", "--video", "synthetic", "--seconds", "3",
               "--publish", f"tcp://127.0.0.1:{free_port()}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], words: list[str]) -> None:
    stderr = result.stderr.strip()
    assert result.returncode != 0, f"exit 0 (stdout {result.stdout[-500:]!r}, stderr {stderr[-500:]!r})"
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def test_shipped_model_still_loads() -> None:
    backend = create_backend(default_onnx(), "onnxruntime")
    assert backend.info.step_rate_hz > 0
    assert len(backend.info.event_names) == 11


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_bad_metadata_refused_at_load(tmp_path: Path, case: str) -> None:
    edit, words = BAD_METADATA[case]
    path = _edit_metadata(tmp_path, f"{case}.onnx", edit)
    with pytest.raises(ValueError) as caught:
        create_backend(path, "onnxruntime")
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("case", ["input_size", "classes", "rate_zero"])
def test_run_with_bad_metadata_exits_with_one_line(tmp_path: Path, case: str) -> None:
    edit, words = BAD_METADATA[case]
    path = _edit_metadata(tmp_path, f"{case}.onnx", edit)
    _assert_one_line_error(_run(["--model", str(path)]), words)


def test_missing_external_data_refused_at_load(missing_external_data: Path) -> None:
    with pytest.raises(ValueError, match=r"w\.data"):
        create_backend(missing_external_data, "onnxruntime")


def test_run_with_missing_external_data_exits_with_one_line(missing_external_data: Path) -> None:
    _assert_one_line_error(_run(["--model", str(missing_external_data)]), ["w.data", "missing"])


def _no_tensorrt() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return
    pytest.skip("TensorRT is installed here")


def test_tensorrt_backend_without_tensorrt_exits_with_one_line() -> None:
    _no_tensorrt()
    _assert_one_line_error(_run(["--backend", "tensorrt"]), ["TensorRT is not installed", "avbind[tensorrt]"])


def test_engine_file_without_tensorrt_exits_with_one_line(tmp_path: Path) -> None:
    _no_tensorrt()
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not an engine")
    _assert_one_line_error(_run(["--model", str(engine)]), ["TensorRT is not installed"])
