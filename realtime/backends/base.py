"""The one interface every inference backend implements.

A backend is created from a model file, runs one step for a batch of streams, and hands back the
outputs and the new state. The caller keeps the state (one entry per stream batch) so a scheduler
can batch streams, reset one stream, or drop one, without the backend knowing about streams.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from avbind.realtime.backends.model_file import ModelInfo

State = Any  # list[np.ndarray] for host backends; device-resident for TensorRT


@dataclass(frozen=True)
class BackendDescription:
    name: str  # "onnxruntime", "tensorrt", "torch"
    device: str  # e.g. "cpu", "cuda:0"
    precision: str  # "fp32", "fp16", "int8"
    detail: str = ""  # provider list, thread counts, engine file...

    def __str__(self) -> str:
        return f"{self.name} on {self.device} ({self.precision}{', ' + self.detail if self.detail else ''})"


class InputError(ValueError):
    """Step inputs of the wrong name, shape or dtype; the message names expected and received."""


class Backend(ABC):
    info: ModelInfo

    @abstractmethod
    def step(self, inputs: dict[str, np.ndarray], state: State) -> tuple[dict[str, np.ndarray], State]:
        """One step for N streams.

        inputs: "frame" (N, 3, H, W) float32 RGB in [0, 1], "log_mel" (N, window_frames, n_mels)
        float32, "modality_mask" (N, 2) float32 as [video present, audio present].
        Returns the head outputs (host arrays, leading N) and the new state.
        """

    @abstractmethod
    def describe(self) -> BackendDescription: ...

    def initial_state(self, batch: int) -> State:
        """State of N streams that have seen no step yet (all zeros)."""
        return [np.zeros((batch, *s.shape), dtype=np.float32) for s in self.info.states]

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release sessions and device memory."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> int:
        """Validate names, shapes and dtypes against the model file; return the batch size."""
        missing = [n for n in ("frame", "log_mel", "modality_mask") if n not in inputs]
        if missing:
            raise InputError(f"step inputs: missing {missing}, got {sorted(inputs)}")
        frame = inputs["frame"]
        batch = frame.shape[0] if getattr(frame, "ndim", 0) == 4 else -1
        expected = self.info.input_shapes(max(batch, 1))
        for name in ("frame", "log_mel", "modality_mask"):
            array = inputs[name]
            want = expected[name]
            if batch < 0 or not isinstance(array, np.ndarray) or array.shape != want or array.dtype != np.float32:
                got = f"{tuple(array.shape)} {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
                shown = ("N", *want[1:])
                raise InputError(f"{name}: expected shape ({', '.join(map(str, shown))}) float32, got {got}")
        return batch

    def check_state(self, state: list[np.ndarray], batch: int) -> None:
        if len(state) != len(self.info.states):
            raise InputError(f"state: expected {len(self.info.states)} tensors, got {len(state)}")
        for spec, array in zip(self.info.states, state, strict=True):
            if array.shape != (batch, *spec.shape) or array.dtype != np.float32:
                raise InputError(
                    f"state {spec.name}: expected shape {(batch, *spec.shape)} float32, got {array.shape} {array.dtype}"
                )
