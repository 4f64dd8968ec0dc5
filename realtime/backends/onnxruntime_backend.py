"""ONNX Runtime backend: the default on CPU, and on NVIDIA GPUs through the CUDA provider."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from avbind.realtime.backends.base import Backend, BackendDescription, State
from avbind.realtime.backends.model_file import ModelFileError, read_model_info


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    # Small machines: one intra-op thread per core keeps a single step fast; inter-op parallelism
    # only adds scheduling jitter for a graph this sequential.
    intra_op_threads: int = 0  # 0: one per available core
    inter_op_threads: int = 1
    device: str = "cpu"  # "cpu", "cuda" or "auto" (CUDA provider when onnxruntime-gpu has it)
    optimization: str = "all"  # "basic", "extended" or "all" graph optimisations
    spin_wait: bool = True  # threads spin between steps: lower latency, more idle CPU


_OPT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxRuntimeBackend(Backend):
    def __init__(self, model_path: str | Path, options: OnnxRuntimeOptions | None = None) -> None:
        self.options = options or OnnxRuntimeOptions()
        if self.options.optimization not in _OPT_LEVELS:
            raise ValueError(f"optimization must be one of {sorted(_OPT_LEVELS)}, got {self.options.optimization!r}")
        self.info = read_model_info(model_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads or available_cores()
        so.inter_op_num_threads = self.options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = _OPT_LEVELS[self.options.optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spin_wait else "0")
        so.log_severity_level = 3  # errors only
        self.providers = self._providers(self.options.device)
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=self.providers)
        except Exception as err:  # onnxruntime's own error types; the first line names the problem
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFileError(f"{model_path}: ONNX Runtime cannot load the model: {first}") from err
        self._threads = so.intra_op_num_threads

    @staticmethod
    def _providers(device: str) -> list[str]:
        available = ort.get_available_providers()
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device == "cuda":
            raise RuntimeError(f"device 'cuda' asked for, but ONNX Runtime has only {available}")
        return ["CPUExecutionProvider"]

    def step(self, inputs: dict[str, np.ndarray], state: State) -> tuple[dict[str, np.ndarray], State]:
        batch = self.check_inputs(inputs)
        self.check_state(state, batch)
        feeds = {name: inputs[name] for name in ("frame", "log_mel", "modality_mask")}
        feeds.update({spec.name: array for spec, array in zip(self.info.states, state, strict=True)})
        results = self.session.run(list(self.info.output_names), feeds)
        n_out = len(self.info.outputs)
        return dict(zip(self.info.outputs, results[:n_out], strict=True)), results[n_out:]

    def describe(self) -> BackendDescription:
        device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        return BackendDescription(
            "onnxruntime", device, self.info.precision,
            f"onnxruntime {ort.__version__}, {self._threads} intra-op threads",
        )
