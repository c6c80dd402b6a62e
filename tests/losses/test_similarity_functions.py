"""Similarity and distance functions against pytorch-metric-learning's distances and a naive loop."""

from __future__ import annotations


import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance

from contrastkit.losses import distance_matrix, rowwise_distance, rowwise_similarity, similarity_matrix

from _support import naive_similarity

KINDS = ["cosine", "dot", "neg_euclidean"]




@pytest.mark.parametrize("kind", KINDS)
def test_similarity_matrix_matches_a_naive_loop(kind, randn):
    a, b = randn(5, 7, seed=1), randn(4, 7, seed=2)
    got = similarity_matrix(a, b, kind)
    want = torch.tensor([[naive_similarity(x, y, kind) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, reference, sign", [
    ("cosine", CosineSimilarity(), 1.0),
    ("dot", DotProductSimilarity(normalize_embeddings=False), 1.0),
    ("neg_euclidean", LpDistance(normalize_embeddings=False), -1.0),
])
def test_similarity_matrix_matches_pytorch_metric_learning(kind, reference, sign, randn):
    a, b = randn(40, 16, seed=3), randn(30, 16, seed=4)  # > 25 rows: cdist's matrix-product path
    torch.testing.assert_close(similarity_matrix(a, b, kind), sign * reference(a, b), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_rowwise_similarity_is_the_matching_entries_of_the_matrix(kind, randn):
    a, b = randn(4, 6, seed=5), randn(4, 3, 6, seed=6)
    got = rowwise_similarity(a, b, kind)
    assert got.shape == (4, 3)
    for i in range(4):
        torch.testing.assert_close(got[i], similarity_matrix(a[i:i + 1], b[i], kind)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(rowwise_similarity(a, b[:, 0], kind), got[:, 0], rtol=0, atol=1e-12)


def test_distances_follow_from_similarities(randn):
    a, b = randn(6, 5, seed=7), randn(6, 5, seed=8)
    euclid = torch.cdist(a, b)
    torch.testing.assert_close(distance_matrix(a, b, "euclidean"), euclid)
    squared = LpDistance(normalize_embeddings=False, power=2)
    torch.testing.assert_close(distance_matrix(a, b, "squared_euclidean"), squared(a, b))
    torch.testing.assert_close(distance_matrix(a, b, "cosine"), 1 - CosineSimilarity()(a, b))
    for kind in ("euclidean", "squared_euclidean", "cosine"):
        torch.testing.assert_close(rowwise_distance(a, b, kind), distance_matrix(a, b, kind).diagonal())


@pytest.mark.parametrize("kind", ["euclidean", "squared_euclidean"])
def test_euclidean_gradient_is_zero_not_nan_where_embeddings_coincide(kind, randn):
    x = randn(3, 4, seed=9).requires_grad_()
    (distance_matrix(x, x, kind).sum() + rowwise_distance(x, x.detach().clone(), kind).sum()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_similarity_gradients(kind, randn):
    a, b, c = randn(3, 4, seed=10), randn(5, 4, seed=11), randn(3, 2, 4, seed=12)
    for tensor in (a, b, c):
        tensor.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: similarity_matrix(x, y, kind), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: rowwise_similarity(x, y, kind), (a, c))


def test_bad_kind_and_shapes_are_refused(randn):
    a = randn(3, 4)
    with pytest.raises(ValueError, match="unknown similarity kind 'euclid'"):
        similarity_matrix(a, a, "euclid")
    with pytest.raises(ValueError, match="unknown distance kind"):
        distance_matrix(a, a, "neg_euclidean")
    with pytest.raises(ValueError, match=r"same D"):
        similarity_matrix(a, randn(3, 5))
    with pytest.raises(ValueError, match=r"\[B, K, D\]"):
        rowwise_similarity(a, randn(2, 4))
