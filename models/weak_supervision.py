"""Losses that learn *where* events are from labels that only say *which* events a video holds.

* **T-CAS + top-k MIL**: the per-step class logits form a temporal class activation sequence; a
  video's score for a class is the mean of its k highest steps, trained against the video label.
* **Background suppression** (BaS-Net): every untrimmed video contains background, so the base
  branch's background label is always 1, which alone is a trivial target. A filtered branch reads
  the hidden state multiplied by the foreground filter (the gated output's event probability) and
  must find the classes but *no* background; an L1 term keeps the filter sparse.
* **Denoised cross-video contrast** (DCC): mean-threshold pseudo-labels on the T-CAS (the weak
  trainer reads it from the encoders' own classifiers), trusted by how pure their K-means cluster
  of snippet features is; action and background region features from them, a memory bank
  of regions across videos, and InfoNCE pulling same-class regions together and pushing
  background and other classes away.
* **Dense video-class term** (our addition, measured in the ablation): whatever a step of a video
  shows, it is none of the classes the video lacks; every step's class choice (background
  excluded) is trained toward the video's classes. It is dense where MIL is sparse, and says which
  class, never whether.
* **Pseudo-label self-training** (our addition to DCC, measured in the ablation): the same
  denoised pseudo-labels also serve as per-step targets for the event output, each step weighted by
  its cluster confidence. MIL and the filter alone never say how much of a video is event; this
  does, from the model's own encoders.

K-means was the slow part of DCC in practice. Here it runs batched on the training device over the
batch's snippets, warm-started from the previous step's centroids, for a few iterations: a small
share of a training step, measured and reported by the weak trainer.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def topk_pool(cas: torch.Tensor, k: int) -> torch.Tensor:
    """(N, T, K) -> (N, K): each class's mean over its k highest steps (multiple-instance pooling)."""
    k = max(1, min(k, cas.shape[1]))
    return cas.topk(k, dim=1).values.mean(dim=1)


def mil_loss(cas: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Cross-entropy between softmax of the top-k video scores and the normalised multi-hot label.

    cas: (N, T, K) logits; targets: (N, K) 0/1. A video with several classes splits its target mass.
    """
    scores = topk_pool(cas, k)
    target = targets / targets.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return -(target * F.log_softmax(scores, dim=-1)).sum(dim=1).mean()


def video_class_loss(class_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Every step's class softmax against the video's classes: (N, T, C) logits, (N, C) multi-hot.

    Top-k MIL trains the k highest steps of each class and no others, which from scratch is a slow
    signal. A video label also says something of *every* step: whatever happens there, it is none
    of the classes the video lacks. This term puts that on the class choice alone (background
    excluded), so it holds at background steps too; whether a step is an event at all is left to
    the relevance (the foreground filter).
    """
    target = targets / targets.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return -(target.unsqueeze(1) * F.log_softmax(class_logits, dim=-1)).sum(-1).mean()


def background_suppression_losses(
    event_layer: torch.nn.Module, hidden: torch.Tensor, relevance: torch.Tensor, video_classes: torch.Tensor, k: int,
) -> dict[str, torch.Tensor]:
    """BaS-Net's base and filtered branches through the model's own event layer.

    hidden: (N, T, H); relevance: (N, T) in [0, 1]; video_classes: (N, C) multi-hot, no background.
    Returns "base" (target: classes + background), "filtered" (classes, no background) and "norm"
    (mean relevance, the L1 sparsity term).
    """
    ones, zeros = video_classes.new_ones(len(video_classes), 1), video_classes.new_zeros(len(video_classes), 1)
    base = mil_loss(event_layer(hidden), torch.cat([video_classes, ones], dim=1), k)
    filtered = mil_loss(event_layer(hidden * relevance.unsqueeze(-1)), torch.cat([video_classes, zeros], dim=1), k)
    return {"base": base, "filtered": filtered, "norm": relevance.mean()}


class WarmKMeans:
    """Batched K-means on the training device, warm-started from the last call's centroids.

    Snippet features of consecutive steps change little, so a few Lloyd iterations from the previous
    centroids reach what many iterations from a random start would; the first call starts from
    k-means++-style seeding. Empty clusters are re-seeded at the points farthest from their centroid.
    """

    def __init__(self, clusters: int, iterations: int = 3, seed: int = 0) -> None:
        if clusters < 1 or iterations < 1:
            raise ValueError(f"need clusters >= 1 and iterations >= 1, got {clusters}, {iterations}")
        self.clusters, self.iterations = clusters, iterations
        self.centroids: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)

    def _seed(self, x: torch.Tensor) -> torch.Tensor:
        first = int(torch.randint(len(x), (1,), generator=self.generator))
        centroids = [x[first]]
        for _ in range(1, self.clusters):
            d = torch.cdist(x, torch.stack(centroids)).min(dim=1).values ** 2
            pick = int(torch.multinomial(d.cpu() + 1e-12, 1, generator=self.generator))
            centroids.append(x[pick])
        return torch.stack(centroids)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (P, D) -> (P,) cluster index per point."""
        if len(x) < self.clusters:
            raise ValueError(f"K-means: {len(x)} points for {self.clusters} clusters")
        centroids = self._seed(x) if self.centroids is None or self.centroids.shape[1] != x.shape[1] else self.centroids
        centroids = centroids.to(x)
        for _ in range(self.iterations):
            distances = torch.cdist(x, centroids)
            assign = distances.argmin(dim=1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=self.clusters).to(x).unsqueeze(1)
            empty = counts.squeeze(1) == 0
            centroids = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp_min(1))
            if empty.any():  # re-seed at the worst-fitted points
                far = distances.gather(1, assign.unsqueeze(1)).squeeze(1).topk(int(empty.sum())).indices
                centroids[empty] = x[far]
        self.centroids = centroids
        return torch.cdist(x, centroids).argmin(dim=1)


def mean_threshold_pseudo_labels(scores: torch.Tensor, video_classes: torch.Tensor) -> torch.Tensor:
    """(N, T, C) class scores -> (N, T, C) 0/1: above the video's own mean for that class, only for
    classes the video label contains."""
    above = scores > scores.mean(dim=1, keepdim=True)
    return (above & (video_classes.unsqueeze(1) > 0)).float()


def cluster_confidence(pseudo: torch.Tensor, clusters: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """How much to trust each pseudo-label: the share of the snippet's cluster (within its video)
    that carries the same label. (N, T, C) 0/1 and (N, T) indices -> (N, T, C) in (0, 1]."""
    n, t, c = pseudo.shape
    one_hot = F.one_hot(clusters, num_clusters).float()  # (N, T, K)
    size = one_hot.sum(dim=1)  # (N, K)
    positives = torch.einsum("ntk,ntc->nkc", one_hot, pseudo)  # (N, K, C) label-1 members per cluster
    share_one = positives / size.clamp_min(1).unsqueeze(-1)
    share_one = torch.gather(share_one, 1, clusters.unsqueeze(-1).expand(n, t, c))  # back to snippets
    return torch.where(pseudo > 0, share_one, 1 - share_one)


def region_features(
    features: torch.Tensor, weights: torch.Tensor, regions: int, min_weight: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of (N, T, D) features over ``regions`` equal spans of T, with (N, T) weights.

    Returns unit-norm (N, regions, D) and a (N, regions) mask of regions with enough weight.
    """
    t = features.shape[1]
    bounds = torch.linspace(0, t, regions + 1).round().long().tolist()
    pooled, valid = [], []
    for a, b in itertools.pairwise(bounds):
        w = weights[:, a:b]
        total = w.sum(dim=1)
        pooled.append((w.unsqueeze(-1) * features[:, a:b]).sum(dim=1) / total.clamp_min(1e-6).unsqueeze(-1))
        valid.append(total > min_weight)
    return F.normalize(torch.stack(pooled, dim=1), dim=-1), torch.stack(valid, dim=1)


