"""STS correlations against scipy.stats, on a hand-made scored set and random data with ties."""

import math

import numpy as np
import pytest

from contrastkit.evaluate.sts import (average_ranks, cosine_similarities, evaluate_sts, pearson,
                                      spearman, sts_correlation)

stats = pytest.importorskip("scipy.stats")

# Hand-made pairs with gold scores 0..5 and 3-d "embeddings" chosen so the order is nearly right.
PAIRS = [
    ("a man plays a guitar", "someone plays an instrument", 4.2, [1, 0, 0], [0.9, 0.3, 0.0]),
    ("a cat sleeps on a sofa", "a kitten naps on a couch", 4.8, [0, 1, 0], [0.1, 1.0, 0.1]),
    ("it is raining", "the weather is wet", 3.6, [0, 0, 1], [0.3, 0.2, 0.9]),
    ("a dog runs", "the stock market fell", 0.2, [1, 1, 0], [0.0, -0.4, 1.0]),
    ("a woman cooks", "a man strums a guitar", 0.2, [0, 1, 1], [1.0, -0.2, 0.1]),
    ("children play football", "kids kick a ball", 4.0, [1, 0, 1], [0.9, 0.0, 0.6]),
    ("a plane takes off", "a bird flies", 1.5, [1, 1, 1], [0.2, 0.9, -0.2]),
]


class DictEncoder:
    def __init__(self, table):
        self.table = table

    def encode(self, texts, batch_size=32, show_progress=False):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def hand_set():
    s1, s2, gold, e1, e2 = zip(*PAIRS)
    return list(s1), list(s2), list(gold), np.array(e1, float), np.array(e2, float)


def test_hand_made_set_matches_scipy():
    _, _, gold, e1, e2 = hand_set()
    sims = np.array([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(e1, e2)])
    got = sts_correlation(e1, e2, gold)
    assert got["n"] == 7
    assert got["spearman"] == pytest.approx(stats.spearmanr(sims, gold).statistic, abs=1e-12)
    assert got["pearson"] == pytest.approx(stats.pearsonr(sims, gold).statistic, abs=1e-12)
    assert got["spearman"] > 0.5  # the hand embeddings were chosen to mostly agree


def test_evaluate_sts_encodes_both_sides():
    s1, s2, gold, e1, e2 = hand_set()
    table = {**dict(zip(s1, e1.tolist())), **dict(zip(s2, e2.tolist()))}
    got = evaluate_sts(DictEncoder(table), s1, s2, gold)
    assert got == pytest.approx(sts_correlation(e1, e2, gold))
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_sts(DictEncoder(table), s1, s2[:-1], gold)


@pytest.mark.parametrize("seed", range(5))
def test_random_with_ties_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 60).astype(float)   # many ties, like STS gold scores
    y = x + rng.normal(0, 2, 60)
    np.testing.assert_allclose(average_ranks(x), stats.rankdata(x), atol=0)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_perfect_and_reversed_orders():
    x = [1.0, 2.0, 3.0, 4.0]
    assert spearman(x, [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman(x, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pearson(x, [2, 4, 6, 8]) == pytest.approx(1.0)
    assert math.isnan(pearson(x, [1, 1, 1, 1]))
    # a constant side whose mean is one ulp off its value (0.1 * 3 / 3): still NaN, as scipy
    assert math.isnan(pearson([0.1] * 3, [1, 2, 4]))
    with pytest.warns(stats.ConstantInputWarning):
        assert math.isnan(stats.pearsonr([0.1] * 3, [1, 2, 4]).statistic)


def test_a_nan_similarity_or_gold_score_gives_nan_as_scipy():
    x, y = [1.0, 2.0, 3.0, float("nan")], [1.0, 3.0, 2.0, 4.0]
    assert math.isnan(stats.spearmanr(x, y).statistic)
    assert math.isnan(spearman(x, y)) and math.isnan(spearman(y, x)) and math.isnan(pearson(x, y))


def test_cosine_similarities_and_bad_shapes():
    np.testing.assert_allclose(cosine_similarities([[1, 0], [1, 1]], [[2, 0], [-1, -1]]), [1.0, -1.0])
    with pytest.raises(ValueError, match="one shape"):
        cosine_similarities([[1, 0]], [[1, 0, 0]])
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1.0], [2.0])
    with pytest.raises(ValueError, match="gold scores"):
        sts_correlation([[1, 0], [0, 1]], [[1, 0], [0, 1]], [1.0, 2.0, 3.0])
