"""ONNX export of the step form, the backends that run it, int8, and bad model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from avbind_testing import calibrated_model  # noqa: E402

from avbind.export.onnx import export_model  # noqa: E402
from avbind.export.quantize import quantize_model  # noqa: E402
from avbind.export.tensorrt import EngineOptions, build_engine, engine_metadata, profile_shapes  # noqa: E402
from avbind.models.checkpoint import save_checkpoint  # noqa: E402
from avbind.models.config import ModelConfig, get_config  # noqa: E402
from avbind.realtime.backends import InputError, ModelFileError, create_backend, read_model_info  # noqa: E402
from avbind.realtime.backends.tensorrt_backend import tensorrt_available  # noqa: E402

PARITY = 1e-4  # fp32, ONNX Runtime vs PyTorch, max abs difference on every output


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[object, Path, Path]:
    """avbind-s with measured BatchNorm statistics, as a checkpoint and as ONNX."""
    model = calibrated_model(get_config("avbind-s"))
    names = [f"event {i}" for i in range(model.config.heads.num_classes)]
    model.class_names = names
    folder = tmp_path_factory.mktemp("export")
    checkpoint = save_checkpoint(folder / "avbind-s.pt", model, names)
    onnx_path = folder / "avbind-s.onnx"
    export_model(model, onnx_path)
    return model, checkpoint, onnx_path


def _stream(info, batch: int, steps: int, seed: int):
    """A moving, noisy scene and log-mel windows; generated per step to keep memory flat."""
    rng = np.random.default_rng(seed)
    size = info.input_size
    base = rng.random((batch, 3, size, size), dtype=np.float32)
    for t in range(steps):
        frame = np.roll(base, shift=t, axis=3) * 0.8 + 0.2 * rng.random(base.shape, dtype=np.float32)
        mask = np.ones((batch, 2), np.float32)
        if t % 50 == 25:
            mask[0, 1] = 0.0  # a dropped audio step now and then
        yield {
            "frame": frame.astype(np.float32),
            "log_mel": (rng.standard_normal((batch, info.window_frames, info.features.n_mels)) * 3 - 6).astype(
                np.float32
            ),
            "modality_mask": mask,
        }


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_matches_torch_over_300_steps(exported, batch: int) -> None:
    _, checkpoint, onnx_path = exported
    ort_backend = create_backend(onnx_path, "onnxruntime")
    torch_backend = create_backend(checkpoint, "torch")
    ort_state, torch_state = ort_backend.initial_state(batch), torch_backend.initial_state(batch)
    worst = {name: 0.0 for name in ort_backend.info.output_names}
    for inputs in _stream(ort_backend.info, batch, steps=300, seed=batch):
        ort_out, ort_state = ort_backend.step(inputs, ort_state)
        torch_out, torch_state = torch_backend.step(inputs, torch_state)
        for name in ort_out:
            worst[name] = max(worst[name], float(np.abs(ort_out[name] - torch_out[name]).max()))
        for spec, a, b in zip(ort_backend.info.states, ort_state, torch_state, strict=True):
            worst[spec.output_name] = max(worst[spec.output_name], float(np.abs(a - b).max()))
    assert max(worst.values()) <= PARITY, worst
    # Not vacuous: the outputs moved over the stream by far more than the tolerance.
    first_step = next(_stream(ort_backend.info, batch, 1, seed=99))
    fresh, _ = torch_backend.step(first_step, torch_backend.initial_state(batch))
    assert float(np.abs(ort_out["event_logits"] - fresh["event_logits"]).max()) > 10 * PARITY


def test_graph_is_tensorrt_friendly(exported) -> None:
    model, _, onnx_path = exported
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"ScatterND", "ScatterElements", "Scatter", "Loop", "If"}, ops
    info = read_model_info(onnx_path)
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{value.name}: batch axis should be dynamic"
        assert all(d.HasField("dim_value") for d in dims[1:]), f"{value.name}: only the batch axis may be dynamic"
    assert [i.name for i in proto.graph.input] == list(info.input_names)
    state_outputs = [f"{s.name}_out" for s in model.state_specs()]
    assert [o.name for o in proto.graph.output] == [*model.output_names(), *state_outputs]
    assert not list(onnx_path.parent.glob("*.data")), "weights must live inside the single ONNX file"


def test_metadata_describes_the_model(exported) -> None:
    model, _, onnx_path = exported
    info = read_model_info(onnx_path)
    assert ModelConfig.from_dict(info.config) == model.config
    assert info.class_names == tuple(model.class_names)
    assert info.event_names[-1] == "background"
    assert info.features == model.config.features
    assert info.input_size == model.config.video.input_size
    assert info.step_rate_hz == model.config.step_rate_hz
    assert info.audio_end_offset_s == model.config.audio.end_offset_s
    assert [(s.name, s.shape) for s in info.states] == [(s.name, s.shape) for s in model.state_specs()]
    assert info.precision == "fp32" and info.avbind_version


def test_backend_description_and_input_errors(exported) -> None:
    _, checkpoint, onnx_path = exported
    backend = create_backend(onnx_path)  # auto: no TensorRT here, so ONNX Runtime
    assert backend.describe().name == ("tensorrt" if tensorrt_available() else "onnxruntime")
    assert create_backend(checkpoint).describe().name == "torch"
    good = next(_stream(backend.info, 2, 1, seed=0))
    size = backend.info.input_size
    wrong_frame = rf"frame: expected shape \(N, 3, {size}, {size}\) float32, got \(2, 3, 10, 10\)"
    with pytest.raises(InputError, match=wrong_frame):
        backend.step({**good, "frame": np.zeros((2, 3, 10, 10), np.float32)}, backend.initial_state(2))
    with pytest.raises(InputError, match=r"log_mel: expected shape \(N, \d+, \d+\) float32, got .* float64"):
        backend.step({**good, "log_mel": good["log_mel"].astype(np.float64)}, backend.initial_state(2))
    with pytest.raises(InputError, match=r"state shift_0: expected shape \(2, "):
        backend.step(good, backend.initial_state(3))
    with pytest.raises(InputError, match="missing"):
        backend.step({"frame": good["frame"]}, backend.initial_state(2))


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(ModelFileError, match=match) as caught:
        read_model_info(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(ModelFileError, match=match):
        create_backend(path, "onnxruntime")


def _tiny_onnx(path: Path, opset: int, metadata: dict[str, str] | None = None) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_bad_model_files_give_one_line_errors(exported, tmp_path: Path) -> None:
    _, checkpoint, onnx_path = exported
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 3])
    _one_line_error(truncated, "not a readable ONNX file")
    _one_line_error(tmp_path / "missing.onnx", "no such model file")
    _one_line_error(_tiny_onnx(tmp_path / "old.onnx", opset=13), "opset 13, avbind needs opset >= 17")
    _one_line_error(_tiny_onnx(tmp_path / "foreign.onnx", opset=18), "not written by `avbind export`")
    # Another model's graph carrying avbind's metadata: the I/O names give it away.
    borrowed = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    _one_line_error(_tiny_onnx(tmp_path / "borrowed.onnx", opset=18, metadata=borrowed), "do not match")
    partial = {k: v for k, v in borrowed.items() if k != "avbind.states"}
    _one_line_error(_tiny_onnx(tmp_path / "partial.onnx", opset=18, metadata=partial), "incomplete or malformed")
    # A checkpoint is not an ONNX file.
    _one_line_error(checkpoint, "not a readable ONNX file")


def test_int8_qdq_model_runs_and_tracks_fp32(exported, tmp_path: Path) -> None:
    _, _, onnx_path = exported
    info = read_model_info(onnx_path)
    int8_path = tmp_path / "int8.onnx"
    int8_info = quantize_model(onnx_path, int8_path, [_stream(info, 1, 12, seed=s) for s in range(3)])
    assert int8_info.precision == "int8"
    ops = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32, int8 = create_backend(onnx_path, "onnxruntime"), create_backend(int8_path, "onnxruntime")
    assert int8.describe().precision == "int8"
    fp32_state, int8_state = fp32.initial_state(1), int8.initial_state(1)
    agree = 0
    steps = list(_stream(info, 1, 20, seed=7))
    for inputs in steps:
        a, fp32_state = fp32.step(inputs, fp32_state)
        b, int8_state = int8.step(inputs, int8_state)
        assert np.isfinite(b["event_logits"]).all()
        agree += int(a["event_logits"].argmax() == b["event_logits"].argmax())
    # Accuracy against labels is measured on the trained model; here: it tracks fp32 at all.
    assert agree >= len(steps) // 2


def test_tensorrt_profile_and_metadata_without_tensorrt(exported, tmp_path: Path) -> None:
    _, _, onnx_path = exported
    info = read_model_info(onnx_path)
    options = EngineOptions(precision="fp16", min_batch=1, opt_batch=2, max_batch=8)
    shapes = profile_shapes(info, options)
    assert set(shapes) == set(info.input_names)
    size = info.input_size
    assert shapes["frame"] == ((1, 3, size, size), (2, 3, size, size), (8, 3, size, size))
    meta = engine_metadata(info, options, "10.x", "test GPU")
    assert meta["avbind.precision"] == "fp16" and meta["avbind.engine.batch"] == "[1, 2, 8]"
    with pytest.raises(ValueError, match="min_batch <= opt_batch"):
        EngineOptions(opt_batch=32, max_batch=16)
    with pytest.raises(ValueError, match="QDQ"):
        build_engine(onnx_path, tmp_path / "x.engine", EngineOptions(precision="int8"))


@pytest.mark.requires_trt
@pytest.mark.skipif(not tensorrt_available(), reason="TensorRT and an NVIDIA GPU are not available on this machine")
def test_tensorrt_engine_matches_onnxruntime(exported, tmp_path: Path) -> None:  # pragma: no cover - no TRT here
    _, _, onnx_path = exported
    engine = build_engine(onnx_path, tmp_path / "s.engine", EngineOptions(precision="fp32", max_batch=4))
    trt_backend, ort_backend = create_backend(engine), create_backend(onnx_path, "onnxruntime")
    trt_state, ort_state = trt_backend.initial_state(2), ort_backend.initial_state(2)
    for inputs in _stream(ort_backend.info, 2, 50, seed=3):
        a, trt_state = trt_backend.step(inputs, trt_state)
        b, ort_state = ort_backend.step(inputs, ort_state)
        for name in a:
            assert np.abs(a[name] - b[name]).max() <= 1e-3, name


def test_relevance_gated_model_exports_and_matches_torch(tmp_path: Path) -> None:
    """A weakly trained model's gated output (foreground = relevance x the head's own foreground)
    survives export unchanged."""
    from dataclasses import replace

    base = get_config("avbind-xs")
    model = calibrated_model(replace(base, heads=replace(base.heads, gate_by_relevance=True)))
    model.class_names = [f"event {i}" for i in range(model.config.heads.num_classes)]
    checkpoint = save_checkpoint(tmp_path / "weak.pt", model)
    onnx_path = tmp_path / "weak.onnx"
    export_model(model, onnx_path)
    ort_backend, torch_backend = create_backend(onnx_path, "onnxruntime"), create_backend(checkpoint, "torch")
    ort_state, torch_state = ort_backend.initial_state(2), torch_backend.initial_state(2)
    for inputs in _stream(ort_backend.info, 2, steps=30, seed=5):
        ort_out, ort_state = ort_backend.step(inputs, ort_state)
        torch_out, torch_state = torch_backend.step(inputs, torch_state)
        np.testing.assert_allclose(ort_out["event_logits"], torch_out["event_logits"], atol=PARITY, rtol=0)
        background = np.exp(ort_out["event_logits"][:, -1])
        assert (background >= 1 - ort_out["relevance"] - 1e-5).all()  # no more foreground than the relevance
        assert (background < 1 - 1e-3).all()  # and not gated shut: the head's own foreground takes part