class RegionMemoryBank:
    """A first-in-first-out store of detached region features and their labels (class or background),
    so each step contrasts against regions of many earlier videos, not just this batch's."""

    def __init__(self, size: int, dim: int) -> None:
        self.features = torch.zeros(size, dim)
        self.labels = torch.full((size,), -1, dtype=torch.long)
        self.ids = torch.full((size,), -1, dtype=torch.long)  # region ids: an anchor is never its own positive
        self.cursor, self.filled = 0, 0

    def add(self, features: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        for f, lab, i in zip(features.detach().cpu(), labels.cpu(), ids.cpu(), strict=True):
            self.features[self.cursor], self.labels[self.cursor], self.ids[self.cursor] = f, lab, i
            self.cursor = (self.cursor + 1) % len(self.features)
            self.filled = min(self.filled + 1, len(self.features))

    def contents(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.features[: self.filled].to(device), self.labels[: self.filled].to(device),
                self.ids[: self.filled].to(device))


def info_nce(
    anchors: torch.Tensor, anchor_labels: torch.Tensor, anchor_ids: torch.Tensor,
    candidates: torch.Tensor, candidate_labels: torch.Tensor, candidate_ids: torch.Tensor, temperature: float,
) -> torch.Tensor:
    """-log(sum over positives / sum over all) per anchor, averaged over anchors with a positive.

    Positives share the anchor's class (from any video); negatives are background regions and other
    classes. ``*_ids`` identify regions so an anchor is never its own positive.
    """
    logits = anchors @ candidates.T / temperature  # (A, B)
    not_self = anchor_ids.unsqueeze(1) != candidate_ids.unsqueeze(0)
    positive = (anchor_labels.unsqueeze(1) == candidate_labels.unsqueeze(0)) & not_self
    has_positive = positive.any(dim=1)
    if not has_positive.any():
        return anchors.new_zeros(())
    logits = logits.masked_fill(~not_self, float("-inf"))
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (log_all - log_pos)[has_positive].mean()


def pseudo_label_loss(
    event_logits: torch.Tensor, scores: torch.Tensor, pseudo: torch.Tensor, confidence: torch.Tensor,
    classes: torch.Tensor,
) -> torch.Tensor:
    """Confidence-weighted cross-entropy of the event output against the pseudo-labels.

    event_logits: (N, T, C+1); scores, pseudo, confidence: (N, T, C); classes: (N, C) multi-hot.
    A step's target is its highest-scoring pseudo-labelled class, or background where none is;
    its weight is that label's confidence (for background: the mean over the video's classes).
    """
    background = event_logits.shape[-1] - 1
    foreground = pseudo.amax(dim=-1) > 0
    target = torch.where(foreground, (scores * pseudo).argmax(dim=-1), torch.full_like(foreground, background,
                                                                                       dtype=torch.long))
    own = torch.gather(confidence, -1, target.clamp_max(background - 1).unsqueeze(-1)).squeeze(-1)
    mean_over_classes = (confidence * classes.unsqueeze(1)).sum(-1) / classes.sum(-1, keepdim=True).clamp_min(1)
    weight = torch.where(foreground, own, mean_over_classes)
    ce = F.cross_entropy(event_logits.flatten(0, 1), target.flatten(), reduction="none")
    return (weight.flatten() * ce).sum() / weight.sum().clamp_min(1e-6)
