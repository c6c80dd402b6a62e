"""Thin ``nn.Module`` wrappers: each holds a loss's settings (and InfoNCE's learnable temperature).

The math lives in the pure functions; a module only remembers its options so a trainer can
call ``loss(anchors, positives)``. Each carries the ``citation`` of its paper(s).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from contrastkit.losses.contrastive import MARGIN_CONTRASTIVE_CITATION, margin_contrastive, online_contrastive
from contrastkit.losses.info_nce import INFO_NCE_CITATION, InfoNCEOutput, info_nce_with_stats
from contrastkit.losses.similarity import DistanceKind, SimilarityKind
from contrastkit.losses.triplet import (BATCH_HARD_TRIPLET_CITATION, TRIPLET_CITATION, batch_hard_triplet,
                                        batch_semi_hard_triplet, triplet_margin)


class InfoNCELoss(nn.Module):
    """InfoNCE (see :func:`info_nce_with_stats`) with a fixed or learnable temperature.

    A learnable temperature is held as a log-scale parameter, log(1/τ), initialised from
    ``temperature`` and clamped in the forward pass so that 1/τ ≤ ``max_scale`` (100, as CLIP).
    Past the bound the forward clamp passes no gradient, so a parameter left there would stay frozen
    even when the loss asks for a smaller scale: after each optimizer step call :meth:`clamp_scale_`
    (the trainers do), which puts it back on the bound in place, as open_clip does with CLIP's.

    Shapes: anchors, positives [B, D]; hard_negatives [B, K, D] or [M, D]; ids as the function.

    Example:
        >>> loss_fn = InfoNCELoss(temperature=0.05, learnable_temperature=True, mask_margin=0.1)
        >>> loss = loss_fn(q_emb, d_emb, positive_ids=doc_ids)
    """

    citation = INFO_NCE_CITATION

    def __init__(self, temperature: float = 0.05, *, learnable_temperature: bool = False,
                 max_scale: float = 100.0, similarity: SimilarityKind = "cosine", symmetric: bool = False,
                 label_smoothing: float = 0.0, mask_margin: float | None = None,
                 mask_ratio: float | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not temperature > 0 or not max_scale > 0 or 1.0 / temperature > max_scale * (1 + 1e-9):
            raise ValueError(f"need temperature > 0 and 1/temperature <= max_scale; got temperature "
                             f"{temperature}, max_scale {max_scale}")
        self.max_scale = max_scale
        self.options = dict(similarity=similarity, symmetric=symmetric, label_smoothing=label_smoothing,
                            mask_margin=mask_margin, mask_ratio=mask_ratio)
        self.fixed_temperature = None if learnable_temperature else temperature
        # dtype: the parameter's (torch's default, float32, unless given): float64 keeps log(1/τ) to its
        # last bits, where a float32 one moved to float64 would start at τ = 0.0499999983
        self.log_scale = (nn.Parameter(torch.tensor(math.log(1.0 / temperature), dtype=dtype))
                          if learnable_temperature else None)

    @property
    def temperature(self) -> float | Tensor:
        """τ: the fixed float, or 1 / min(exp(log_scale), max_scale) as a 0-dim tensor when learnable."""
        if self.log_scale is None:
            return self.fixed_temperature
        return self.log_scale.clamp(max=math.log(self.max_scale)).neg().exp()

    @torch.no_grad()
    def clamp_scale_(self) -> None:
        """Put a learnable log-scale past log(max_scale) back on it, in place (after an optimizer step)."""
        if self.log_scale is not None:
            self.log_scale.clamp_(max=math.log(self.max_scale))

    def forward(self, anchors: Tensor, positives: Tensor, hard_negatives: Tensor | None = None, *,
                anchor_ids: Tensor | None = None, positive_ids: Tensor | None = None,
                hard_negative_ids: Tensor | None = None, known_positives: Tensor | None = None) -> Tensor:
        """The loss, a 0-dim tensor."""
        return self.with_stats(anchors, positives, hard_negatives, anchor_ids=anchor_ids,
                               positive_ids=positive_ids, hard_negative_ids=hard_negative_ids,
                               known_positives=known_positives).loss

    def with_stats(self, anchors: Tensor, positives: Tensor, hard_negatives: Tensor | None = None, *,
                   anchor_ids: Tensor | None = None, positive_ids: Tensor | None = None,
                   hard_negative_ids: Tensor | None = None,
                   known_positives: Tensor | None = None) -> InfoNCEOutput:
        """The loss and the masking counts, as :func:`info_nce_with_stats`."""
        return info_nce_with_stats(anchors, positives, hard_negatives, temperature=self.temperature,
                                   anchor_ids=anchor_ids, positive_ids=positive_ids,
                                   hard_negative_ids=hard_negative_ids, known_positives=known_positives,
                                   **self.options)

    def extra_repr(self) -> str:
        with torch.no_grad():
            temperature = float(self.temperature)
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"temperature={temperature:.4g}, learnable_temperature={self.log_scale is not None}, {options}"


class MarginContrastiveLoss(nn.Module):
    """Margin contrastive loss on pairs (see :func:`margin_contrastive`); y = 1 similar, 0 dissimilar.

    Shapes: a, b [N, D]; labels [N].
    """

    citation = MARGIN_CONTRASTIVE_CITATION

    def __init__(self, margin: float = 0.5, *, distance: DistanceKind = "cosine", pos_margin: float = 0.0,
                 squared: bool = True) -> None:
        super().__init__()
        self.margin, self.distance, self.pos_margin, self.squared = margin, distance, pos_margin, squared

    def forward(self, a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
        return margin_contrastive(a, b, labels, margin=self.margin, distance=self.distance,
                                  pos_margin=self.pos_margin, squared=self.squared)


class OnlineContrastiveLoss(nn.Module):
    """Margin contrastive loss on the batch's hard pairs (see :func:`online_contrastive`).

    Shapes: a, b [N, D]; labels [N] of 0/1.
    """

    citation = MARGIN_CONTRASTIVE_CITATION

    def __init__(self, margin: float = 0.5, *, distance: DistanceKind = "cosine") -> None:
        super().__init__()
        self.margin, self.distance = margin, distance

    def forward(self, a: Tensor, b: Tensor, labels: Tensor) -> Tensor:
        return online_contrastive(a, b, labels, margin=self.margin, distance=self.distance)


class TripletLoss(nn.Module):
    """Triplet loss on explicit triplets (see :func:`triplet_margin`). Shapes: three [N, D]."""

    citation = TRIPLET_CITATION

    def __init__(self, margin: float = 1.0, *, distance: DistanceKind = "euclidean") -> None:
        super().__init__()
        self.margin, self.distance = margin, distance

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        return triplet_margin(anchors, positives, negatives, margin=self.margin, distance=self.distance)


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss from class labels (see :func:`batch_hard_triplet`). Shapes: [B, D], [B]."""

    citation = BATCH_HARD_TRIPLET_CITATION

    def __init__(self, margin: float = 1.0, *, distance: DistanceKind = "euclidean") -> None:
        super().__init__()
        self.margin, self.distance = margin, distance

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return batch_hard_triplet(embeddings, labels, margin=self.margin, distance=self.distance)


class BatchSemiHardTripletLoss(nn.Module):
    """Batch-semi-hard triplet loss from class labels (see :func:`batch_semi_hard_triplet`). Shapes: [B, D], [B]."""

    citation = TRIPLET_CITATION

    def __init__(self, margin: float = 1.0, *, distance: DistanceKind = "euclidean") -> None:
        super().__init__()
        self.margin, self.distance = margin, distance

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return batch_semi_hard_triplet(embeddings, labels, margin=self.margin, distance=self.distance)
