"""What an exported avbind model file says about itself, read from its ONNX metadata.

The exporter writes this metadata and the runtime reads it; both use this one module, so input
sizes, feature settings, class names and state tensors are never repeated by hand anywhere else.
Torch-free: a deployment with only ONNX Runtime or TensorRT reads it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from avbind.realtime.features.log_mel import LogMelSettings

FORMAT = "avbind-step/1"  # bump when inputs, outputs or metadata keys change meaning
MIN_OPSET = 17  # LayerNormalization and TensorRT-friendly ops
KEY = "avbind."  # prefix of every metadata key
INPUTS = ("frame", "log_mel", "modality_mask")  # then one input per state tensor


class ModelFileError(ValueError):
    """A model file that avbind cannot run; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class StateTensor:
    name: str  # graph input; the graph outputs its update as f"{name}_out"
    shape: tuple[int, ...]  # per stream, without the batch axis

    @property
    def output_name(self) -> str:
        return f"{self.name}_out"


@dataclass(frozen=True)
class ModelInfo:
    config: dict  # the full ModelConfig as a dict (models/config.py)
    class_names: tuple[str, ...]  # event classes; the event head adds "background" last
    outputs: tuple[str, ...]  # head outputs, before the state outputs
    states: tuple[StateTensor, ...]
    features: LogMelSettings
    avbind_version: str
    precision: str = "fp32"  # fp32, fp16 or int8
    verb_names: tuple[str, ...] = ()
    noun_names: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    # Convenience views of the configuration, so callers need not know its layout.
    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def input_size(self) -> int:
        return int(self.config["video"]["input_size"])

    @property
    def window_frames(self) -> int:
        return int(self.config["audio"]["window_frames"])

    @property
    def audio_end_offset_s(self) -> float:
        """Where the audio window ends relative to the frame's time (the binding window offset)."""
        return float(self.config["audio"]["end_offset_s"])

    @property
    def step_rate_hz(self) -> float:
        return float(self.config["step_rate_hz"])

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*INPUTS, *(s.name for s in self.states))

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*self.outputs, *(s.output_name for s in self.states))

    @property
    def event_names(self) -> tuple[str, ...]:
        """Names of the event head's outputs, background last."""
        return (*self.class_names, "background")

    def input_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {
            "frame": (batch, 3, self.input_size, self.input_size),
            "log_mel": (batch, self.window_frames, self.features.n_mels),
            "modality_mask": (batch, 2),
        }
        shapes.update({s.name: (batch, *s.shape) for s in self.states})
        return shapes

    def to_metadata(self) -> dict[str, str]:
        values = {
            "format": FORMAT,
            "version": self.avbind_version,
            "precision": self.precision,
            "config": json.dumps(self.config, sort_keys=True),
            "class_names": json.dumps(list(self.class_names)),
            "verb_names": json.dumps(list(self.verb_names)),
            "noun_names": json.dumps(list(self.noun_names)),
            "features": json.dumps(self.features.to_dict(), sort_keys=True),
            "outputs": json.dumps(list(self.outputs)),
            "states": json.dumps([{"name": s.name, "shape": list(s.shape)} for s in self.states]),
            # Duplicated out of the config for readers in other languages: flat, self-explaining keys.
            "input_size": str(self.input_size),
            "step_rate_hz": str(self.step_rate_hz),
            "audio_window_frames": str(self.window_frames),
            "audio_end_offset_s": str(self.audio_end_offset_s),
        }
        return {KEY + k: v for k, v in values.items()}

    def write_metadata(self, proto: object) -> None:
        """Replace an ``onnx.ModelProto``'s metadata_props with this description."""
        del proto.metadata_props[:]
        for key, value in self.to_metadata().items():
            proto.metadata_props.add(key=key, value=value)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], path: Path | None = None) -> ModelInfo:
        where = f"{path}: " if path else ""
        fmt = metadata.get(KEY + "format")
        if fmt is None:
            raise ModelFileError(
                f"{where}no avbind metadata (key {KEY}format); this ONNX file was not written by `avbind export`"
            )
        if fmt != FORMAT:
            raise ModelFileError(f"{where}model format {fmt!r}, this avbind runs {FORMAT!r}; re-export the model")
        try:
            raw = {k[len(KEY):]: v for k, v in metadata.items() if k.startswith(KEY)}
            features = json.loads(raw["features"])
            info = cls(
                config=json.loads(raw["config"]),
                class_names=tuple(json.loads(raw["class_names"])),
                outputs=tuple(json.loads(raw["outputs"])),
                states=tuple(StateTensor(s["name"], tuple(s["shape"])) for s in json.loads(raw["states"])),
                features=LogMelSettings(**features),
                avbind_version=raw["version"],
                precision=raw.get("precision", "fp32"),
                verb_names=tuple(json.loads(raw.get("verb_names", "[]"))),
                noun_names=tuple(json.loads(raw.get("noun_names", "[]"))),
                path=path,
            )
            info.check_values(raw, where)
            return info
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            problem = f"{type(err).__name__}: {err}"
            raise ModelFileError(f"{where}avbind metadata is incomplete or malformed ({problem})") from err

    def check_values(self, raw: dict[str, str], where: str = "") -> None:
        """Refuse values that would load and then fail at every step (or divide by zero) at run time.

        ``raw`` is the metadata without the key prefix: its flat keys must agree with the config,
        which is what the runtime reads, so an edit to either one cannot go unnoticed.
        """
        rate = self.step_rate_hz
        if not math.isfinite(rate) or rate <= 0:
            raise ModelFileError(f"{where}metadata says step_rate_hz {rate:g}; it must be a finite number above 0")
        for key, value in (("input_size", self.input_size), ("audio_window_frames", self.window_frames)):
            if value <= 0:
                raise ModelFileError(f"{where}metadata says {key} {value}; it must be above 0")
        flat = {
            "input_size": self.input_size, "step_rate_hz": rate,
            "audio_window_frames": self.window_frames, "audio_end_offset_s": self.audio_end_offset_s,
        }
        for key, value in flat.items():
            if key in raw and float(raw[key]) != float(value):
                raise ModelFileError(f"{where}metadata says {key} {raw[key]} but its config says {value}")
        if not self.class_names:
            raise ModelFileError(f"{where}metadata has no class names")


