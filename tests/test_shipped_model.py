"""The trained avbind-s ships inside the package and loads with one call, with and without torch."""

from __future__ import annotations

import numpy as np
import pytest

from avbind.models.data.avsynth import CLASS_NAMES
from avbind.models.weights import default_checkpoint, default_onnx, shipped
from avbind.realtime.backends import create_backend, read_model_info


def test_shipped_onnx_runs_without_torch_and_names_its_classes() -> None:
    info = read_model_info(default_onnx())
    assert info.name == "avbind-s" and info.class_names == CLASS_NAMES and info.precision == "fp32"
    assert info.verb_names and info.noun_names
    assert read_model_info(shipped(".int8.onnx")).precision == "int8"
    backend = create_backend(default_onnx(), "onnxruntime")
    shapes = info.input_shapes(1)
    inputs = {"frame": np.zeros(shapes["frame"], np.float32), "log_mel": np.zeros(shapes["log_mel"], np.float32),
              "modality_mask": np.ones(shapes["modality_mask"], np.float32)}
    outputs, _ = backend.step(inputs, backend.initial_state(1))
    assert outputs["event_logits"].shape == (1, len(CLASS_NAMES) + 1)


def test_shipped_checkpoint_matches_the_shipped_onnx() -> None:
    pytest.importorskip("torch")
    from avbind.models.checkpoint import load_model

    model = load_model(default_checkpoint())  # the one call
    assert model.class_names == list(CLASS_NAMES) and not model.training
    ort_backend = create_backend(default_onnx(), "onnxruntime")
    torch_backend = create_backend(default_checkpoint(), "torch")
    rng = np.random.default_rng(0)
    shapes = ort_backend.info.input_shapes(2)
    a_state, b_state = ort_backend.initial_state(2), torch_backend.initial_state(2)
    for _ in range(5):
        inputs = {"frame": rng.random(shapes["frame"], dtype=np.float32),
                  "log_mel": (rng.standard_normal(shapes["log_mel"]) * 3 - 6).astype(np.float32),
                  "modality_mask": np.ones(shapes["modality_mask"], np.float32)}
        a, a_state = ort_backend.step(inputs, a_state)
        b, b_state = torch_backend.step(inputs, b_state)
        assert np.abs(a["event_logits"] - b["event_logits"]).max() <= 1e-4
