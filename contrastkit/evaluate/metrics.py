"""Retrieval metrics as small pure functions, defined exactly as trec_eval / pytrec_eval define them.

A *ranking* is a sequence of doc ids, best first. A *qrel* maps doc id -> graded relevance.
Conventions (trec_eval's, checked against pytrec_eval in tests/evaluate/test_metrics.py):

- a doc is relevant when its grade is >= 1 (trec_eval's relevance_level 1); grade 0 or below is
  judged non-relevant, and an unjudged doc counts as non-relevant;
- nDCG gains are linear: gain = grade (negative grades count as 0), discounted by log2(rank + 1)
  with rank starting at 1; the ideal ranking sorts every judged doc by grade (``ndcg_cut_k``);
- Recall@k = relevant docs in the top k / all relevant docs for the query (``recall_k``);
- Precision@k = relevant docs in the top k / k, even when fewer than k docs were returned (``P_k``);
- MAP@k = sum of precision at the rank of each relevant doc within the top k / all relevant docs
  (``map_cut_k``);
- MRR@k = 1 / rank of the first relevant doc if it is within the top k, else 0 (pytrec_eval's
  ``recip_rank`` on the run truncated to k);
- Accuracy@k = 1 if any relevant doc is in the top k, else 0 (``success_k``).

A run given as doc id -> score is ranked as trec_eval ranks it: by score descending, ties broken by
doc id descending (:func:`rank_by_score`). Means are taken over the queries that have at least one
relevant doc; such a query missing from the run scores 0 on every metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

import numpy as np

__all__ = [
    "DEFAULT_KS",
    "METRICS",
    "Qrels",
    "Run",
    "accuracy_at_k",
    "evaluate_run",
    "map_at_k",
    "mean_metrics",
    "metric_names",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "query_metrics",
    "rank_by_score",
    "recall_at_k",
]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)
# The order in which metrics are reported; names are "<metric>@<k>", e.g. "ndcg@10".
METRICS: tuple[str, ...] = ("ndcg", "mrr", "map", "recall", "precision", "accuracy")

# One query's retrieved docs: ids best first, (id, score) pairs best first, or id -> score.
Ranked = Union[Sequence[str], Sequence[tuple[str, float]], Mapping[str, float]]
Run = Mapping[str, Ranked]
Qrels = Mapping[str, Mapping[str, int]]


def trec_score(score: float) -> float:
    """A score as trec_eval compares it: rounded to float32 (it stores scores as C floats), so that
    0.70000001 and 0.7 tie, as they do there."""
    return float(np.float32(score))


def rank_by_score(scores: Mapping[str, float]) -> list[str]:
    """Rank doc ids as trec_eval does: score (as float32) descending, ties broken by doc id descending."""
    return sorted(scores, key=lambda d: (trec_score(scores[d]), d), reverse=True)


def _ranking(ranked: Ranked) -> list[str]:
    """Doc ids best first, from any of the shapes a run may hold for one query."""
    if isinstance(ranked, Mapping):
        return rank_by_score(ranked)
    ids = [r if isinstance(r, str) else r[0] for r in ranked]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for d in ids:
            if d in seen:
                raise ValueError(f"ranking lists doc id {d!r} more than once")
            seen.add(d)
    return ids


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _num_relevant(qrel: Mapping[str, int]) -> int:
    return sum(1 for g in qrel.values() if g >= 1)


def _idcg(qrel: Mapping[str, int], k: int) -> float:
    gains = sorted((g for g in qrel.values() if g > 0), reverse=True)[:k]
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains: sum_{r<=k} grade_r / log2(r + 1), divided by the ideal DCG@k."""
    _check_k(k)
    idcg = _idcg(qrel, k)
    if idcg == 0.0:
        return 0.0
    dcg = sum(max(qrel.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    return dcg / idcg


def recall_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """Recall@k: relevant docs in the top k / all relevant docs (0 when there are none)."""
    _check_k(k)
    n_rel = _num_relevant(qrel)
    if n_rel == 0:
        return 0.0
    return sum(1 for d in ranking[:k] if qrel.get(d, 0) >= 1) / n_rel


def precision_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """Precision@k: relevant docs in the top k / k (a short ranking is not given credit for it)."""
    _check_k(k)
    return sum(1 for d in ranking[:k] if qrel.get(d, 0) >= 1) / k


def map_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """Average precision cut at k: sum of precision@r at each relevant rank r <= k / all relevant."""
    _check_k(k)
    n_rel = _num_relevant(qrel)
    if n_rel == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(ranking[:k]):
        if qrel.get(d, 0) >= 1:
            hits += 1
            total += hits / (i + 1)
    return total / n_rel


def mrr_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant doc within the top k (0 if none is there)."""
    _check_k(k)
    for i, d in enumerate(ranking[:k]):
        if qrel.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def accuracy_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """1.0 if any relevant doc is in the top k, else 0.0 (trec_eval's success_k)."""
    return 1.0 if mrr_at_k(ranking, qrel, k) > 0.0 else 0.0


_FUNCTIONS = {
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "accuracy": accuracy_at_k,
}


def metric_names(ks: Iterable[int] = DEFAULT_KS, metrics: Iterable[str] = METRICS) -> list[str]:
    """The keys evaluate_run reports, in report order: "ndcg@1", "ndcg@3", ..., "accuracy@100"."""
    ks = sorted(set(ks))
    for k in ks:
        _check_k(k)
    unknown = [m for m in metrics if m not in _FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(_FUNCTIONS)}")
    return [f"{m}@{k}" for m in metrics for k in ks]


def query_metrics(ranked: Ranked, qrel: Mapping[str, int], ks: Iterable[int] = DEFAULT_KS,
                  metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """Every requested metric at every k for one query, keyed "ndcg@10" and so on."""
    ranking = _ranking(ranked)
    out = {}
    for name in metric_names(ks, metrics):
        metric, k = name.split("@")
        out[name] = _FUNCTIONS[metric](ranking, qrel, int(k))
    return out


def evaluate_run(run: Run, qrels: Qrels, ks: Iterable[int] = DEFAULT_KS,
                 metrics: Iterable[str] = METRICS) -> dict[str, dict[str, float]]:
    """Per-query metrics for each query of qrels that has at least one relevant doc.

    run: query id -> that query's retrieved docs (ids best first, (id, score) pairs best first,
    or id -> score, ranked by :func:`rank_by_score`). A query absent from the run counts as an
    empty ranking. Queries with no relevant doc are left out, as they would only add zeros.
    """
    ks = tuple(ks)
    metrics = tuple(metrics)
    per_query = {}
    for qid, qrel in qrels.items():
        if _num_relevant(qrel) == 0:
            continue
        per_query[qid] = query_metrics(run.get(qid, ()), qrel, ks, metrics)
    return per_query


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the queries given (an empty mapping gives an empty result)."""
    if not per_query:
        return {}
    names = list(next(iter(per_query.values())))
    n = len(per_query)
    return {name: math.fsum(v[name] for v in per_query.values()) / n for name in names}