def read_model_info(path: str | Path) -> ModelInfo:
    """Validate an exported model file and return its description; raises :class:`ModelFileError`."""
    import onnx  # local: only model loading needs it

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, onnx may raise others on a truncated file
        raise ModelFileError(f"{path}: not a readable ONNX file (truncated or corrupt?): {type(err).__name__}") from err
    if not model.graph.node:
        raise ModelFileError(f"{path}: not a readable ONNX file (empty graph; truncated or corrupt?)")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ModelFileError(f"{path}: ONNX opset {opset}, avbind needs opset >= {MIN_OPSET}; re-export the model")
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, path)
    graph_inputs = tuple(i.name for i in model.graph.input)
    graph_outputs = tuple(o.name for o in model.graph.output)
    if graph_inputs != info.input_names or graph_outputs != info.output_names:
        raise ModelFileError(
            f"{path}: graph inputs/outputs {list(graph_inputs)} -> {list(graph_outputs)} do not match its "
            f"avbind metadata {list(info.input_names)} -> {list(info.output_names)}"
        )
    check_graph_shapes(info, model, path)
    check_external_data(model, path)
    return info


def _dims(value: object) -> tuple[int | None, ...]:
    """Per-stream dims of a graph input or output (batch axis dropped); None where not fixed."""
    dims = value.type.tensor_type.shape.dim[1:]
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _shown(shape: tuple[int | None, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape) or "a scalar"


def _differs(graph: tuple[int | None, ...], want: tuple[int, ...]) -> bool:
    return len(graph) != len(want) or any(g is not None and g != w for g, w in zip(graph, want, strict=True))


def check_graph_shapes(info: ModelInfo, model: object, path: Path) -> None:
    """Refuse a file whose metadata disagrees with its graph's input and output shapes.

    Without this a wrong input size, state shape or class list loads fine and then fails at every
    step (or publishes nothing); here it is one error at load naming the mismatch.
    """
    inputs = {i.name: _dims(i) for i in model.graph.input}
    want = info.input_shapes(1)
    frame, log_mel = inputs["frame"], inputs["log_mel"]
    if _differs(frame, want["frame"][1:]):
        raise ModelFileError(
            f"{path}: frame input is {_shown(frame)} but metadata says input_size {info.input_size}"
        )
    if _differs(log_mel, want["log_mel"][1:]):
        raise ModelFileError(
            f"{path}: log_mel input is {_shown(log_mel)} but metadata says window_frames {info.window_frames} "
            f"and n_mels {info.features.n_mels}"
        )
    if _differs(inputs["modality_mask"], want["modality_mask"][1:]):
        raise ModelFileError(f"{path}: modality_mask input is {_shown(inputs['modality_mask'])}, avbind feeds 2")
    for spec in info.states:
        if _differs(inputs[spec.name], spec.shape):
            raise ModelFileError(
                f"{path}: state input {spec.name} is {_shown(inputs[spec.name])} but metadata says "
                f"{_shown(spec.shape)}"
            )
    outputs = {o.name: _dims(o) for o in model.graph.output}
    names = {
        "event_logits": (info.event_names, f"event names ({len(info.class_names)} class names + background)"),
        "verb_logits": (info.verb_names, "verb names"),
        "noun_logits": (info.noun_names, "noun names"),
    }
    for output, (labels, what) in names.items():
        if output not in outputs or (output != "event_logits" and not labels):
            continue
        width = outputs[output][-1] if outputs[output] else None
        if width is not None and width != len(labels):
            raise ModelFileError(f"{path}: {output} has {width} outputs but metadata has {len(labels)} {what}")


def check_external_data(model: object, path: Path) -> None:
    """Refuse a file whose weights live in external-data files that are missing, at load, in one line."""
    for tensor in model.graph.initializer:
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        data = path.parent / location
        if not location or not data.is_file():
            raise ModelFileError(
                f"{path}: weights are stored in external data file {location!r}, which is missing "
                f"(expected at {data}); copy it next to the model file"
            )
