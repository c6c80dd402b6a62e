"""Semantic textual similarity (STS): how well cosine similarity orders scored sentence pairs.

Given pairs (s1_i, s2_i) with gold scores g_i (e.g. 0..5 in STS-B), report the Spearman and
Pearson correlations between cos(f(s1_i), f(s2_i)) and g_i, as sentence-transformers'
EmbeddingSimilarityEvaluator and the STS benchmarks do (Cer et al., "SemEval-2017 Task 1", 2017).
Spearman (rank correlation) is the headline: it only asks that the order be right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["average_ranks", "cosine_similarities", "evaluate_sts", "pearson", "spearman",
           "sts_correlation"]


def _vector(x: Any, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    return v


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(x, "x"), _vector(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 2:
        raise ValueError(f"a correlation needs at least 2 pairs, got {len(x)}")
    return x, y


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r = cov(x, y) / (std x * std y); NaN when either side is constant."""
    x, y = _pair(x, y)
    if (x == x[0]).all() or (y == y[0]).all():  # as scipy: a mean one ulp off would give ~1e-16, not NaN
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx @ dx) * (dy @ dy))
    return float(np.clip((dx @ dy) / denom, -1.0, 1.0))


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy's rankdata "average")."""
    x = _vector(x, "x")
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    bounds = np.r_[np.flatnonzero(new_group), len(x)]   # where each tie group starts, then n
    group = np.cumsum(new_group) - 1                    # tie group of each sorted position
    # Group g holds 1-based ranks bounds[g]+1 .. bounds[g+1]; their mean:
    mean_rank = (bounds[group] + 1 + bounds[group + 1]) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = mean_rank
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r between the (average-tie) ranks of x and of y; NaN when a value is
    NaN (as scipy's spearmanr: ranking would put NaN last and give a plausible-looking number)."""
    x, y = _pair(x, y)
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    return pearson(average_ranks(x), average_ranks(y))


def cosine_similarities(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine similarity: a [N, D], b [N, D] -> [N] (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("nd,nd->n", a, b) / (na * nb)


def sts_correlation(embeddings1: Any, embeddings2: Any, gold: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson between the pairs' cosine similarity and the gold scores.

    embeddings1 [N, D], embeddings2 [N, D], gold [N] -> {"spearman", "pearson", "n"}.
    """
    sims = cosine_similarities(embeddings1, embeddings2)
    gold = _vector(gold, "gold")
    if len(gold) != len(sims):
        raise ValueError(f"{len(sims)} pairs but {len(gold)} gold scores")
    return {"spearman": spearman(sims, gold), "pearson": pearson(sims, gold), "n": len(gold)}


def evaluate_sts(encoder: Any, sentences1: Sequence[str], sentences2: Sequence[str],
                 scores: Sequence[float], *, batch_size: int = 32,
                 show_progress: bool = False) -> dict[str, float]:
    """Encode both sides of scored sentence pairs and report sts_correlation.

    Example::

        evaluate_sts(encoder,
                     ["a man plays guitar", "a cat sleeps", "it is raining"],
                     ["someone plays an instrument", "a man plays guitar", "the weather is wet"],
                     [4.2, 0.3, 3.8])   # -> {"spearman": ..., "pearson": ..., "n": 3}
    """
    if not (len(sentences1) == len(sentences2) == len(scores)):
        raise ValueError(f"sentences1, sentences2 and scores differ in length: "
                         f"{len(sentences1)}, {len(sentences2)}, {len(scores)}")
    e1 = encoder.encode(list(sentences1), batch_size=batch_size, show_progress=show_progress)
    e2 = encoder.encode(list(sentences2), batch_size=batch_size, show_progress=show_progress)
    return sts_correlation(e1, e2, scores)
