"""A Triton Inference Server model repository for the streaming step model.

Triton's sequence batcher with *implicit state* is the alternative to ``avbind serve`` for a
GPU farm: each camera is a sequence (its correlation id), Triton keeps the recurrent state of
every live sequence on the server and feeds it back as the next request's state inputs, and the
``oldest`` strategy batches steps of different sequences into one model call. The client then
sends only frame, log-mel and modality mask per step.

Two things in this file exist because of Triton's behaviour, not ours:

* Implicit state replaces graph inputs and outputs: the state tensors are listed only under
  ``sequence_batching.state``, never under ``input``/``output``, with a zero ``initial_state``
  so a new sequence starts as the engine starts a stream (no START control input is declared:
  the ONNX Runtime backend refuses a control tensor the graph does not take).
* Triton issue 8586: some versions pair state inputs with state outputs by sorted name, not by
  the pairs in the config, and swap states when the two lists sort differently (``shift_1`` /
  ``shift_10`` sort one way, ``shift_1_out`` / ``shift_10_out`` the other). When the graph's
  names would sort apart, the copied model's state tensors are renamed to zero-padded names that
  sort alike on both sides; the config and the copy agree, the original file is untouched.

Triton itself was not run here (no Triton server on these machines); the tests check the config
against the ONNX file and run the renamed copy in ONNX Runtime.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # without the batch axis


@dataclass(frozen=True)
class TritonModel:
    folder: Path  # <repository>/<model name>
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[tuple[TensorSpec, str], ...]  # (state input, the output that updates it)
    renamed: dict[str, str]  # original graph name -> name in the copy (empty when none was needed)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        raise ValueError(f"{value.name}: ONNX element type {tensor.elem_type} has no Triton type here")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if not dims or dims[0] != -1:
        raise ValueError(f"{value.name}: expected a dynamic batch axis first, got shape {dims}")
    if any(d < 1 for d in dims[1:]):
        raise ValueError(f"{value.name}: only the batch axis may be dynamic, got shape {dims}")
    return TensorSpec(value.name, TRITON_TYPES[tensor.elem_type], tuple(dims[1:]))


def state_pairs_from_metadata(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(state input, state output) of an avbind step model, from the metadata it carries."""
    import json

    meta = {p.key: p.value for p in model.metadata_props}
    if "avbind.states" not in meta:
        raise ValueError("not an avbind step model (no avbind.states metadata): pass the state pairs")
    states = json.loads(meta["avbind.states"])
    return [(s["name"], f"{s['name']}_out") for s in states]


def sorted_pairing_holds(pairs: list[tuple[str, str]]) -> bool:
    """Whether pairing the sorted state inputs with the sorted state outputs gives ``pairs``."""
    ins = sorted(i for i, _ in pairs)
    outs = sorted(o for _, o in pairs)
    return dict(zip(ins, outs, strict=True)) == dict(pairs)


