"""Margin contrastive losses against sentence-transformers, pytorch-metric-learning and a naive loop; gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.losses import ContrastiveLoss as PMLContrastiveLoss
from pytorch_metric_learning.reducers import MeanReducer
from sentence_transformers.sentence_transformer.losses import (ContrastiveLoss, OnlineContrastiveLoss,
                                                               SiameseDistanceMetric)

from contrastkit.losses import margin_contrastive, online_contrastive, rowwise_distance


def noise(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


LABELS = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1])


def euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' EUCLIDEAN adds eps=1e-6 inside the norm; the same metric without it."""
    return F.pairwise_distance(x, y, p=2, eps=0.0)


ST_DISTANCES = {"cosine": SiameseDistanceMetric.COSINE_DISTANCE, "euclidean": euclidean}


@pytest.mark.parametrize("distance, margin", [("cosine", 0.5), ("cosine", 1.2), ("euclidean", 4.0)])
def test_matches_sentence_transformers_contrastive_loss(distance, margin, st_loss):
    a, b = noise(12, 8, seed=1), noise(12, 8, seed=2)
    want = st_loss(ContrastiveLoss, [a, b], LABELS, distance_metric=ST_DISTANCES[distance], margin=margin)
    got = margin_contrastive(a, b, LABELS, margin=margin, distance=distance)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def pml_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """pytorch-metric-learning index pairs (anchor, positive, anchor, negative) into cat([a, b])."""
    n = len(labels)
    pos, neg = torch.where(labels == 1)[0], torch.where(labels == 0)[0]
    return pos, pos + n, neg, neg + n


@pytest.mark.parametrize("reducer", [MeanReducer(), None])  # None: PML's default, AvgNonZeroReducer
def test_hinge_form_matches_pytorch_metric_learning_contrastive_loss(reducer):
    """PML reduces positive and negative pairs separately and adds the two: we do it from reduction='none'."""
    a, b = noise(12, 6, seed=3), noise(12, 6, seed=4)
    pml = PMLContrastiveLoss(pos_margin=2.5, neg_margin=3.5, distance=LpDistance(normalize_embeddings=False),
                             **({} if reducer is None else {"reducer": reducer}))
    want = pml(torch.cat([a, b]), indices_tuple=pml_pairs(LABELS))
    per_pair = margin_contrastive(a, b, LABELS, margin=3.5, pos_margin=2.5, distance="euclidean", squared=False,
                                  reduction="none")
    positive, negative = per_pair[LABELS == 1], per_pair[LABELS == 0]
    if reducer is None:
        positive, negative = positive[positive > 0], negative[negative > 0]
    assert len(positive) and len(negative), "both halves should contribute"
    torch.testing.assert_close(positive.mean() + negative.mean(), want, rtol=0, atol=1e-6)


def test_cosine_hinge_form_matches_pytorch_metric_learning_on_similarities():
    """PML puts cosine margins on the similarity: its pos_margin is 1 − m₊ and its neg_margin 1 − m."""
    a, b = noise(12, 6, seed=5), noise(12, 6, seed=6)
    pml = PMLContrastiveLoss(pos_margin=1 - 0.1, neg_margin=1 - 0.9, distance=CosineSimilarity(), reducer=MeanReducer())
    want = pml(torch.cat([a, b]), indices_tuple=pml_pairs(LABELS))
    per_pair = margin_contrastive(a, b, LABELS, margin=0.9, pos_margin=0.1, squared=False, reduction="none")
    torch.testing.assert_close(per_pair[LABELS == 1].mean() + per_pair[LABELS == 0].mean(), want, rtol=0, atol=1e-6)


def test_label_one_means_similar():
    x = noise(2, 4, seed=7)
    labels = torch.tensor([1, 0])
    per_pair = margin_contrastive(x, x, labels, margin=0.5, reduction="none")
    assert per_pair[0].item() == pytest.approx(0.0, abs=1e-12)  # identical and similar: no cost
    assert per_pair[1].item() == pytest.approx(0.5 * 0.5**2)  # identical but dissimilar: ½ m²


