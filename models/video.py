"""Video backbone: an inverted-residual CNN with an online temporal shift in its residual branches.

MobileNetV2 (avbind-s) and EfficientNet-Lite0 (avbind-lite0, ImageNet weights in
:mod:`avbind.models.pretrained`) are the same blocks from different stage tables in
:class:`~avbind.models.config.VideoDims`: built with typed blocks, rather than by patching a
finished model, so the clip and step forms are plain methods of the same modules and share every
weight.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from avbind.models.config import VideoDims
from avbind.models.temporal_shift import shift_clip, shift_step

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for inputs scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's weights were trained on (x - 127) / 128 of 8-bit pixels: in [0, 1] units,
# mean 127/255 and std 128/255 for every channel.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def same_pad(kernel: int, stride: int) -> nn.Module | None:
    """TensorFlow's "SAME" padding where it differs from symmetric padding: stride 2 on even sizes.

    Weights trained in TensorFlow (EfficientNet-Lite's) expect the extra row and column at the
    bottom and right; a fixed ZeroPad2d keeps the graph static for ONNX and TensorRT. Input sizes
    are multiples of 32, so every strided layer sees an even size.
    """
    if stride == 1:
        return None
    total = kernel - stride
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
    norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, tf_same: bool = False,
) -> nn.Sequential:
    pad = same_pad(kernel, stride) if tf_same else None
    return nn.Sequential(
        *([pad] if pad is not None else []),
        nn.Conv2d(c_in, c_out, kernel, stride, 0 if pad is not None else kernel // 2, groups=groups, bias=False),
        norm_layer(c_out),
        nn.ReLU6(inplace=True),
    )


@contextlib.contextmanager
def _frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Run a recomputation without moving BatchNorm's running statistics a second time.

    Activation checkpointing runs a block's forward again during backward; in training mode that
    would apply each batch's statistics to the running averages twice, and the checkpointed run
    would no longer be the same training as the plain one. The buffers are put back as they were.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _checkpointed(module: nn.Module, fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)`` keeping only its inputs for backward; the inside is recomputed there."""
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _frozen_norm_stats(module)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block; when it has a residual connection, its branch input is temporally shifted.

    The shift sits inside the residual branch (TSM's "residual shift"): the identity path keeps the
    current frame intact, so spatial features are not degraded by the shift.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, expand: int, shift_div: int,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, kernel: int = 3, tf_same: bool = False,
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
            conv_bn_relu(hidden, hidden, kernel, stride, groups=hidden, norm_layer=norm_layer, tf_same=tf_same),
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

    def forward_unshifted(self, x: torch.Tensor) -> torch.Tensor:
        """The block as its image weights were trained: no temporal shift."""
        return x + self.branch(x) if self.residual else self.branch(x)


class VideoBackbone(nn.Module):
    """Frames in [0, 1] -> per-frame feature vector of size ``dims.last_channels``."""

    def __init__(self, dims: VideoDims, norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.dims = dims
        lite = dims.family == "efficientnet_lite"
        if norm_layer is None:
            norm_layer = functools.partial(nn.BatchNorm2d, eps=1e-3) if lite else nn.BatchNorm2d
        mean, std = (LITE_MEAN, LITE_STD) if lite else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        c_in = make_divisible(dims.first_channels * dims.width_mult)
        self.stem = conv_bn_relu(3, c_in, stride=2, norm_layer=norm_layer, tf_same=lite)
        blocks = []
        for stage in dims.stages:
            expand, channels, repeats, stride = stage[:4]
            kernel = stage[4] if len(stage) > 4 else 3
            c_out = make_divisible(channels * dims.width_mult)
            for i in range(repeats):
                blocks.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand, dims.shift_div,
                                               norm_layer, kernel=kernel, tf_same=lite))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = conv_bn_relu(c_in, dims.last_channels, kernel=1, norm_layer=norm_layer)
        # Training memory is this backbone's activations (about 0.3 GB per avbind-s crop of 15
        # steps at 128 px, whatever the video's length): with checkpointing, each block keeps
        # only its input and recomputes the inside during backward, for one more forward pass.
        # The same training, bit for bit on CPU (see _frozen_norm_stats); set by the trainer.
        self.checkpointing = False
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
        saving = self.checkpointing and self.training and torch.is_grad_enabled()

        def run(module: nn.Module, fn: Callable[..., object], *args: object) -> object:
            return _checkpointed(module, fn, *args) if saving else fn(*args)

        def stem(x: torch.Tensor) -> torch.Tensor:
            return self.stem(self._normalize(x))

        x = run(self.stem, stem, frames.reshape(n * t, *frames.shape[2:]))  # (N*T, C, H/2, W/2)
        new_states = []
        pending = iter(states)
        for block in self.blocks:
            state = next(pending) if block.residual else None
            out = run(block, block.forward_clip, x, n, state)
            x = out[0]
            new_states.extend(out[1:])

        def head(x: torch.Tensor) -> torch.Tensor:
            return self.head(x).mean(dim=(2, 3))

        x = run(self.head, head, x)  # (N*T, last_channels)
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

    def forward_unshifted(self, frame: torch.Tensor) -> torch.Tensor:
        """frame: (N, 3, H, W) -> features (N, last_channels) with no temporal shift anywhere.

        The image network the pretrained weights came from; a still picture fed as a stream gives
        the same features from the second step on, which is how tests check the loaded weights.
        """
        x = self.stem(self._normalize(frame))
        for block in self.blocks:
            x = block.forward_unshifted(x)
        return self.head(x).mean(dim=(2, 3))
