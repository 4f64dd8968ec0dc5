"""Audio encoder: a small 2D CNN over one step's log-mel window.

The window is recomputed per step (it overlaps the previous one) but the log-mel frames it reads are
computed once each, incrementally, by :mod:`avbind.realtime.features.log_mel`.
"""

from __future__ import annotations

import torch
from torch import nn

from avbind.models.config import AudioDims


class AudioEncoder(nn.Module):
    """Log-mel window (N, window_frames, n_mels) -> audio feature (N, embed_dim)."""

    def __init__(self, dims: AudioDims, n_mels: int) -> None:
        super().__init__()
        self.dims = dims
        # Per-band normalisation learned from data: log-mel levels differ by tens of dB across bands.
        self.band_norm = nn.BatchNorm1d(n_mels)
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in dims.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, dims.embed_dim)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.band_norm(log_mel.transpose(1, 2)).transpose(1, 2)  # (N, F, M)
        x = self.convs(x.unsqueeze(1))  # (N, C, F / 2**k, M / 2**k)
        # Mean over frequency, then mean + max over time: max keeps short sounds (clicks) visible.
        x = x.mean(dim=3)  # (N, C, F')
        x = x.mean(dim=2) + x.amax(dim=2)  # (N, C)
        return torch.relu(self.proj(x))
