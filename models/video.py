"""Video backbone: MobileNetV2 with an online temporal shift in its residual branches.

Built from the stage table in :class:`~avbind.models.config.VideoDims` with typed blocks, rather
than by patching a finished torchvision model, so the clip and step forms are plain methods of the
same modules and share every weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from avbind.models.config import VideoDims
from avbind.models.temporal_shift import shift_clip, shift_step

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for inputs scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
    norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        norm_layer(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; when it has a residual connection, its branch input is temporally shifted.

    The shift sits inside the residual branch (TSM's "residual shift"): the identity path keeps the
    current frame intact, so spatial features are not degraded by the shift.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, expand: int, shift_div: int,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = c_in * expand
        self.stride = stride
        # Only blocks with an identity path are shifted, so "residual" and "shifted" coincide.
        self.residual = stride == 1 and c_in == c_out
        self.fold = c_in // shift_div if self.residual else 0
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(c_in, hidden, kernel=1, norm_layer=norm_layer))
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden, norm_layer=norm_layer),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            norm_layer(c_out),
        ]
        self.branch = nn.Sequential(*layers)

    def forward_clip(self, x: torch.Tensor, batch: int, state: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """x: (N*T, C, H, W). Returns (y,) or, for a shifted block, (y, new_state)."""
        if not self.residual:
            return (self.branch(x),)
        shifted, new_state = shift_clip(x, batch, state)
        return x + self.branch(shifted), new_state

    def forward_step(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """x: (N, C, H, W). Returns (y,) or, for a shifted block, (y, new_state)."""
        if not self.residual:
            return (self.branch(x),)
        shifted, new_state = shift_step(x, state)
        return x + self.branch(shifted), new_state


class VideoBackbone(nn.Module):
    """Frames in [0, 1] -> per-frame feature vector of size ``dims.last_channels``."""

    def __init__(self, dims: VideoDims, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.dims = dims
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        c_in = make_divisible(dims.first_channels * dims.width_mult)
        self.stem = conv_bn_relu(3, c_in, stride=2, norm_layer=norm_layer)
        blocks = []
        for expand, channels, repeats, stride in dims.stages:
            c_out = make_divisible(channels * dims.width_mult)
            for i in range(repeats):
                blocks.append(
                    InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand, dims.shift_div, norm_layer)
                )
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = conv_bn_relu(c_in, dims.last_channels, kernel=1, norm_layer=norm_layer)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def state_shapes(self) -> list[tuple[int, int, int]]:
        """(fold, H, W) of each shifted block's state, in block order, for a single stream."""
        shapes = []
        size = self.dims.input_size // 2  # after the stride-2 stem
        for block in self.blocks:
            if block.residual:
                shapes.append((block.fold, size, size))
            size //= block.stride
        return shapes

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_clip(self, frames: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """frames: (N, T, 3, H, W); states: one (N, fold, h, w) per shifted block.

        Returns features (N, T, last_channels) and the states after the clip's last frame.
        """
        n, t = frames.shape[:2]
        x = self.stem(self._normalize(frames.reshape(n * t, *frames.shape[2:])))  # (N*T, C, H/2, W/2)
        new_states = []
        pending = iter(states)
        for block in self.blocks:
            out = block.forward_clip(x, n, next(pending) if block.residual else None)
            x = out[0]
            new_states.extend(out[1:])
        x = self.head(x).mean(dim=(2, 3))  # (N*T, last_channels)
        return x.view(n, t, -1), new_states

    def forward_step(self, frame: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """frame: (N, 3, H, W). Returns features (N, last_channels) and the new states."""
        x = self.stem(self._normalize(frame))
        new_states = []
        pending = iter(states)
        for block in self.blocks:
            out = block.forward_step(x, next(pending) if block.residual else None)
            x = out[0]
            new_states.extend(out[1:])
        return self.head(x).mean(dim=(2, 3)), new_states
