"""PyTorch backend: the reference the exported backends are checked against, and the eager baseline.

torch is imported when a backend is created, never at module import, so the runtime imports
without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avbind.realtime.backends.base import Backend, BackendDescription, State


class TorchBackend(Backend):
    def __init__(self, checkpoint: str | Path | object, device: str = "cpu", threads: int = 0) -> None:
        """checkpoint: a path written by ``save_checkpoint``, or an ``AVBindNet`` instance."""
        import torch

        from avbind.export.onnx import model_info
        from avbind.models.checkpoint import load_model
        from avbind.models.network import AVBindNet

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        model = checkpoint if isinstance(checkpoint, AVBindNet) else load_model(checkpoint)
        self.model = model.eval().to(device)
        self.device = device
        self.info = model_info(self.model)

    def step(self, inputs: dict[str, np.ndarray], state: State) -> tuple[dict[str, np.ndarray], State]:
        torch = self._torch
        batch = self.check_inputs(inputs)
        self.check_state(state, batch)

        def to_tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device)

        with torch.inference_mode():
            outputs, new_state = self.model.step(
                to_tensor(inputs["frame"]), to_tensor(inputs["log_mel"]), to_tensor(inputs["modality_mask"]),
                [to_tensor(s) for s in state],
            )
        return {k: v.cpu().numpy() for k, v in outputs.items()}, [s.cpu().numpy() for s in new_state]

    def describe(self) -> BackendDescription:
        return BackendDescription(
            "torch", self.device, "fp32", f"torch {self._torch.__version__}, {self._torch.get_num_threads()} threads"
        )
