"""Margin contrastive loss on labelled pairs (Chopra et al. 2005, Hadsell et al. 2006), plain and online."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastkit.losses._common import (Reduction, check_embeddings, check_labels, check_same_shape, masked_mean,
                                         reduce_losses)
from contrastkit.losses.similarity import DistanceKind, rowwise_distance

MARGIN_CONTRASTIVE_CITATION = """
@inproceedings{chopra2005learning,
    title={Learning a Similarity Metric Discriminatively, with Application to Face Verification},
    author={Chopra, Sumit and Hadsell, Raia and LeCun, Yann},
    booktitle={CVPR}, year={2005}, pages={539--546}, doi={10.1109/CVPR.2005.202}
}
@inproceedings{hadsell2006dimensionality,
    title={Dimensionality Reduction by Learning an Invariant Mapping},
    author={Hadsell, Raia and Chopra, Sumit and LeCun, Yann},
    booktitle={CVPR}, year={2006}, pages={1735--1742}, doi={10.1109/CVPR.2006.100}
}
"""


def margin_contrastive(
    a: Tensor,
    b: Tensor,
    labels: Tensor,
    *,
    margin: float = 0.5,
    distance: DistanceKind = "cosine",
    pos_margin: float = 0.0,
    squared: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Margin contrastive loss: pull similar pairs together, push dissimilar ones beyond a margin.

        L_i = y_i · ½ · max(0, D_i − m₊)² + (1 − y_i) · ½ · max(0, m − D_i)²,   D_i = d(a_i, b_i)

    with m₊ = ``pos_margin`` = 0 by default, which is the form of Hadsell, Chopra & LeCun 2006
    (after Chopra, Hadsell & LeCun 2005) and of sentence-transformers' ContrastiveLoss.

    Label convention: **y = 1 for a similar pair, 0 for a dissimilar one** (as sentence-transformers).
    The papers write Y = 0 for similar and Y = 1 for dissimilar: pass ``y = 1 − Y``.

    ``squared=False`` gives the hinge form of pytorch-metric-learning's ContrastiveLoss,
    L_i = y_i · max(0, D_i − m₊) + (1 − y_i) · max(0, m − D_i) (no ½, no square).

    Args:
        a, b: [N, D]; row i of each forms pair i.
        labels: [N], 1 similar / 0 dissimilar (values in between weight the two terms).
        margin: m, the distance a dissimilar pair must exceed (0.5 suits cosine distance).
        distance: ``"cosine"`` (1 − cos), ``"euclidean"`` or ``"squared_euclidean"``.
        pos_margin: m₊, the distance below which a similar pair costs nothing.
        squared: the squared-hinge form (True, the paper's) or the plain hinge.
        reduction: ``"mean"`` over pairs, ``"sum"``, or ``"none"`` for [N].

    Example:
        >>> loss = margin_contrastive(emb1, emb2, torch.tensor([1, 0, 1]), margin=0.5)
    """
    _check_pairs(a, b, labels)
    return reduce_losses(_per_pair(rowwise_distance(a, b, distance), labels, margin, pos_margin, squared), reduction)


def online_contrastive(
    a: Tensor,
    b: Tensor,
    labels: Tensor,
    *,
    margin: float = 0.5,
    distance: DistanceKind = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Margin contrastive loss on the hard pairs of the batch only (the "online" variant).

    Hard positives are similar pairs farther apart than the closest dissimilar pair; hard
    negatives are dissimilar pairs closer than the farthest similar pair (as sentence-transformers'
    OnlineContrastiveLoss). Each selected pair costs the same as in :func:`margin_contrastive`:

        L_i = y_i · ½ · D_i² + (1 − y_i) · ½ · max(0, m − D_i)²

    A batch with no dissimilar pair keeps every similar pair, and vice versa (sentence-transformers
    instead compares with the mean distance of the one class present). Label convention as
    :func:`margin_contrastive`: y = 1 similar, 0 dissimilar (hard 0/1 labels here).

    Args:
        a, b: [N, D]; labels: [N] of 0/1.
        margin, distance: as :func:`margin_contrastive`.
        reduction: ``"mean"`` over the selected pairs (0 if none), or ``"sum"``
            (sentence-transformers sums, without the ½: its value is twice our ``"sum"``).
    """
    _check_pairs(a, b, labels)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"online_contrastive reduction must be 'mean' or 'sum'; got {reduction!r}")
    distances = rowwise_distance(a, b, distance)
    hard = _hard_pairs(distances.detach(), labels)
    losses = _per_pair(distances, labels, margin, 0.0, True)
    if reduction == "sum":
        return losses.where(hard, losses.new_zeros(())).sum()
    return masked_mean(losses, hard)


def _hard_pairs(distances: Tensor, labels: Tensor) -> Tensor:
    """Bool [N]: positives farther than the closest negative, negatives closer than the farthest positive."""
    positive, negative = labels == 1, labels == 0
    closest_negative = distances.masked_fill(~negative, math.inf).min()
    farthest_positive = distances.masked_fill(~positive, -math.inf).max()
    # With one class absent its threshold is ±inf: then every pair of the other class is kept.
    closest_negative = torch.where(negative.any(), closest_negative, -math.inf)
    farthest_positive = torch.where(positive.any(), farthest_positive, math.inf)
    return (positive & (distances > closest_negative)) | (negative & (distances < farthest_positive))


def _per_pair(distances: Tensor, labels: Tensor, margin: float, pos_margin: float, squared: bool) -> Tensor:
    pull = (distances - pos_margin).clamp(min=0)
    push = (margin - distances).clamp(min=0)
    if squared:
        pull, push = 0.5 * pull.pow(2), 0.5 * push.pow(2)
    y = labels.to(distances.dtype)
    return y * pull + (1 - y) * push


def _check_pairs(a: Tensor, b: Tensor, labels: Tensor) -> None:
    check_embeddings("a", a)
    check_same_shape(a=a, b=b)
    check_labels("labels", labels, a.shape[0])
