"""``avbind export --triton``: the config must describe the ONNX file it sits beside, and the state
pairs it declares must be the model's real state-in -> state-out pairs, sorted alike (Triton issue
8586). Triton itself is not run here; ONNX Runtime runs the copied model."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from avbind_testing import avbind_exe
from onnx import TensorProto, helper

from avbind.export.triton import TRITON_TYPES, sorted_pairing_holds, write_triton_repository
from avbind.models.weights import default_onnx


def parse_config(text: str) -> dict:
    """The fields the tests check, read back from config.pbtxt's text."""
    body = re.sub(r"#.*", "", text)

    def tensors(key: str) -> list[tuple[str, str, tuple[int, ...]]]:
        block = re.search(rf"\n{key} \[(.*?)\n\]", body, re.S).group(1)
        found = re.findall(r'name: "([^"]+)" data_type: (\w+) dims: \[ ([^\]]*) \]( reshape: \{ shape: \[ \] \})?',
                           block)
        return [(n, t, () if reshaped else tuple(int(x) for x in d.split(","))) for n, t, d, reshaped in found]

    states = re.findall(r'input_name: "([^"]+)"\s+output_name: "([^"]+)"\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \]'
                        r'\s+initial_state: \{\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \]\s+zero_data: (\w+)', body)
    return {
        "backend": re.search(r'backend: "(\w+)"', body).group(1),
        "max_batch_size": int(re.search(r"max_batch_size: (\d+)", body).group(1)),
        "input": tensors("input"), "output": tensors("output"),
        "states": [(i, o, t, tuple(int(x) for x in d.split(",")), it, tuple(int(x) for x in idims.split(",")), z)
                   for i, o, t, d, it, idims, z in states],
        "oldest": "oldest {" in body,
        "candidates": int(re.search(r"max_candidate_sequences: (\d+)", body).group(1)),
        "idle_us": int(re.search(r"max_sequence_idle_microseconds: (\d+)", body).group(1)),
        "controls": "control_input" in body,
    }


def _value_specs(model: onnx.ModelProto, values) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {v.name: (TRITON_TYPES[v.type.tensor_type.elem_type],
                     tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:])) for v in values}


def test_config_matches_the_shipped_step_model(tmp_path: Path) -> None:
    written = write_triton_repository(default_onnx(), tmp_path / "repo", max_candidate_sequences=32, idle_timeout_s=5)
    folder = tmp_path / "repo" / "avbind_step"
    config = parse_config((folder / "config.pbtxt").read_text())
    model = onnx.load(str(folder / "1" / "model.onnx"))
    ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])  # loads
    ins, outs = _value_specs(model, model.graph.input), _value_specs(model, model.graph.output)
    states = config["states"]
    state_names = {s[0] for s in states} | {s[1] for s in states}
    assert config["backend"] == "onnxruntime" and config["oldest"] and not config["controls"]
    assert config["candidates"] == 32 and config["idle_us"] == 5_000_000 and config["max_batch_size"] == 16
    # every non-state tensor listed once with its type and shape; no state among them
    assert {n: (t, d) for n, t, d in config["input"]} == {n: v for n, v in ins.items() if n not in state_names}
    assert {n: (t, d) for n, t, d in config["output"]} == {n: v for n, v in outs.items() if n not in state_names}
    assert {n for n, _, _ in config["input"]} == {"frame", "log_mel", "modality_mask"}
    # every state exactly once, its update the graph's own <name>_out, zero initial state of its shape
    graph_states = [n for n in ins if n not in {"frame", "log_mel", "modality_mask"}]
    assert sorted(s[0] for s in states) == sorted(graph_states) and len(states) == len(graph_states)
    for state_in, state_out, dtype, dims, init_type, init_dims, zero in states:
        assert state_out == f"{state_in}_out" and outs[state_out] == ins[state_in] == (dtype, dims)
        assert (init_type, init_dims, zero) == (dtype, dims, "true")
    # Triton issue 8586: sorted inputs pair with sorted outputs exactly as declared
    assert sorted_pairing_holds([(s[0], s[1]) for s in states])
    assert written.renamed == {}  # the shipped names already sort alike: the file is copied as is


