"""Online (uni-directional) temporal shift, in clip form and step form.

A slice of ``fold = channels // shift_div`` channels at time t is replaced by the same slice from
time t-1; the replaced slice of time t becomes the state for t+1. Only the past is used, so a
frame's output never waits for the future (TSM, Lin et al. 2019, online variant).

Both forms build new tensors with ``torch.cat`` and slicing. In-place slice assignment (as in the
reference TSM code) turns into scatter ops in ONNX and breaks TensorRT parsing.
"""

from __future__ import annotations

import torch


def shift_clip(x: torch.Tensor, batch: int, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a clip folded into the batch axis.

    x: (batch * time, C, H, W) frames in time order per clip; state: (batch, fold, H, W), the
    slice from the step before the clip (zeros for a fresh clip).
    Returns the shifted x (same shape) and the new state: the last frame's slice.
    """
    bt, c, h, w = x.shape
    fold = state.shape[1]
    x = x.view(batch, bt // batch, c, h, w)  # (N, T, C, H, W)
    past = torch.cat([state.unsqueeze(1), x[:, :-1, :fold]], dim=1)  # (N, T, fold, H, W)
    shifted = torch.cat([past, x[:, :, fold:]], dim=2)  # (N, T, C, H, W)
    return shifted.reshape(bt, c, h, w), x[:, -1, :fold]


def shift_step(x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift one frame. x: (N, C, H, W); state: (N, fold, H, W). Returns shifted x and new state."""
    fold = state.shape[1]
    return torch.cat([state, x[:, fold:]], dim=1), x[:, :fold]
