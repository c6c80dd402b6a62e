"""Embedding-space health: the signals that say whether contrastive training helps or collapses.

Pure functions on [N, D] arrays or tensors (numpy or torch, any device), computed in float64:

- alignment (Wang & Isola 2020): E ||f(x) - f(y)||^alpha over positive pairs; lower is better.
- uniformity (Wang & Isola 2020): log E exp(-t ||f(x) - f(y)||^2) over all pairs; lower (more
  negative) is better spread; 0 means every embedding is the same point.
- positive vs negative similarity: mean and spread of cos(anchor, its positive) against the
  mean and the hardest (largest) cos(anchor, another pair's positive).
- effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised singular values,
  the number of directions the embeddings really use.

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", ICML 2020. Roy & Vetterli, "The effective rank: a measure of
effective dimensionality", EUSIPCO 2007.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["HealthReport", "alignment", "effective_rank", "embedding_health",
           "positive_negative_similarity", "similarity_values", "uniformity"]


def _matrix(x: Any, name: str = "x") -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] matrix, got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1, eps=1e-12)


def alignment(x: Any, y: Any, alpha: float = 2.0) -> float:
    """Alignment of positive pairs: mean over i of ||x_i - y_i||_2^alpha (Wang & Isola 2020).

    x [N, D], y [N, D]: row i of each is a positive pair, normally L2-normalised (the paper's
    setting, where the value lies in [0, 2^alpha]). 0 means every pair maps to one point.
    """
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("alignment needs at least one pair")
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: Any, t: float = 2.0, chunk_size: int = 1024) -> float:
    """Uniformity: log of the mean over pairs i < j of exp(-t ||x_i - x_j||^2) (Wang & Isola 2020).

    x [N, D], normally L2-normalised. 0 when all rows coincide (collapse); for points spread
    uniformly on the sphere S^{D-1} it tends to -2t + 2t^2/D for large D (-4 + 8/D at t = 2).
    Computed exactly in row chunks with a running log-sum-exp, so N in the tens of thousands fits.
    """
    x = _matrix(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    sq = (x * x).sum(dim=1)
    total = torch.tensor(-math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, n - 1, chunk_size):
        rows = x[start:start + chunk_size]
        d2 = (sq[start:start + chunk_size, None] + sq[None, :] - 2.0 * rows @ x.T).clamp_min(0.0)
        # Keep only pairs (i, j) with j > i.
        col = torch.arange(n, device=x.device)[None, :]
        row = torch.arange(start, start + rows.shape[0], device=x.device)[:, None]
        logits = (-t * d2).masked_fill(col <= row, -math.inf)
        total = torch.logaddexp(total, torch.logsumexp(logits.flatten(), dim=0))
    return float(total - math.log(n * (n - 1) / 2))


def effective_rank(x: Any, center: bool = False) -> float:
    """Effective rank exp(H(p)), p_i = s_i / sum(s), s the singular values (Roy & Vetterli 2007).

    x [N, D] -> a value in [1, min(N, D)]: n for an n x n identity, 1 for a rank-1 matrix.
    center: subtract the mean row first (measures spread around the mean, not the mean itself).
    A collapsing encoder drives it towards 1.
    """
    x = _matrix(x)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) == 0.0:
        raise ValueError("effective rank of an all-zero matrix is undefined")
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _pair_similarities(anchors: Any, positives: Any, groups: Sequence[Any] | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cosine similarities [N, N] of anchor i to positive j, negative mask [N, N], has-a-negative [N],
    each such anchor's hardest (largest) negative [M])."""
    a, p = _normalize(_matrix(anchors, "anchors")), _normalize(_matrix(positives, "positives"))
    if a.shape != p.shape:
        raise ValueError(f"anchors and positives must have one shape, got {tuple(a.shape)} "
                         f"and {tuple(p.shape)}")
    n = a.shape[0]
    sims = a @ p.T
    if groups is None:
        negative = ~torch.eye(n, dtype=torch.bool, device=sims.device)
    else:
        if len(groups) != n:
            raise ValueError(f"{n} pairs but {len(groups)} group labels")
        codes = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        g = torch.tensor([codes[x] for x in groups], device=sims.device)
        negative = g[:, None] != g[None, :]
    has_neg = negative.any(dim=1)
    if not bool(has_neg.any()):
        raise ValueError("no anchor has a negative: need at least two pairs from different groups")
    hard = sims.masked_fill(~negative, -math.inf).max(dim=1).values[has_neg]
    return sims, negative, has_neg, hard


