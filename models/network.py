"""AVBindNet: the whole audio-visual network, in clip form (training) and step form (streaming).

Both forms share every weight and every operation; the step form carries the temporal context as
explicit state tensors, listed by :meth:`AVBindNet.state_specs`, so a runtime can allocate, batch,
reset and export them without knowing the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avbind.models.audio import AudioEncoder
from avbind.models.config import ModelConfig
from avbind.models.fusion import TemporalFusion
from avbind.models.heads import Heads
from avbind.models.video import VideoBackbone

VIDEO, AUDIO = 0, 1  # columns of the modality mask


class InputShapeError(ValueError):
    """A public entry point got a tensor of the wrong shape or dtype."""


@dataclass(frozen=True)
class StateSpec:
    name: str  # input name; the updated tensor is output as f"{name}_out"
    shape: tuple[int, ...]  # per stream, without the leading batch axis


def check_input(name: str, x: object, expected: tuple[int | str, ...], dtype: torch.dtype = torch.float32) -> None:
    """Raise :class:`InputShapeError` naming the expected and received shape; str entries match any size."""
    want = "(" + ", ".join(str(e) for e in expected) + ")"
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"{name}: expected a tensor of shape {want} {dtype}, got {type(x).__name__}")
    ok = x.dim() == len(expected) and all(isinstance(e, str) or s == e for s, e in zip(x.shape, expected, strict=False))
    if not ok or x.dtype != dtype:
        raise InputShapeError(
            f"{name}: expected shape {want} dtype {str(dtype).removeprefix('torch.')}, "
            f"got {tuple(x.shape)} dtype {str(x.dtype).removeprefix('torch.')}"
        )


class AVBindNet(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.video = VideoBackbone(config.video)
        self.audio = AudioEncoder(config.audio, config.features.n_mels)
        self.fusion = TemporalFusion(config.video.last_channels, config.audio.embed_dim, config.fusion)
        self.heads = Heads(config.fusion.hidden_dim, config.heads)
        # Names travel with the weights (checkpoints, ONNX metadata); None until set from data.
        self.class_names: list[str] | None = None  # event classes, background excluded
        self.verb_names: list[str] | None = None
        self.noun_names: list[str] | None = None

    # ----- state -----

    def state_specs(self) -> list[StateSpec]:
        """Every state tensor, in the order :meth:`step` takes and returns them."""
        specs = [StateSpec(f"shift_{i}", shape) for i, shape in enumerate(self.video.state_shapes())]
        specs += [StateSpec(name, shape) for name, shape in self.fusion.state_shapes().items()]
        return specs

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Zeros: the state of a stream that has not seen a step yet (also: after a reset)."""
        device = device if device is not None else next(self.parameters()).device
        return [torch.zeros(batch, *spec.shape, device=device) for spec in self.state_specs()]

    def output_names(self) -> list[str]:
        names = ["event_logits", "relevance"]
        if self.config.heads.num_verbs:
            names += ["verb_logits", "noun_logits", "action_scores"]
        return names

    # ----- input checks -----

    def _frame_shape(self) -> tuple[int, int, int]:
        s = self.config.video.input_size
        return (3, s, s)

    def _audio_shape(self) -> tuple[int, int]:
        return (self.config.audio.window_frames, self.config.features.n_mels)

    def _check_state(self, state: list[torch.Tensor], batch: int | str) -> None:
        specs = self.state_specs()
        if len(state) != len(specs):
            raise InputShapeError(f"state: expected {len(specs)} tensors, got {len(state)}")
        for spec, tensor in zip(specs, state, strict=True):
            check_input(f"state {spec.name}", tensor, (batch, *spec.shape))

    # ----- forms -----

    def step(
        self,
        frame: torch.Tensor,
        log_mel: torch.Tensor,
        modality_mask: torch.Tensor | None,
        state: list[torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """One streaming step for N streams.

        frame: (N, 3, H, W) RGB in [0, 1]; log_mel: (N, window_frames, n_mels);
        modality_mask: (N, 2) with 1 where [video, audio] is present, or None for both present;
        state: tensors as in :meth:`state_specs`, each with a leading N.
        Returns outputs of shape (N, ...) and the new state.
        """
        check_input("frame", frame, ("batch", *self._frame_shape()))
        n = frame.shape[0]
        check_input("log_mel", log_mel, (n, *self._audio_shape()))
        if modality_mask is None:
            modality_mask = frame.new_ones(n, 2)
        check_input("modality_mask", modality_mask, (n, 2))
        self._check_state(state, n)
        n_shift = len(self.video.state_shapes())
        video, shift_state = self.video.forward_step(frame, state[:n_shift])
        audio = self.audio(log_mel)
        hidden, relevance, fusion_state = self.fusion.step(video, audio, modality_mask, state[n_shift:])
        outputs = {**self.heads(hidden, relevance), "relevance": relevance}
        return {name: outputs[name] for name in self.output_names()}, [*shift_state, *fusion_state]

    def forward(
        self,
        frames: torch.Tensor,
        log_mels: torch.Tensor,
        modality_mask: torch.Tensor | None = None,
        state: list[torch.Tensor] | None = None,
        return_features: bool = False,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Clip form over T steps of N streams, starting from ``state`` (zeros if None).

        frames: (N, T, 3, H, W); log_mels: (N, T, window_frames, n_mels); modality_mask: (N, T, 2).
        The CNNs run on all N*T inputs at once; the fusion and GRU then run step by step (they are
        small), which is exactly the step form's computation.
        Returns outputs of shape (N, T, ...) and the state after the last step; with
        ``return_features`` also the per-step encoder outputs "video_features" and "audio_features"
        and the fused "hidden" state the heads read (for training-time auxiliary and weak losses).
        """
        check_input("frames", frames, ("batch", "time", *self._frame_shape()))
        n, t = frames.shape[:2]
        check_input("log_mels", log_mels, (n, t, *self._audio_shape()))
        if modality_mask is None:
            modality_mask = frames.new_ones(n, t, 2)
        check_input("modality_mask", modality_mask, (n, t, 2))
        if state is None:
            state = self.initial_state(n, frames.device)
        self._check_state(state, n)
        n_shift = len(self.video.state_shapes())
        video, shift_state = self.video.forward_clip(frames, state[:n_shift])  # (N, T, Dv)
        audio = self.audio(log_mels.reshape(n * t, *self._audio_shape())).view(n, t, -1)  # (N, T, Da)
        outputs, fusion_state = self.forward_features(video, audio, modality_mask, state[n_shift:], return_features)
        return outputs, [*shift_state, *fusion_state]

    def forward_features(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        modality_mask: torch.Tensor,
        fusion_state: list[torch.Tensor],
        return_features: bool = False,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The clip form after the encoders, from their per-step features.

        :meth:`forward` runs it after both encoders; with frozen encoders, features computed once
        per clip train everything else through this same code (``avbind teach train``), so the
        trained part cannot drift from what the exported step form computes.
        video: (N, T, last_channels); audio: (N, T, embed_dim); modality_mask: (N, T, 2);
        fusion_state: the non-shift part of :meth:`initial_state`. Returns outputs as
        :meth:`forward` does and the fusion state after the last step.
        """
        t = video.shape[1]
        per_step: list[dict[str, torch.Tensor]] = []
        for i in range(t):
            hidden, relevance, fusion_state = self.fusion.step(
                video[:, i], audio[:, i], modality_mask[:, i], fusion_state
            )
            per_step.append({**self.heads(hidden, relevance), "relevance": relevance, "hidden": hidden})
        names = self.output_names() + (["hidden"] if return_features else [])
        outputs = {name: torch.stack([o[name] for o in per_step], dim=1) for name in names}
        if return_features:
            outputs.update(video_features=video, audio_features=audio)
        return outputs, fusion_state
