"""Embedding-space health on distributions whose answers are known."""

import math

import numpy as np
import pytest
import torch

from contrastkit.evaluate.health import (alignment, effective_rank, embedding_health,
                                         positive_negative_similarity, uniformity)


def sphere(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def analytic_uniformity(d, t):
    """log E exp(-t ||x - y||^2) for x, y independent and uniform on S^{d-1}.

    ||x - y||^2 = 2 - 2u with u = <x, y>, and E exp(s u) = Gamma(d/2) (2/s)^(d/2-1) I_{d/2-1}(s).
    """
    special = pytest.importorskip("scipy.special")
    s, nu = 2 * t, d / 2 - 1
    log_mgf = special.gammaln(d / 2) + nu * math.log(2 / s) + math.log(special.ive(nu, s)) + s
    return -2 * t + log_mgf


def test_collapsed_embeddings_have_uniformity_zero_and_identical_pairs_alignment_zero():
    x = np.tile(sphere(1, 16), (50, 1))
    assert uniformity(x) == pytest.approx(0.0, abs=1e-12)
    y = sphere(50, 16)
    assert alignment(y, y) == 0.0


@pytest.mark.parametrize("d", [3, 64])
def test_uniform_on_the_sphere_matches_the_analytic_value(d):
    x = sphere(1000, d, seed=d)
    assert uniformity(x) == pytest.approx(analytic_uniformity(d, 2.0), abs=0.02)
    assert uniformity(x, t=1.0) == pytest.approx(analytic_uniformity(d, 1.0), abs=0.02)
    if d == 64:
        assert abs(uniformity(x) - (-4 + 8 / d)) < 0.02  # the large-d approximation


def test_uniformity_matches_wang_and_isola_reference_code():
    # Their code: torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    reference = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log().item()
    assert uniformity(x) == pytest.approx(reference, abs=1e-10)
    assert uniformity(x, chunk_size=7) == pytest.approx(reference, abs=1e-10)


def test_alignment_matches_the_formula():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 5))
    assert alignment(x, y) == pytest.approx(np.mean(np.sum((x - y) ** 2, axis=1)))
    assert alignment(x, y, alpha=1) == pytest.approx(np.mean(np.linalg.norm(x - y, axis=1)))
    # Antipodal unit vectors are as far apart as the sphere allows: ||x - (-x)||^2 = 4.
    u = sphere(10, 4)
    assert alignment(u, -u) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="one shape"):
        alignment(x, y[:, :3])


def test_effective_rank_of_known_matrices():
    assert effective_rank(np.eye(7)) == pytest.approx(7.0)
    rank_one = np.outer(np.arange(1, 6), np.arange(1, 4)).astype(float)
    assert effective_rank(rank_one) == pytest.approx(1.0)
    # Singular values 3, 1 -> p = (3/4, 1/4), erank = exp(H(p)).
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(np.diag([3.0, 1.0])) == pytest.approx(math.exp(h))
    # Rotations do not change it; a shared mean direction is removed by center=True.
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((7, 7)))
    assert effective_rank(np.eye(7) @ q) == pytest.approx(7.0)
    shifted = np.vstack([np.eye(4), -np.eye(4)]) + 10.0
    assert effective_rank(shifted) < 2.0
    assert effective_rank(shifted, center=True) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="all-zero"):
        effective_rank(np.zeros((3, 3)))


def test_positive_negative_similarity_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    s = positive_negative_similarity(a, p)
    r = 1 / math.sqrt(2)
    # cos matrix rows: a0 -> (1, 0, -1); a1 -> (0, 1, 0); a2 -> (r, r, -r)
    assert s["pos_mean"] == pytest.approx((1 + 1 - r) / 3)
    assert s["hardneg_mean"] == pytest.approx((0 + 0 + r) / 3)
    assert s["neg_mean"] == pytest.approx((0 - 1 + 0 + 0 + r + r) / 6)
    assert s["separated"] == pytest.approx(2 / 3)
    assert s["gap"] == pytest.approx(s["pos_mean"] - s["hardneg_mean"])
    # Spreads are population standard deviations (ddof=0), over the N values themselves.
    assert s["pos_std"] == pytest.approx(np.std([1, 1, -r]))
    assert s["hardneg_std"] == pytest.approx(np.std([0, 0, r]))
    # Pairs of one group are not negatives of each other: a0's only negative is now p2.
    g = positive_negative_similarity(a, p, groups=["x", "x", "y"])
    assert g["hardneg_mean"] == pytest.approx((-1 + 0 + r) / 3)


