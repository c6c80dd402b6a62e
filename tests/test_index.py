"""VectorIndex: exact search against numpy, the automatic choice, persistence, approximate recall."""

from __future__ import annotations

import numpy as np
import pytest

from contrastkit.errors import ConfigError
from contrastkit.index import VectorIndex, default_nlist, default_nprobe


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    """Unit vectors around random centres: like embeddings, neighbours are mostly in one cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    return unit(centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def test_flat_search_equals_numpy_brute_force():
    docs, queries = clustered(500, 16, 10, 1.0, seed=0), clustered(20, 16, 10, 1.0, seed=1)
    index = VectorIndex.build(docs)
    assert index.kind == "flat" and len(index) == 500 and index.dim == 16
    scores, ids = index.search(queries, k=5)
    sims = queries @ docs.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_auto_picks_flat_below_the_threshold_and_ivf_from_it():
    docs = clustered(2000, 8, 20, 0.5, seed=0)
    assert VectorIndex.build(docs, threshold=2001).kind == "flat"
    ivf = VectorIndex.build(docs, threshold=2000)
    assert ivf.kind == "ivf" and ivf.index.nlist == default_nlist(2000)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_kind_finds_a_stored_vector_itself(kind):
    docs = clustered(3000, 16, 30, 0.5, seed=2)
    index = VectorIndex.build(docs, kind=kind)
    assert index.kind == kind
    _, ids = index.search(docs[:100], k=1)
    assert (ids[:, 0] == np.arange(100)).mean() >= 0.98


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_and_load_keep_kind_settings_and_results(tmp_path, kind):
    docs = clustered(3000, 16, 30, 1.0, seed=3)
    index = VectorIndex.build(docs, kind=kind, nprobe=5, ef_search=40)
    path = index.save(tmp_path / "idx" / "docs.faiss")
    loaded = VectorIndex.load(path)
    assert (loaded.kind, len(loaded), loaded.dim) == (kind, 3000, 16)
    if kind == "ivf":
        assert loaded.index.nprobe == 5
    if kind == "hnsw":
        assert loaded.index.hnsw.efSearch == 40
    for a, b in zip(index.search(docs[:50], 10), loaded.search(docs[:50], 10)):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == ["docs.faiss"]


def test_default_nprobe_visits_an_eighth_of_the_lists_but_at_least_8():
    assert default_nprobe(4) == 4      # never more than there are lists
    assert default_nprobe(20) == 8     # 20 // 8 = 2, raised to the floor of 8
    assert default_nprobe(160) == 20   # 160 // 8
    assert default_nprobe(1000) == 125
    docs = clustered(160 * 40, 8, 50, 0.5, seed=4)
    assert VectorIndex.build(docs, kind="ivf", nlist=160).index.nprobe == 20
    assert VectorIndex.build(docs, kind="ivf", nlist=160, nprobe=3).index.nprobe == 3


def test_places_an_ivf_search_cannot_fill_hold_id_minus_one_and_score_minus_inf():
    # One probe of 20 lists reaches about 1/20 of 2000 docs, far fewer than k = 500.
    docs = clustered(2000, 8, 20, 0.5, seed=5)
    index = VectorIndex.build(docs, kind="ivf", nlist=20, nprobe=1)
    scores, ids = index.search(docs[:10], k=500)
    missing = ids < 0
    assert missing.any() and (~missing).any()
    assert np.all(ids[missing] == -1)
    assert np.all(np.isneginf(scores[missing]))
    # The rows that were found are real docs with their true cosine, best first, then the gaps.
    found = np.where(missing, 0, ids)
    true = np.einsum("qd,qkd->qk", docs[:10], docs[found])
    np.testing.assert_allclose(scores[~missing], true[~missing], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(missing.astype(int), axis=1) >= 0)
    assert all(np.all(np.diff(row[~gap]) <= 0) for row, gap in zip(scores, missing))


def test_k_is_capped_and_bad_input_is_refused():
    index = VectorIndex.build(unit(np.eye(3, 4)))
    scores, ids = index.search(unit(np.ones((2, 4))), k=10)
    assert ids.shape == (2, 3) and sorted(ids[0]) == [0, 1, 2]
    with pytest.raises(ValueError, match="queries have dimension 3, the index has 4"):
        index.search(np.ones((1, 3)), k=1)
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(np.ones((1, 4)), k=0)
    with pytest.raises(ConfigError, match="unknown index kind 'lsh'"):
        VectorIndex.build(np.ones((3, 4)), kind="lsh")
    with pytest.raises(ValueError, match="zero vectors"):
        VectorIndex.build(np.ones((0, 4)))


@pytest.mark.slow
def test_approximate_index_agrees_with_exact_on_200k_vectors():
    data = clustered(200_000 + 300, 64, 1000, 1.0, seed=0)
    queries, docs = data[:300], data[300:]
    _, truth = VectorIndex.build(docs, kind="flat").search(queries, 10)
    approx = VectorIndex.build(docs)  # auto: 200k is past the threshold
    _, found = approx.search(queries, 10)
    assert approx.kind == "ivf"
    assert recall(found, truth) >= 0.95


def test_hnsw_widens_its_beam_to_k():
    """efSearch 128 and k 2,000 found about half the true top k, and left places empty."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hnsw, flat = VectorIndex.build(x, kind="hnsw"), VectorIndex.build(x, kind="flat")
    _, found = hnsw.search(x[:10], 1000)
    _, exact = flat.search(x[:10], 1000)
    assert (found >= 0).all()
    assert np.mean([len(set(a) & set(b)) / 1000 for a, b in zip(found, exact)]) > 0.99


def test_non_finite_vectors_are_refused_by_name():
    from contrastkit.errors import DataError

    x = np.ones((50, 4), dtype=np.float32)
    x[[3, 7]] = np.nan
    with pytest.raises(DataError, match=r"2 of the embeddings hold NaN or infinity \(rows 3, 7\)"):
        VectorIndex.build(x, kind="ivf", nlist=1)
    with pytest.raises(DataError, match="queries hold NaN"):
        VectorIndex.build(np.ones((5, 4), dtype=np.float32)).search(x[:5], 2)