def _rename(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name in mapping:
            value.name = mapping[value.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]


def write_triton_repository(
    onnx_path: str | Path, repository: str | Path, model_name: str = "avbind_step", max_batch: int = 16,
    max_candidate_sequences: int = 64, idle_timeout_s: float = 60.0, max_queue_delay_us: int = 2000,
    states: list[tuple[str, str]] | None = None, instance_kind: str = "KIND_GPU",
) -> TritonModel:
    """Write ``repository/model_name/{config.pbtxt, 1/model.onnx}`` for ``onnx_path``.

    ``max_candidate_sequences`` bounds the sequences (cameras) batched at once; a sequence with no
    request for ``idle_timeout_s`` is dropped with its state, as a stream that went silent.
    """
    if max_batch < 1 or max_candidate_sequences < 1 or idle_timeout_s <= 0:
        raise ValueError("max_batch and max_candidate_sequences must be >= 1 and idle_timeout_s > 0")
    model = onnx.load(str(onnx_path))
    pairs = states if states is not None else state_pairs_from_metadata(model)
    graph_inputs = {v.name: v for v in model.graph.input}
    graph_outputs = {v.name: v for v in model.graph.output}
    for state_in, state_out in pairs:
        if state_in not in graph_inputs or state_out not in graph_outputs:
            raise ValueError(f"state {state_in} -> {state_out} is not an input/output pair of {onnx_path}")
    renamed: dict[str, str] = {}
    if not sorted_pairing_holds(pairs):
        width = len(str(len(pairs) - 1))
        for k, (state_in, state_out) in enumerate(pairs):
            renamed[state_in] = f"avbind_state_{k:0{width}d}"
            renamed[state_out] = f"avbind_state_{k:0{width}d}_out"
        _rename(model, renamed)
        pairs = [(renamed[i], renamed[o]) for i, o in pairs]
        onnx.checker.check_model(model)
    state_names = {n for pair in pairs for n in pair}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in state_names)
    outputs = tuple(_spec(v) for v in model.graph.output if v.name not in state_names)
    by_name = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    state_specs = []
    for state_in, state_out in pairs:
        spec_in, spec_out = _spec(by_name[state_in]), _spec(by_name[state_out])
        if (spec_in.dims, spec_in.data_type) != (spec_out.dims, spec_out.data_type):
            raise ValueError(f"state {state_in} {spec_in.dims} and its update {state_out} {spec_out.dims} differ")
        state_specs.append((spec_in, state_out))

    folder = Path(repository) / model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if renamed:
        onnx.save(model, str(folder / "1" / "model.onnx"))
    else:
        shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
    text = _config_text(model_name, max_batch, inputs, outputs, state_specs, max_candidate_sequences,
                        idle_timeout_s, max_queue_delay_us, instance_kind, renamed)
    (folder / "config.pbtxt").write_text(text)
    return TritonModel(folder, inputs, outputs, tuple(state_specs), renamed)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _config_text(name: str, max_batch: int, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 states: list[tuple[TensorSpec, str]], candidates: int, idle_s: float, delay_us: int,
                 instance_kind: str, renamed: dict[str, str]) -> str:
    preferred = sorted({b for b in (4, 8, max_batch) if b <= max_batch})
    lines = [
        "# Written by `avbind export --triton`: the avbind streaming step model behind Triton's",
        "# sequence batcher with implicit state (one sequence per camera). State tensors are not",
        "# inputs or outputs here: Triton keeps them per sequence, zero at a sequence's start.",
        "# No START/READY control inputs: the graph takes none, and the ONNX Runtime backend",
        "# refuses a control tensor that is not a graph input.",
    ]
    if renamed:
        lines.append("# State tensors renamed so that inputs and outputs sort alike (Triton issue 8586):")
        lines += [f"#   {old} -> {new}" for old, new in renamed.items()]
    lines += [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch}"]
    for key, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{key} [")
        # A tensor that is one value per batch item ([batch]) is dims [1] reshaped to a scalar.
        body = [f'  {{ name: "{s.name}" data_type: {s.data_type} dims: {_dims(s.dims)} }}' if s.dims else
                f'  {{ name: "{s.name}" data_type: {s.data_type} dims: [ 1 ] reshape: {{ shape: [ ] }} }}'
                for s in specs]
        lines.append(",\n".join(body))
        lines.append("]")
    lines += [
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {int(idle_s * 1_000_000)}",
        "  oldest {",
        f"    max_candidate_sequences: {candidates}",
        f"    preferred_batch_size: {_dims(tuple(preferred))}",
        f"    max_queue_delay_microseconds: {delay_us}",
        "  }",
        "  state [",
    ]
    entries = []
    for spec, output_name in states:
        entries.append(
            "    {\n"
            f'      input_name: "{spec.name}"\n'
            f'      output_name: "{output_name}"\n'
            f"      data_type: {spec.data_type}\n"
            f"      dims: {_dims(spec.dims)}\n"
            "      initial_state: {\n"
            f"        data_type: {spec.data_type}\n"
            f"        dims: {_dims(spec.dims)}\n"
            "        zero_data: true\n"
            f'        name: "{spec.name}_zero"\n'
            "      }\n"
            "    }"
        )
    lines.append(",\n".join(entries))
    lines += ["  ]", "}", f"instance_group [ {{ count: 1 kind: {instance_kind} }} ]", ""]
    return "\n".join(lines)
