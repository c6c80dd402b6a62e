"""Triplet margin loss: explicit triplets, and batch-hard / batch-semi-hard mining from class labels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastkit.losses._common import (Reduction, check_embeddings, check_labels, check_same_shape, masked_mean,
                                         reduce_losses)
from contrastkit.losses.similarity import DistanceKind, distance_matrix, rowwise_distance

TRIPLET_CITATION = """
@inproceedings{schroff2015facenet,
    title={FaceNet: A Unified Embedding for Face Recognition and Clustering},
    author={Schroff, Florian and Kalenichenko, Dmitry and Philbin, James},
    booktitle={CVPR}, year={2015}, pages={815--823}, doi={10.1109/CVPR.2015.7298682}
}
"""

BATCH_HARD_TRIPLET_CITATION = """
@misc{hermans2017defense,
    title={In Defense of the Triplet Loss for Person Re-Identification},
    author={Alexander Hermans and Lucas Beyer and Bastian Leibe},
    year={2017}, eprint={1703.07737}, archivePrefix={arXiv}, primaryClass={cs.CV}
}
"""


def triplet_margin(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor,
    *,
    margin: float = 1.0,
    distance: DistanceKind = "euclidean",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Triplet loss on explicit triplets: the negative must be a margin farther than the positive.

        L_i = max(0, d(a_i, p_i) − d(a_i, n_i) + m)      (Schroff et al. 2015, FaceNet)

    Args:
        anchors, positives, negatives: [N, D]; row i of each forms triplet i.
        margin: m (1.0 as ``torch.nn.TripletMarginLoss``; sentence-transformers uses 5 with
            euclidean distance, FaceNet 0.2 with squared euclidean on unit vectors).
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"`` (1 − cos).
        reduction: ``"mean"`` over triplets, ``"sum"``, or ``"none"`` for [N].

    Example:
        >>> loss = triplet_margin(q, pos, neg, margin=0.2, distance="cosine")
    """
    check_embeddings("anchors", anchors)
    check_same_shape(anchors=anchors, positives=positives, negatives=negatives)
    d_ap = rowwise_distance(anchors, positives, distance)
    d_an = rowwise_distance(anchors, negatives, distance)
    return reduce_losses((d_ap - d_an + margin).clamp(min=0), reduction)


def batch_hard_triplet(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    distance: DistanceKind = "euclidean",
) -> Tensor:
    r"""Batch-hard triplet loss: each anchor against its farthest positive and closest negative.

        L = mean_a max(0, max_{p: y_p = y_a, p ≠ a} d(a, p) − min_{n: y_n ≠ y_a} d(a, n) + m)

    (Hermans, Beyer & Leibe 2017). The mean runs over anchors that have at least one positive
    and one negative in the batch (as pytorch-metric-learning's BatchHardMiner); 0 if none has.

    Args:
        embeddings: [B, D]; labels: integer class ids [B] (same id = same class = positives).
        margin, distance: as :func:`triplet_margin`.
    """
    distances, positive, negative = _label_masks(embeddings, labels, distance)
    hardest_positive = distances.masked_fill(~positive, -math.inf).max(dim=1).values
    hardest_negative = distances.masked_fill(~negative, math.inf).min(dim=1).values
    valid = positive.any(dim=1) & negative.any(dim=1)
    return masked_mean((hardest_positive - hardest_negative + margin).clamp(min=0), valid)


def batch_semi_hard_triplet(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    distance: DistanceKind = "euclidean",
) -> Tensor:
    r"""Batch-semi-hard triplet loss: every (anchor, positive) pair against a semi-hard negative.

    For each pair (a, p) with y_a = y_p, a ≠ p, the negative is the closest one still farther
    than the positive, n* = argmin {d(a, n) : d(a, n) > d(a, p)} (Schroff et al. 2015, FaceNet;
    the rule of TensorFlow Addons' and sentence-transformers' semi-hard losses); where no negative
    is farther, the farthest negative is used instead. Then

        L = mean_{(a, p)} max(0, d(a, p) − d(a, n*) + m)

    over pairs whose anchor has at least one negative; 0 if there are none.

    Args:
        embeddings: [B, D]; labels: integer class ids [B].
        margin, distance: as :func:`triplet_margin`.
    """
    distances, positive, negative = _label_masks(embeddings, labels, distance)
    anchors, positives = positive.nonzero(as_tuple=True)  # every (a, p) pair, anchor by anchor
    with torch.no_grad():
        negatives, has_negative = _semi_hard_negatives(distances, negative, anchors, positives)
    d_ap, d_an = distances[anchors, positives], distances[anchors, negatives]
    return masked_mean((d_ap - d_an + margin).clamp(min=0), has_negative)


def _semi_hard_negatives(distances: Tensor, negative: Tensor, anchors: Tensor,
                         positives: Tensor) -> tuple[Tensor, Tensor]:
    """Index [P] of each pair's semi-hard negative (farthest if none is farther), and whether one exists [P]."""
    if len(anchors) == 0:
        return anchors, anchors.bool()
    batch = distances.shape[0]
    ascending, order = distances.masked_fill(~negative, math.inf).sort(dim=1)  # each row's negatives first
    num_negatives = negative.sum(1)[anchors]
    # searchsorted wants one row of queries per sorted row: lay pairs out as [B, most pairs of one anchor].
    per_anchor = torch.bincount(anchors, minlength=batch)
    slot = torch.arange(len(anchors), device=anchors.device) - (per_anchor.cumsum(0) - per_anchor)[anchors]
    queries = distances.new_zeros(batch, int(per_anchor.max()))
    queries[anchors, slot] = distances[anchors, positives]
    first_farther = torch.searchsorted(ascending, queries, right=True)[anchors, slot]
    rank = torch.where(first_farther < num_negatives, first_farther, num_negatives - 1).clamp(min=0)
    return order[anchors, rank], num_negatives > 0


def _label_masks(embeddings: Tensor, labels: Tensor, distance: DistanceKind) -> tuple[Tensor, Tensor, Tensor]:
    """Distances [B, B] and bool masks [B, B] of positives (same label, not self) and negatives."""
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0])
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return distance_matrix(embeddings, embeddings, distance), positive, ~same
