"""Size and cost of a model configuration: parameters, multiply-accumulates per step, state size.

MACs are counted by running one real streaming step under torch's FLOP counter, so the figure
follows the code rather than a formula that could drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from avbind.models.config import ModelConfig
from avbind.models.network import AVBindNet


@dataclass(frozen=True)
class ModelSummary:
    name: str
    parameters: int  # trainable and frozen weights
    macs_per_step: int  # multiply-accumulates for one stream's step (convolutions and matmuls)
    state_tensors: int  # number of state tensors carried between steps
    state_elements: int  # float32 values of state per stream
    input_size: int  # pixels, square
    n_mels: int
    audio_window_s: float  # s of audio one step sees
    step_rate_hz: float

    @property
    def state_bytes(self) -> int:
        return 4 * self.state_elements


def summarize(config: ModelConfig) -> ModelSummary:
    model = AVBindNet(config).eval()
    size = config.video.input_size
    frame = torch.rand(1, 3, size, size)
    log_mel = torch.zeros(1, config.audio.window_frames, config.features.n_mels)
    state = model.initial_state(1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.step(frame, log_mel, None, state)
    specs = model.state_specs()
    return ModelSummary(
        name=config.name,
        parameters=sum(p.numel() for p in model.parameters()),
        macs_per_step=counter.get_total_flops() // 2,  # the counter reports 2 FLOPs per MAC
        state_tensors=len(specs),
        state_elements=sum(int(torch.Size(s.shape).numel()) for s in specs),
        input_size=size,
        n_mels=config.features.n_mels,
        audio_window_s=config.audio_window_s,
        step_rate_hz=config.step_rate_hz,
    )
