"""Output heads: event classes plus background, and optional verb/noun/action heads."""

from __future__ import annotations

import torch
from torch import nn

from avbind.models.config import HeadDims


class VerbNounHead(nn.Module):
    """Verb and noun branches that gate each other; action = prior(verb, noun) * P(verb) * P(noun).

    The mutual gating follows SAOA's symbiotic attention: what is being done informs which object
    matters and vice versa. The prior holds verb-noun co-occurrence from the training set (set it
    with :meth:`set_prior`); it starts uniform so an untrained model ranks by P(verb) P(noun).
    """

    def __init__(self, in_dim: int, dims: HeadDims) -> None:
        super().__init__()
        d = dims.verb_noun_dim
        self.verb_branch = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(inplace=True))
        self.noun_branch = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(inplace=True))
        self.noun_gates_verb = nn.Linear(d, d)
        self.verb_gates_noun = nn.Linear(d, d)
        self.verb = nn.Linear(d, dims.num_verbs)
        self.noun = nn.Linear(d, dims.num_nouns)
        self.register_buffer("prior", torch.ones(dims.num_verbs, dims.num_nouns))

    def set_prior(self, counts: torch.Tensor, smoothing: float = 1.0) -> None:
        """Set the action prior from a (num_verbs, num_nouns) count matrix, normalised to sum 1."""
        if counts.shape != self.prior.shape:
            raise ValueError(f"prior counts: expected shape {tuple(self.prior.shape)}, got {tuple(counts.shape)}")
        smoothed = counts.to(self.prior) + smoothing
        self.prior.copy_(smoothed / smoothed.sum())

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        verb, noun = self.verb_branch(h), self.noun_branch(h)
        verb_gated = verb * torch.sigmoid(self.noun_gates_verb(noun))
        noun_gated = noun * torch.sigmoid(self.verb_gates_noun(verb))
        verb_logits, noun_logits = self.verb(verb_gated), self.noun(noun_gated)
        p_verb, p_noun = verb_logits.softmax(-1), noun_logits.softmax(-1)
        action = self.prior * p_verb.unsqueeze(-1) * p_noun.unsqueeze(-2)  # (N, V, N_nouns)
        return {"verb_logits": verb_logits, "noun_logits": noun_logits, "action_scores": action}


def relevance_gated_logits(logits: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Event logits whose softmax is ``[f * softmax(class_logits), 1 - f]``, with the foreground
    ``f = relevance * (1 - softmax(logits)[background])``.

    A weakly trained model learns its classes from video-level labels and where events are from
    its foreground filter (BaS-Net); this folds both into the one output every runtime already
    reads, so a weak model streams, exports and evaluates like a supervised one. The filter is a
    noisy-or of two background detectors: the DAM relevance sees only this step's features against
    running contexts, so it cannot tell an event from the event's object standing idle while some
    other sound plays; the head's own background output reads the aggregated state, which can.
    logits: (..., C + 1), background last; relevance: (...,).
    """
    foreground = relevance * (1 - torch.softmax(logits, dim=-1)[..., -1])
    f = foreground.clamp(1e-6, 1 - 1e-6).unsqueeze(-1)
    return torch.cat([torch.log(f) + torch.log_softmax(logits[..., :-1], dim=-1), torch.log1p(-f)], dim=-1)


class Heads(nn.Module):
    """All heads over the aggregated hidden state of one step."""

    def __init__(self, in_dim: int, dims: HeadDims) -> None:
        super().__init__()
        self.num_classes = dims.num_classes
        self.gate_by_relevance = dims.gate_by_relevance
        self.event = nn.Linear(in_dim, dims.num_classes + 1)  # last index: background
        self.verb_noun = VerbNounHead(in_dim, dims) if dims.num_verbs else None

    def forward(self, h: torch.Tensor, relevance: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.event(h)
        if self.gate_by_relevance:
            if relevance is None:
                raise ValueError("a relevance-gated head needs the step's relevance")
            logits = relevance_gated_logits(logits, relevance)
        out = {"event_logits": logits}
        if self.verb_noun is not None:
            out.update(self.verb_noun(h))
        return out