def mixed_pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs for LABELS with easy positives (near copies) among random ones, so the online selection bites."""
    a, b = noise(12, 8, seed=seed), noise(12, 8, seed=seed + 1)
    easy = (LABELS == 1) & (torch.arange(12) % 3 != 0)
    return a, torch.where(easy.unsqueeze(1), a + 0.3 * b, b)


@pytest.mark.parametrize("distance, margin", [("cosine", 1.8), ("cosine", 2.0), ("euclidean", 6.0)])
def test_online_matches_sentence_transformers_online_contrastive_loss(distance, margin, st_loss):
    a, b = mixed_pairs(seed=8)
    want = st_loss(OnlineContrastiveLoss, [a, b], LABELS, distance_metric=ST_DISTANCES[distance], margin=margin)
    got = online_contrastive(a, b, LABELS, margin=margin, distance=distance, reduction="sum")
    torch.testing.assert_close(2 * got, want, rtol=0, atol=1e-6)  # sentence-transformers has no ½
    per_pair = margin_contrastive(a, b, LABELS, margin=margin, distance=distance, reduction="none")
    distances = rowwise_distance(a, b, distance)
    easy_positive = (LABELS == 1) & (distances < distances[LABELS == 0].min())
    easy_negative = (LABELS == 0) & (distances > distances[LABELS == 1].max())
    assert (per_pair[easy_positive] > 0).any() and (per_pair[easy_negative] > 0).any(), \
        "the data should have easy pairs of both kinds that the plain loss would count"


def naive_online(a: torch.Tensor, b: torch.Tensor, labels: list[int], margin: float) -> float:
    distances = [1 - F.cosine_similarity(x, y, dim=0).item() for x, y in zip(a, b)]
    positives = [d for d, y in zip(distances, labels) if y == 1]
    negatives = [d for d, y in zip(distances, labels) if y == 0]
    hard = [0.5 * d**2 for d in positives if not negatives or d > min(negatives)]
    hard += [0.5 * max(0.0, margin - d) ** 2 for d in negatives if not positives or d < max(positives)]
    return sum(hard) / len(hard) if hard else 0.0


@pytest.mark.parametrize("labels", [LABELS.tolist(), [1] * 12, [0] * 12, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
def test_online_mean_matches_a_naive_loop(labels):
    a, b = mixed_pairs(seed=10)
    got = online_contrastive(a, b, torch.tensor(labels), margin=0.8)
    assert got.item() == pytest.approx(naive_online(a, b, labels, 0.8), abs=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "squared_euclidean"])
def test_gradcheck(distance):
    a, b = noise(6, 4, seed=12).requires_grad_(), noise(6, 4, seed=13).requires_grad_()
    labels = torch.tensor([1, 0, 1, 0, 0, 1])
    margin = 1.0 if distance == "cosine" else 3.0
    assert torch.autograd.gradcheck(lambda x, y: margin_contrastive(x, y, labels, margin=margin, distance=distance,
                                                                   pos_margin=0.1), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: margin_contrastive(x, y, labels, margin=margin, distance=distance,
                                                                   squared=False), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: online_contrastive(x, y, labels, margin=margin, distance=distance),
                                    (a, b))


def test_bad_inputs_are_refused():
    a = noise(3, 4, seed=14)
    with pytest.raises(ValueError, match=r"shapes must match: a \(3, 4\), b \(2, 4\)"):
        margin_contrastive(a, a[:2], torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
        margin_contrastive(a, a, torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        margin_contrastive(a, a, torch.tensor([1, 0, 1]), reduction="avg")
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        online_contrastive(a, a, torch.tensor([1, 0, 1]), reduction="none")
    assert math.isfinite(online_contrastive(a, a, torch.tensor([1, 1, 1])).item())


def test_the_module_passes_squared_on():
    from contrastkit.losses import MarginContrastiveLoss

    a, b = noise(12, 8, seed=5), noise(12, 8, seed=6)
    labels = LABELS.double()
    for squared in (True, False):
        module = MarginContrastiveLoss(0.5, squared=squared)
        assert torch.equal(module(a, b, labels), margin_contrastive(a, b, labels, margin=0.5, squared=squared))
    assert not torch.equal(MarginContrastiveLoss(0.5, squared=False)(a, b, labels),
                           MarginContrastiveLoss(0.5, squared=True)(a, b, labels))
