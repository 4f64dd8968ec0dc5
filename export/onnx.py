"""Export the step form of AVBindNet to ONNX, with everything the runtime needs as metadata.

Inputs: frame, log_mel, modality_mask, then every state tensor by name; outputs: the heads, then
every new state as ``<name>_out``. Only the batch axis is dynamic (several streams share a call);
all other dimensions are static, which TensorRT needs for a fast engine.
"""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import torch
from torch import nn

from avbind.models.network import AVBindNet
from avbind.realtime.backends.model_file import FORMAT, MIN_OPSET, ModelInfo, StateTensor, read_model_info

log = logging.getLogger(__name__)

OPSET = 18  # torch's exporter emits 18 natively; >= MIN_OPSET for the runtime and TensorRT
MAX_BATCH = 64  # upper bound of the dynamic batch axis (streams per call)


class StepGraph(nn.Module):
    """Flat signature for export: (frame, log_mel, modality_mask, *state) -> (*outputs, *new_state)."""

    def __init__(self, model: AVBindNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor, log_mel: torch.Tensor, modality_mask: torch.Tensor, *state: torch.Tensor):
        outputs, new_state = self.model.step(frame, log_mel, modality_mask, list(state))
        return (*outputs.values(), *new_state)


def _avbind_version() -> str:
    try:
        return version("avbind")
    except PackageNotFoundError:
        return "unknown"


def model_info(
    model: AVBindNet, class_names: list[str] | None = None, verb_names: list[str] | None = None,
    noun_names: list[str] | None = None, precision: str = "fp32",
) -> ModelInfo:
    """The metadata an exported file of ``model`` carries."""
    heads = model.config.heads
    class_names = class_names or model.class_names or [f"class_{i}" for i in range(heads.num_classes)]
    if len(class_names) != heads.num_classes:
        raise ValueError(f"class_names: expected {heads.num_classes} names, got {len(class_names)}")
    return ModelInfo(
        config=model.config.to_dict(),
        class_names=tuple(class_names),
        outputs=tuple(model.output_names()),
        states=tuple(StateTensor(s.name, s.shape) for s in model.state_specs()),
        features=model.config.features,
        avbind_version=_avbind_version(),
        precision=precision,
        verb_names=tuple(verb_names or model.verb_names or ()),
        noun_names=tuple(noun_names or model.noun_names or ()),
    )


def example_inputs(model: AVBindNet, batch: int = 2) -> tuple[torch.Tensor, ...]:
    c = model.config
    size = c.video.input_size
    return (
        torch.rand(batch, 3, size, size),
        torch.randn(batch, c.audio.window_frames, c.features.n_mels),
        torch.ones(batch, 2),
        *model.initial_state(batch, "cpu"),
    )


def export_model(
    model: AVBindNet, path: str | Path, *, class_names: list[str] | None = None,
    verb_names: list[str] | None = None, noun_names: list[str] | None = None,
    opset: int = OPSET, max_batch: int = MAX_BATCH, simplify: bool = False,
) -> ModelInfo:
    """Write ``model``'s step form to ``path`` (a single self-contained file) and return its metadata."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = model_info(model, class_names, verb_names, noun_names)
    graph = StepGraph(model.cpu()).eval()  # eval on the wrapper too: export restores its mode afterwards
    args = example_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, tuple({0: batch} for _ in info.states))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about optional torchvision ops
        program = torch.onnx.export(
            graph, args, input_names=list(info.input_names), output_names=list(info.output_names),
            opset_version=opset, dynamo=True, dynamic_shapes=dynamic, external_data=False, verbose=False,
        )
    proto = program.model_proto
    if simplify:
        proto = _simplify(proto)
    info.write_metadata(proto)
    onnx.checker.check_model(proto, full_check=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    log.info("exported %s (%s, opset %d) to %s", info.name, FORMAT, opset, path)
    return read_model_info(path)  # re-read: proves the file is what the runtime will see


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:
        log.warning("onnxslim is not installed; exporting without simplification")
        return proto
    return onnxslim.slim(proto)