def _toy_model(path: Path) -> list[tuple[str, str]]:
    """x plus two states whose names sort apart from their outputs' (shift_1 / shift_10)."""
    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3])

    nodes = [
        helper.make_node("Add", ["shift_1", "x"], ["shift_1_out"]),  # shift_1 accumulates x
        helper.make_node("Mul", ["shift_10", "two"], ["m"]),  # shift_10 doubles and adds x
        helper.make_node("Add", ["m", "x"], ["shift_10_out"]),
        helper.make_node("Sub", ["shift_1_out", "shift_10_out"], ["y"]),
    ]
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(nodes, "toy", [value("x"), value("shift_1"), value("shift_10")],
                              [value("y"), value("shift_1_out"), value("shift_10_out")], initializer=[two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return [("shift_1", "shift_1_out"), ("shift_10", "shift_10_out")]


def _run(path: Path, pairs: list[tuple[str, str]], xs: list[np.ndarray]) -> list[np.ndarray]:
    """Steps of a stateful model with state fed back along ``pairs`` (zero at the start)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = {i: np.zeros((1, 3), np.float32) for i, _ in pairs}
    ys = []
    for x in xs:
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x, **state}), strict=True))
        ys.append(out["y"])
        state = {i: out[o] for i, o in pairs}
    return ys


def test_state_names_that_sort_apart_are_renamed_and_the_pairs_still_hold(tmp_path: Path) -> None:
    toy = tmp_path / "toy.onnx"
    pairs = _toy_model(toy)
    assert not sorted_pairing_holds(pairs)  # the case Triton issue 8586 swaps
    written = write_triton_repository(toy, tmp_path / "repo", model_name="toy", states=pairs)
    config = parse_config((written.folder / "config.pbtxt").read_text())
    declared = [(s[0], s[1]) for s in config["states"]]
    assert sorted_pairing_holds(declared) and len(declared) == 2
    assert written.renamed["shift_1"] == "avbind_state_0" and written.renamed["shift_10"] == "avbind_state_1"
    xs = [np.full((1, 3), v, np.float32) for v in (1.0, 2.0, -0.5, 3.0)]
    expected = _run(toy, pairs, xs)
    # what Triton does with the copy: pair the sorted state inputs with the sorted state outputs
    ins, outs = sorted(i for i, _ in declared), sorted(o for _, o in declared)
    got = _run(written.folder / "1" / "model.onnx", list(zip(ins, outs, strict=True)), xs)
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), atol=1e-5)
    # and the naive sorted pairing of the original names would have swapped them: the test can fail
    swapped = list(zip(sorted(i for i, _ in pairs), sorted(o for _, o in pairs), strict=True))
    assert not np.allclose(np.concatenate(_run(toy, swapped, xs)), np.concatenate(expected))


def test_bad_state_pairs_are_refused(tmp_path: Path) -> None:
    toy = tmp_path / "toy.onnx"
    _toy_model(toy)
    with pytest.raises(ValueError, match="not an input/output pair"):
        write_triton_repository(toy, tmp_path / "repo", states=[("shift_1", "nope")])
    with pytest.raises(ValueError, match=r"avbind\.states"):
        write_triton_repository(toy, tmp_path / "repo")


def test_cli_writes_the_repository_from_an_onnx_file(tmp_path: Path) -> None:
    done = subprocess.run([avbind_exe(), "export", "--from-onnx", str(default_onnx()), "--triton", str(tmp_path),
                           "--triton-sequences", "8"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not run here" in done.stdout
    config = parse_config((tmp_path / "avbind_step" / "config.pbtxt").read_text())
    assert config["candidates"] == 8 and (tmp_path / "avbind_step" / "1" / "model.onnx").is_file()
    refused = subprocess.run([avbind_exe(), "export", "--from-onnx", str(default_onnx())], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "--triton" in refused.stderr
