"""Triplet losses against sentence-transformers, pytorch-metric-learning and a naive loop; gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer
from sentence_transformers.sentence_transformer.losses import (BatchHardTripletLoss,
                                                               BatchHardTripletLossDistanceFunction,
                                                               BatchSemiHardTripletLoss, TripletDistanceMetric,
                                                               TripletLoss)

from contrastkit.losses import batch_hard_triplet, batch_semi_hard_triplet, distance_matrix, triplet_margin


def noise(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CLASSES = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])  # every anchor has a positive and a negative
PML_DISTANCES = {"euclidean": LpDistance(normalize_embeddings=False),
                 "squared_euclidean": LpDistance(normalize_embeddings=False, power=2),
                 "cosine": CosineSimilarity()}  # inverted: its margin(ap, an) = s_an − s_ap = d_ap − d_an
ST_BATCH_DISTANCES = {
    "euclidean": BatchHardTripletLossDistanceFunction.euclidean_distance,
    "squared_euclidean": lambda e: BatchHardTripletLossDistanceFunction.euclidean_distance(e, squared=True),
    "cosine": BatchHardTripletLossDistanceFunction.cosine_distance,
}
MARGINS = {"euclidean": 1.0, "squared_euclidean": 4.0, "cosine": 0.3}


@pytest.mark.parametrize("distance, metric, margin", [("euclidean", TripletDistanceMetric.EUCLIDEAN, 5.0),
                                                      ("euclidean", TripletDistanceMetric.EUCLIDEAN, 1.0),
                                                      ("cosine", TripletDistanceMetric.COSINE, 0.3)])
def test_explicit_triplets_match_sentence_transformers(distance, metric, margin, st_loss):
    a, p, n = noise(9, 6, seed=1), noise(9, 6, seed=2), noise(9, 6, seed=3)
    want = st_loss(TripletLoss, [a, p, n], distance_metric=metric, triplet_margin=margin)
    torch.testing.assert_close(triplet_margin(a, p, n, margin=margin, distance=distance), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", list(PML_DISTANCES))
def test_explicit_triplets_match_pytorch_metric_learning(distance):
    a, p, n = noise(9, 6, seed=4), noise(9, 6, seed=5), noise(9, 6, seed=6)
    rows = torch.arange(9)
    pml = TripletMarginLoss(margin=MARGINS[distance], distance=PML_DISTANCES[distance], reducer=MeanReducer())
    want = pml(torch.cat([a, p, n]), indices_tuple=(rows, rows + 9, rows + 18))
    got = triplet_margin(a, p, n, margin=MARGINS[distance], distance=distance)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    per_triplet = triplet_margin(a, p, n, margin=MARGINS[distance], distance=distance, reduction="none")
    assert 0 < (per_triplet > 0).sum() < 9, "some triplets should be inactive, some not"


@pytest.mark.parametrize("distance", list(ST_BATCH_DISTANCES))
def test_batch_hard_matches_sentence_transformers(distance, st_loss):
    e = noise(10, 6, seed=7)
    want = st_loss(BatchHardTripletLoss, [e], CLASSES, distance_metric=ST_BATCH_DISTANCES[distance],
                   margin=MARGINS[distance])
    got = batch_hard_triplet(e, CLASSES, margin=MARGINS[distance], distance=distance)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("labels", [CLASSES, torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 5, 5])])  # with singletons
@pytest.mark.parametrize("distance", list(PML_DISTANCES))
def test_batch_hard_matches_pytorch_metric_learning_miner_and_loss(distance, labels):
    e = noise(10, 6, seed=8)
    miner = BatchHardMiner(distance=PML_DISTANCES[distance])
    pml = TripletMarginLoss(margin=MARGINS[distance], distance=PML_DISTANCES[distance], reducer=MeanReducer())
    want = pml(e, labels, miner(e, labels))
    torch.testing.assert_close(batch_hard_triplet(e, labels, margin=MARGINS[distance], distance=distance), want,
                               rtol=0, atol=1e-6)


def naive_semi_hard(embeddings: torch.Tensor, labels: list[int], margin: float, distance: str) -> tuple[float, int]:
    """(loss, number of pairs that fell back to the farthest negative), pair by pair."""
    d = distance_matrix(embeddings, embeddings, distance).tolist()
    losses, fallbacks = [], 0
    for a, label_a in enumerate(labels):
        negatives = [d[a][n] for n, label_n in enumerate(labels) if label_n != label_a]
        for p, label_p in enumerate(labels):
            if p == a or label_p != label_a or not negatives:
                continue
            farther = [x for x in negatives if x > d[a][p]]
            fallbacks += not farther
            losses.append(max(0.0, d[a][p] - (min(farther) if farther else max(negatives)) + margin))
    return (sum(losses) / len(losses) if losses else 0.0), fallbacks


@pytest.mark.parametrize("distance", list(ST_BATCH_DISTANCES))
def test_batch_semi_hard_matches_sentence_transformers_and_a_naive_loop(distance, st_loss):
    e = noise(10, 6, seed=9)
    got = batch_semi_hard_triplet(e, CLASSES, margin=MARGINS[distance], distance=distance)
    want = st_loss(BatchSemiHardTripletLoss, [e], CLASSES, distance_metric=ST_BATCH_DISTANCES[distance],
                   margin=MARGINS[distance])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    naive, fallbacks = naive_semi_hard(e, CLASSES.tolist(), MARGINS[distance], distance)
    assert got.item() == pytest.approx(naive, abs=1e-12)
    assert fallbacks > 0, "the data should exercise the no-farther-negative rule"


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 2, 3], [4, 4, 4, 4, 4, 4], [0, 1, 2, 3, 4, 5]])
def test_batch_semi_hard_edge_labels_match_a_naive_loop(labels):
    e = noise(6, 3, seed=10)
    got = batch_semi_hard_triplet(e, torch.tensor(labels), margin=1.0)
    assert got.item() == pytest.approx(naive_semi_hard(e, labels, 1.0, "euclidean")[0], abs=1e-12)


def test_no_valid_anchor_gives_zero_with_a_finite_gradient():
    e = noise(4, 3, seed=11).requires_grad_()
    for loss in (batch_hard_triplet(e, torch.zeros(4, dtype=torch.long)),
                 batch_semi_hard_triplet(e, torch.arange(4))):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, e)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_gradcheck(distance):
    e = noise(7, 3, seed=12).requires_grad_()
    labels, margin = torch.tensor([0, 0, 1, 1, 1, 2, 2]), MARGINS[distance]
    a, p, n = (noise(5, 3, seed=s).requires_grad_() for s in (13, 14, 15))
    options = dict(margin=margin, distance=distance)
    assert torch.autograd.gradcheck(lambda a, p, n: triplet_margin(a, p, n, **options), (a, p, n))
    assert torch.autograd.gradcheck(lambda x: batch_hard_triplet(x, labels, **options), (e,))
    assert torch.autograd.gradcheck(lambda x: batch_semi_hard_triplet(x, labels, **options), (e,))


def test_bad_inputs_are_refused():
    e = noise(4, 3, seed=16)
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        batch_hard_triplet(e, torch.arange(3))
    with pytest.raises(ValueError, match=r"embeddings must be a floating tensor of shape \[B, D\]"):
        batch_semi_hard_triplet(e.unsqueeze(0), torch.arange(4))
    with pytest.raises(ValueError, match="shapes must match"):
        triplet_margin(e, e, e[:2])
    assert math.isfinite(triplet_margin(e, e, e, reduction="sum").item())


def test_semi_hard_skips_a_negative_exactly_as_far_as_the_positive():
    """Points on a line, labels 0 0 1 1 at 0, 1, -1, 2; worked by hand with m = 0.5. Pair (0, 1): d_ap 1;
    the negative at -1 is as far (1), not farther, so n* is the one at 2: loss 0. Pair (1, 0) likewise.
    Pairs (2, 3) and (3, 2): d_ap 3, no negative farther, the farthest (2 away): loss 1.5 each."""
    points = torch.tensor([[0.0], [1.0], [-1.0], [2.0]], dtype=torch.float64)
    loss = batch_semi_hard_triplet(points, torch.tensor([0, 0, 1, 1]), margin=0.5)
    assert loss.item() == pytest.approx((0 + 0 + 1.5 + 1.5) / 4)
