"""Audio-visual fusion for one step, and the causal temporal aggregation that follows it.

Order per step (mid-level fusion before temporal aggregation, as in EPIC-Fusion's temporal binding):

    frame feature ─┐                                       ┌─> DAM event relevance p_t
                   ├─ project ─ mask ─ intra/inter attention ─ MFB bilinear ─ mix ─ GRU ─> heads
    audio window ──┘

AVIN and DAM pool over the whole video, which a live stream does not have. Here the video-level
mean becomes a running context: an exponentially weighted mean over past steps, carried as state,
so every piece has a step form and the clip form is the step form applied in order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avbind.models.config import FusionDims


def running_mean_update(
    total: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of a normalised exponential moving average.

    Keeping the weighted sum and the total weight separately makes the first step's mean equal to
    its input (no warm-up bias toward the zero initial state) and stays bounded on endless streams.
    Returns (mean, new_total, new_weight); weight: (N, 1).
    """
    total = decay * total + x
    weight = decay * weight + 1.0
    return total / weight, total, weight


class ModalityAttention(nn.Module):
    """AVIN intra- and inter-modality attention, made causal.

    intra: s = d * softmax(h * context(h)) * h       (each modality against its own context)
    inter: c_a = d * softmax(a * context(s_v)) * a   (each modality against the other's context)
    The softmax runs over channels; the factor d keeps the mean gain at 1.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.scale = 1.0 / math.sqrt(dim)

    def _gate(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.dim * torch.softmax(x * context * self.scale, dim=-1) * x

    def intra(self, v: torch.Tensor, a: torch.Tensor, ctx_v: torch.Tensor, ctx_a: torch.Tensor) -> tuple:
        """(s_v, s_a): each modality weighted against its own running context."""
        return self._gate(v, ctx_v), self._gate(a, ctx_a)

    def inter(self, v: torch.Tensor, a: torch.Tensor, ctx_sv: torch.Tensor, ctx_sa: torch.Tensor) -> tuple:
        """(c_v, c_a): each modality weighted against the other's attended running context."""
        return self._gate(v, ctx_sa), self._gate(a, ctx_sv)


class FactorizedBilinearPooling(nn.Module):
    """MFB: z = sum-pool_k(U^T v * V^T a), then power and L2 normalisation (Yu et al. 2017, AVIN)."""

    def __init__(self, dim_v: int, dim_a: int, out_dim: int, factor: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim, self.factor = out_dim, factor
        self.proj_v = nn.Linear(dim_v, out_dim * factor)
        self.proj_a = nn.Linear(dim_a, out_dim * factor)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        joint = self.dropout(self.proj_v(v) * self.proj_a(a))  # (N, out_dim * factor)
        z = joint.view(-1, self.out_dim, self.factor).sum(dim=2)  # (N, out_dim)
        # Signed square root; the epsilon keeps its gradient finite at zero.
        z = torch.sign(z) * (torch.sqrt(z.abs() + 1e-8) - 1e-4)
        return F.normalize(z, dim=-1)


class EventRelevance(nn.Module):
    """DAM event relevance: p_t = 1/2 (sigmoid(phi_V . f_A) + sigmoid(phi_A . f_V)).

    phi_M is a modality's global event feature (here: a projection of its running attended
    context) and f_M its local feature at this step; agreement across modalities means "event".
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.global_v, self.global_a = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.local_v, self.local_a = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, v: torch.Tensor, a: torch.Tensor, ctx_sv: torch.Tensor, ctx_sa: torch.Tensor) -> torch.Tensor:
        p_audio = torch.sigmoid((self.global_v(ctx_sv) * self.local_a(a)).sum(-1) * self.scale)
        p_video = torch.sigmoid((self.global_a(ctx_sa) * self.local_v(v)).sum(-1) * self.scale)
        return 0.5 * (p_audio + p_video)  # (N,)


class TemporalFusion(nn.Module):
    """Per-step fusion plus GRU aggregation; state: running contexts and the GRU hidden state."""

    N_CONTEXTS = 4  # ctx_v, ctx_a, ctx_sv, ctx_sa

    def __init__(self, video_dim: int, audio_dim: int, dims: FusionDims) -> None:
        super().__init__()
        d = dims.model_dim
        self.dims = dims
        self.decay = dims.context_decay
        self.video_proj = nn.Linear(video_dim, d)
        self.audio_proj = nn.Linear(audio_dim, d)
        # Learned stand-ins for an absent modality, so a missing camera or microphone is an input
        # the model was trained on (modality dropout), not zeros it never saw.
        self.missing_video = nn.Parameter(torch.zeros(d))
        self.missing_audio = nn.Parameter(torch.zeros(d))
        self.attention = ModalityAttention(d)
        self.bilinear = FactorizedBilinearPooling(d, d, dims.bilinear_dim, dims.bilinear_factor, dims.dropout)
        self.relevance = EventRelevance(d)
        self.mix = nn.Sequential(
            nn.LayerNorm(dims.bilinear_dim + 2 * d),
            nn.Linear(dims.bilinear_dim + 2 * d, d),
            nn.ReLU(inplace=True),
            nn.Dropout(dims.dropout),
        )
        self.gru = nn.GRUCell(d, dims.hidden_dim)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.dims.model_dim
        return {
            "context": (self.N_CONTEXTS, d),
            "context_weight": (1,),
            "temporal": (self.dims.hidden_dim,),
        }

    def step(
        self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """video: (N, Dv); audio: (N, Da); mask: (N, 2) as [video present, audio present].

        Returns (hidden (N, hidden_dim), relevance (N,), new state).
        """
        context, weight, hidden = state
        has_video, has_audio = mask[:, 0:1], mask[:, 1:2]
        v = torch.relu(self.video_proj(video)) * has_video + self.missing_video * (1 - has_video)
        a = torch.relu(self.audio_proj(audio)) * has_audio + self.missing_audio * (1 - has_audio)

        # Raw contexts first; the attended contexts need this step's attended features.
        raw = torch.stack([v, a], dim=1)  # (N, 2, d)
        ctx_raw, total_raw, new_weight = running_mean_update(context[:, :2], weight.unsqueeze(1), raw, self.decay)
        s_v, s_a = self.attention.intra(v, a, ctx_raw[:, 0], ctx_raw[:, 1])
        attended = torch.stack([s_v, s_a], dim=1)  # (N, 2, d)
        ctx_att, total_att, _ = running_mean_update(context[:, 2:], weight.unsqueeze(1), attended, self.decay)
        ctx_sv, ctx_sa = ctx_att[:, 0], ctx_att[:, 1]
        c_v, c_a = self.attention.inter(v, a, ctx_sv, ctx_sa)

        z = self.bilinear(c_v, c_a)  # (N, bilinear_dim)
        relevance = self.relevance(v, a, ctx_sv, ctx_sa)
        hidden = self.gru(self.mix(torch.cat([z, s_v, s_a], dim=-1)), hidden)
        new_context = torch.cat([total_raw, total_att], dim=1)  # (N, 4, d)
        return hidden, relevance, [new_context, new_weight.squeeze(1), hidden]
