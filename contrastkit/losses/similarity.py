"""Similarity and distance functions between embeddings: the one place that defines each kind.

Every loss in this package takes the kind as a parameter (pytorch-metric-learning style), so a
loss never hard-codes cosine. Similarities grow with closeness; distances shrink with it.

* ``"cosine"``: s(a, b) = a·b / (‖a‖ ‖b‖), in [-1, 1]; distance 1 − s, in [0, 2].
* ``"dot"``: s(a, b) = a·b (no distance: it is not one).
* ``"neg_euclidean"``: s(a, b) = −‖a − b‖₂; distance ``"euclidean"`` ‖a − b‖₂ and
  ``"squared_euclidean"`` ‖a − b‖₂² (FaceNet's).

Shapes: a matrix function compares every row of ``a`` [B, D] with every row of ``b`` [M, D] and
returns [B, M]; a row-wise function compares row i of ``a`` [B, D] with row i of ``b`` [B, D]
(giving [B]) or with the K rows ``b[i]`` of ``b`` [B, K, D] (giving [B, K]: per-anchor hard
negatives). Euclidean gradients are zero, not NaN, where two embeddings coincide.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

SimilarityKind = Literal["cosine", "dot", "neg_euclidean"]
DistanceKind = Literal["euclidean", "squared_euclidean", "cosine"]

SIMILARITY_KINDS: tuple[str, ...] = get_args(SimilarityKind)
DISTANCE_KINDS: tuple[str, ...] = get_args(DistanceKind)


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    """torch.cdist, in float32 at least: it has no bf16 or fp16 kernel on the CPU."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return torch.cdist(a.to(dtype), b.to(dtype))


def similarity_matrix(a: Tensor, b: Tensor, kind: SimilarityKind = "cosine") -> Tensor:
    """Similarity of every row of ``a`` [B, D] with every row of ``b`` [M, D]: returns [B, M]."""
    _check_kind(kind, SIMILARITY_KINDS, "similarity")
    _check_matrix_shapes(a, b)
    if kind == "cosine":
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    if kind == "dot":
        return a @ b.T
    return -_cdist(a, b)


def rowwise_similarity(a: Tensor, b: Tensor, kind: SimilarityKind = "cosine") -> Tensor:
    """Similarity of row i of ``a`` [B, D] with ``b[i]``: ``b`` [B, D] gives [B], [B, K, D] gives [B, K]."""
    _check_kind(kind, SIMILARITY_KINDS, "similarity")
    _check_rowwise_shapes(a, b)
    if kind == "neg_euclidean":
        return -_rowwise_euclidean(a, b)
    rows = a.unsqueeze(1)  # [B, 1, D], broadcast against [B, K, D]
    cols = b.unsqueeze(1) if b.dim() == 2 else b
    if kind == "cosine":
        rows, cols = F.normalize(rows, dim=-1), F.normalize(cols, dim=-1)
    sims = (rows * cols).sum(-1)
    return sims.squeeze(1) if b.dim() == 2 else sims


def distance_matrix(a: Tensor, b: Tensor, kind: DistanceKind = "euclidean") -> Tensor:
    """Distance of every row of ``a`` [B, D] to every row of ``b`` [M, D]: returns [B, M]."""
    _check_kind(kind, DISTANCE_KINDS, "distance")
    if kind == "cosine":
        return 1.0 - similarity_matrix(a, b, "cosine")
    _check_matrix_shapes(a, b)
    euclidean = _cdist(a, b)
    return euclidean if kind == "euclidean" else euclidean.pow(2)


def rowwise_distance(a: Tensor, b: Tensor, kind: DistanceKind = "euclidean") -> Tensor:
    """Distance of row i of ``a`` [B, D] to ``b[i]``: ``b`` [B, D] gives [B], [B, K, D] gives [B, K]."""
    _check_kind(kind, DISTANCE_KINDS, "distance")
    if kind == "cosine":
        return 1.0 - rowwise_similarity(a, b, "cosine")
    _check_rowwise_shapes(a, b)
    euclidean = _rowwise_euclidean(a, b)
    return euclidean if kind == "euclidean" else euclidean.pow(2)


def _rowwise_euclidean(a: Tensor, b: Tensor) -> Tensor:
    rows = a if b.dim() == 2 else a.unsqueeze(1)
    return torch.linalg.vector_norm(rows - b, dim=-1)


def _check_matrix_shapes(a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"expected a [B, D] and b [M, D] with the same D; got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_rowwise_shapes(a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or b.dim() not in (2, 3) or b.shape[0] != a.shape[0] or b.shape[-1] != a.shape[-1]:
        raise ValueError(f"expected a [B, D] and b [B, D] or [B, K, D]; got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_kind(kind: str, allowed: tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown {what} kind {kind!r}; expected one of {', '.join(map(repr, allowed))}")