def similarity_values(anchors: Any, positives: Any,
                      groups: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
    """The raw cosine similarities behind positive_negative_similarity, for histograms.

    anchors [N, D], positives [N, D], groups as in positive_negative_similarity. Returns float64
    arrays: "positive" [N] (each anchor with its positive), "hardest_negative" [M] (each anchor's
    largest negative, for the M anchors that have one) and "negative" (every anchor-negative pair).
    """
    sims, negative, _, hard = _pair_similarities(anchors, positives, groups)
    return {"positive": sims.diagonal().cpu().numpy(), "hardest_negative": hard.cpu().numpy(),
            "negative": sims[negative].cpu().numpy()}


def positive_negative_similarity(anchors: Any, positives: Any,
                                 groups: Sequence[Any] | None = None) -> dict[str, float]:
    """How far cos(anchor, its positive) stands above cos(anchor, other pairs' positives).

    anchors [N, D], positives [N, D]; row i of each is a pair, and positive j != i is a negative
    of anchor i unless groups[i] == groups[j] (use groups to mark pairs of one query, whose
    positives are not negatives of each other). Cosine similarity, so inputs need not be
    normalised. Returns pos_mean, pos_std, neg_mean (all negatives), hardneg_mean, hardneg_std
    (the largest negative per anchor), gap = pos_mean - hardneg_mean, and separated: the share
    of anchors whose positive beats their hardest negative (in-batch top-1 accuracy). The hardest
    negative grows with N, so compare these across checkpoints at one N. Memory is O(N^2): a few
    thousand pairs at a time.
    """
    sims, negative, has_neg, hard = _pair_similarities(anchors, positives, groups)
    pos = sims.diagonal()
    return {
        "pos_mean": float(pos.mean()),
        "pos_std": float(pos.std(unbiased=False)),
        "neg_mean": float(sims[negative].mean()),
        "hardneg_mean": float(hard.mean()),
        "hardneg_std": float(hard.std(unbiased=False)),
        "gap": float(pos.mean() - hard.mean()),
        "separated": float((pos[has_neg] > hard).double().mean()),
    }


@dataclass
class HealthReport:
    """Embedding-space health of a set of (anchor, positive) pairs; see embedding_health."""

    alignment: float
    uniformity: float
    pos_mean: float
    pos_std: float
    neg_mean: float
    hardneg_mean: float
    hardneg_std: float
    gap: float
    separated: float
    effective_rank: float
    n: int
    dim: int
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedding_health(anchors: Any, positives: Any, groups: Sequence[Any] | None = None, *,
                     alpha: float = 2.0, t: float = 2.0, collapse_uniformity: float = -0.5,
                     min_separation: float = 0.05, collapse_rank: float = 2.0) -> HealthReport:
    """Every health signal for (anchor, positive) pairs, with flags when something is wrong.

    anchors [N, D], positives [N, D] (L2-normalised here first, as the paper assumes).
    alignment over the pairs; uniformity = mean of the uniformity of anchors and of positives
    (Wang & Isola's training objective), the anchors counted once per group when `groups` says which
    pairs share one (an anchor repeated would add pairs at distance 0 and pull uniformity towards
    collapse); effective rank of anchors and positives stacked.
    Flags:
      "collapse": uniformity > collapse_uniformity (embeddings crowd into one point; 0 is total
        collapse, -3.98 is uniform on the 384-d sphere, all-MiniLM-L6-v2 sits at -2.8 to -3.4 on
        the real data at t = 2) or effective rank below collapse_rank;
      "no_separation": pos_mean - neg_mean < min_separation (positives are no closer than
        random pairs: the contrastive signal is gone).
    """
    a, p = _normalize(_matrix(anchors, "anchors")), _normalize(_matrix(positives, "positives"))
    sim = positive_negative_similarity(a, p, groups)
    distinct = a
    if groups is not None:  # a query with several relevant documents is one point, not several at distance 0
        first = {}
        for i, group in enumerate(groups):
            first.setdefault(group, i)
        if len(first) >= 2:
            distinct = a[torch.tensor(sorted(first.values()), device=a.device)]
    report = HealthReport(
        alignment=alignment(a, p, alpha),
        uniformity=(uniformity(distinct, t) + uniformity(p, t)) / 2,
        effective_rank=effective_rank(torch.cat([a, p])),
        n=a.shape[0], dim=a.shape[1], **sim)
    if report.uniformity > collapse_uniformity or report.effective_rank < collapse_rank:
        report.flags.append("collapse")
    if report.pos_mean - report.neg_mean < min_separation:
        report.flags.append("no_separation")
    return report
