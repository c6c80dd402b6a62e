"""Contrastive losses on embeddings: similarity functions, InfoNCE, margin contrastive, triplet.

Pure functions do the math (``info_nce``, ``margin_contrastive``, ``triplet_margin``, ...); thin
modules hold settings and InfoNCE's learnable temperature (``InfoNCELoss``, ...). Losses take
embeddings, never a model. This package imports nothing of contrastkit's but itself; see
docs/losses.md for which loss when.
"""

from contrastkit.losses.contrastive import MARGIN_CONTRASTIVE_CITATION, margin_contrastive, online_contrastive
from contrastkit.losses.info_nce import (INFO_NCE_CITATION, InfoNCEOutput, hard_negative_id_mask, in_batch_id_mask,
                                         info_nce, info_nce_with_stats, similarity_mask)
from contrastkit.losses.modules import (BatchHardTripletLoss, BatchSemiHardTripletLoss, InfoNCELoss,
                                        MarginContrastiveLoss, OnlineContrastiveLoss, TripletLoss)
from contrastkit.losses.similarity import (DistanceKind, SimilarityKind, distance_matrix, rowwise_distance,
                                           rowwise_similarity, similarity_matrix)
from contrastkit.losses.triplet import (BATCH_HARD_TRIPLET_CITATION, TRIPLET_CITATION, batch_hard_triplet,
                                        batch_semi_hard_triplet, triplet_margin)

__all__ = [
    "BATCH_HARD_TRIPLET_CITATION", "INFO_NCE_CITATION", "MARGIN_CONTRASTIVE_CITATION", "TRIPLET_CITATION",
    "BatchHardTripletLoss", "BatchSemiHardTripletLoss", "DistanceKind", "InfoNCELoss", "InfoNCEOutput",
    "MarginContrastiveLoss", "OnlineContrastiveLoss", "SimilarityKind", "TripletLoss",
    "batch_hard_triplet", "batch_semi_hard_triplet", "distance_matrix", "hard_negative_id_mask",
    "in_batch_id_mask", "info_nce", "info_nce_with_stats", "margin_contrastive", "online_contrastive",
    "rowwise_distance", "rowwise_similarity", "similarity_mask", "similarity_matrix", "triplet_margin",
]
