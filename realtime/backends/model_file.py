"""What an exported avbind model file says about itself, read from its ONNX metadata.

The exporter writes this metadata and the runtime reads it; both use this one module, so input
sizes, feature settings, class names and state tensors are never repeated by hand anywhere else.
Torch-free: a deployment with only ONNX Runtime or TensorRT reads it.
"""

from __future__ import annotations

import json
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
            return cls(
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
        except (KeyError, TypeError, ValueError) as err:
            problem = f"{type(err).__name__}: {err}"
            raise ModelFileError(f"{where}avbind metadata is incomplete or malformed ({problem})") from err


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
    return info