def test_a_positive_tied_with_its_hardest_negative_is_not_separated():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    p = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    # cos matrix rows: a0 -> (1, 1, -1): positive 1 ties negative 1; a1 -> (0, 0, 0): tie at 0;
    # a2 -> (-1, -1, 1): positive 1 beats both negatives. Only a2 counts.
    s = positive_negative_similarity(a, p)
    assert s["separated"] == pytest.approx(1 / 3)
    assert s["hardneg_mean"] == pytest.approx((1 + 0 - 1) / 3)


def test_health_uniformity_averages_anchors_and_positives():
    # Anchors: 4 orthonormal vectors, every pair at ||x - y||^2 = 2 -> log exp(-2t) = -2t.
    # Positives: one point repeated -> uniformity 0. The report is the mean of the two.
    anchors = np.eye(4)
    positives = np.full((4, 4), 0.5)
    assert embedding_health(anchors, positives).uniformity == pytest.approx((-4.0 + 0.0) / 2)
    assert embedding_health(anchors, positives, t=1.0).uniformity == pytest.approx((-2.0 + 0.0) / 2)


def test_a_query_with_several_relevant_documents_counts_once_in_uniformity():
    # Query e0 has three relevant documents, queries e1..e3 one each (pairs_from_beir's shape): with
    # groups, the anchors' uniformity is that of the 4 distinct queries (-2t = -4), not of 6 rows
    # in which e0 appears three times (pairs at distance 0).
    anchors = np.eye(6)[[0, 0, 0, 1, 2, 3]]
    positives = np.eye(6)
    groups = ["q0", "q0", "q0", "q1", "q2", "q3"]
    grouped = embedding_health(anchors, positives, groups)
    assert grouped.uniformity == pytest.approx((-4.0 + -4.0) / 2)
    assert embedding_health(anchors, positives).uniformity > grouped.uniformity + 0.3  # without groups: every row


def test_health_effective_rank_counts_anchors_and_positives_together():
    # Anchors use directions e0, e1 and positives e2, e3: stacked they are a permuted 4 x 4
    # identity, so 4 directions are in use although each side alone spans only 2.
    eye = np.eye(4)
    report = embedding_health(eye[:2], eye[2:])
    assert report.effective_rank == pytest.approx(4.0)
    assert embedding_health(eye[:2], eye[:2]).effective_rank == pytest.approx(2.0)


def test_duplicate_pairs_in_a_batch_do_not_flag_lost_separation():
    # Pairs 2k and 2k+1 are one pair duplicated (a_i = p_i = e_k, k = 0..3): each anchor's hardest
    # negative is its duplicate's positive, a tie at cos 1, yet positives are far closer than the
    # average negative (cos 1 against negatives (1, 0, 0, 0, 0, 0, 0) -> mean 1/7).
    x = np.repeat(np.eye(4), 2, axis=0)
    report = embedding_health(x, x)
    assert report.pos_mean == pytest.approx(1.0)
    assert report.hardneg_mean == pytest.approx(1.0)
    assert report.neg_mean == pytest.approx(1 / 7)
    assert report.separated == 0.0
    assert report.effective_rank == pytest.approx(4.0)
    assert report.flags == []


def test_health_flags_collapse_and_lost_separation():
    collapsed = np.tile([[1.0, 2.0, 3.0]], (64, 1)) + 1e-9 * sphere(64, 3)
    report = embedding_health(collapsed, collapsed)
    assert report.uniformity == pytest.approx(0.0, abs=1e-6)
    assert report.effective_rank == pytest.approx(1.0, abs=1e-3)
    assert set(report.flags) == {"collapse", "no_separation"}


def test_healthy_pairs_raise_no_flag_and_torch_equals_numpy():
    anchors = sphere(200, 32, seed=3)
    positives = anchors + 0.1 * sphere(200, 32, seed=4)
    report = embedding_health(anchors, positives)
    assert report.flags == []
    assert report.pos_mean > 0.9 and report.separated == 1.0 and report.gap > 0.3
    assert report.uniformity < -3.0 and report.effective_rank > 25
    assert report.n == 200 and report.dim == 32
    as_torch = embedding_health(torch.from_numpy(anchors).float(), torch.from_numpy(positives).float())
    numbers = {k: v for k, v in report.to_dict().items() if k != "flags"}
    assert {k: v for k, v in as_torch.to_dict().items() if k != "flags"} == pytest.approx(numbers, abs=1e-5)
    # Unrelated positives: spread out, but no closer than random pairs.
    unrelated = embedding_health(anchors, sphere(200, 32, seed=5))
    assert unrelated.flags == ["no_separation"]
