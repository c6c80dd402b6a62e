"""Evaluate an encoder on a BEIR-style retrieval set, compare two runs, and print the table.

The data path: encode every document (title + " " + text) and every query of the split, score
each query against the corpus (cosine by default), keep the top ``max(ks)`` docs per query, and
score that run with :mod:`contrastkit.evaluate.metrics` (pytrec_eval's definitions).
Every corpus is searched exactly (chunked matmul + top-k, memory bounded by the chunk) unless
``exact_threshold`` asks for :class:`contrastkit.index.VectorIndex` past a size: an evaluation's
figures should not depend on an approximate index, and the exact search was the faster one too
(500,000 documents × 1,000 queries: 5.2 s against 24.8 s, half the memory).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from contrastkit.evaluate.metrics import DEFAULT_KS, Qrels, evaluate_run, mean_metrics, trec_score
from contrastkit.errors import DataError
from contrastkit.vectors import l2_normalize, non_finite_rows

__all__ = [
    "HEADLINE_METRICS",
    "RetrievalResult",
    "compare_results",
    "compare_runs",
    "dataset_documents",
    "dataset_queries",
    "evaluate_retrieval",
    "exact_search",
    "format_comparison",
    "format_table",
    "result_from_run",
    "retrieve",
    "search_depth",
    "split_texts",
]

# The columns format_table shows by default, when a row has them. README figures quote
# "MRR" as pytrec_eval's recip_rank over the top 100, which is mrr@100 here.
HEADLINE_METRICS: tuple[str, ...] = (
    "ndcg@10", "mrr@10", "mrr@100", "map@10", "recall@10", "recall@100", "accuracy@1")


class TextEncoder(Protocol):
    def encode(self, texts: list[str], batch_size: int = 32,
               show_progress: bool = False) -> np.ndarray: ...


@dataclass
class RetrievalResult:
    """One model's (or BM25's) evaluation on one split.

    metrics: mean over queries with a relevant doc, keyed "ndcg@10", "recall@100", ...
    per_query: query id -> the same keys for that query.
    run: query id -> top docs as (doc id, score), best first (trec_eval's order, ties by id desc).
    """

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: dict[str, list[tuple[str, float]]] = field(repr=False)

    @property
    def num_queries(self) -> int:
        return len(self.per_query)

    def to_dict(self, *, include_run: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: metrics, num_queries, per_query (and the run when asked)."""
        out: dict[str, Any] = {"metrics": dict(self.metrics), "num_queries": self.num_queries,
                               "per_query": self.per_query}
        if include_run:
            out["run"] = {q: [[d, s] for d, s in docs] for q, docs in self.run.items()}
        return out


def trec_order(pairs: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(doc id, score) pairs in metrics.rank_by_score's order, so a stored run reads as pytrec_eval ranks it."""
    return sorted(pairs, key=lambda p: (trec_score(p[1]), p[0]), reverse=True)


def result_from_run(run: Mapping[str, Iterable[tuple[str, float]]], qrels: Qrels,
                    ks: Sequence[int] = DEFAULT_KS) -> RetrievalResult:
    """Score a run of (doc id, score) pairs per query against qrels; the shared tail of every
    evaluation (dense or BM25)."""
    ordered = {q: trec_order(pairs) for q, pairs in run.items()}
    per_query = evaluate_run({q: [d for d, _ in pairs] for q, pairs in ordered.items()}, qrels, ks)
    return RetrievalResult(metrics=mean_metrics(per_query), per_query=per_query, run=ordered)


def _score_chunks(queries: np.ndarray, docs: np.ndarray, max_chunk_elements: int) -> Iterator[tuple[int, Tensor]]:
    """(first query row, inner products [q, N]) for chunks of the queries, each at most about
    max_chunk_elements scores, so that memory stays bounded whatever the number of queries."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    docs = np.ascontiguousarray(docs, dtype=np.float32)
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise ValueError(f"need queries [Q, D] and docs [N, D], got {queries.shape} and {docs.shape}")
    d, q = torch.from_numpy(docs), torch.from_numpy(queries)
    step = max(1, max_chunk_elements // max(1, docs.shape[0]))
    for start in range(0, q.shape[0], step):
        yield start, q[start:start + step] @ d.T


def exact_search(queries: np.ndarray, docs: np.ndarray, k: int,
                 max_chunk_elements: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner-product search by brute force, chunked over queries to bound memory.

    queries [Q, D], docs [N, D] -> (scores [Q, k'], indices [Q, k']) with k' = min(k, N),
    best first.
    """
    k = min(k, len(docs))
    scores, ids = [], []
    for _, chunk in _score_chunks(queries, docs, max_chunk_elements):
        top = torch.topk(chunk, k, dim=1)
        scores.append(top.values.numpy())
        ids.append(top.indices.numpy())
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(ids)



def exact_trec_top(queries: np.ndarray, docs: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str],
                   k: int, max_chunk_elements: int = 1 << 25) -> dict[str, list[tuple[str, float]]]:
    """The k best docs per query by inner product, ties at the cut broken as trec_eval orders them.

    `torch.topk` keeps an arbitrary few of the documents tied at the k-th score, so the same model
    could score differently at @10 depending on how deep the search went (duplicate documents, empty
    ones). Here every document scoring at least the k-th score is a candidate, and candidates are
    ranked by (score, doc id) descending, the order pytrec_eval gives a run, before the cut.
    """
    k = min(k, len(docs))
    out: dict[str, list[tuple[str, float]]] = {}
    if k == 0:
        return {qid: [] for qid in query_ids}
    for start, scores in _score_chunks(queries, docs, max_chunk_elements):
        kth = torch.topk(scores, k, dim=1).values[:, -1:]
        for row, qid in enumerate(query_ids[start:start + len(scores)]):
            row_scores = scores[row].numpy()
            candidates = np.flatnonzero(row_scores >= kth[row, 0].item())
            out[qid] = trec_order((doc_ids[j], float(row_scores[j])) for j in candidates)[:k]
    return out


def retrieve(query_embeddings: np.ndarray, doc_embeddings: np.ndarray, query_ids: Sequence[str],
             doc_ids: Sequence[str], k: int, *, score: str = "cos",
             exact_threshold: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """Top-k docs per query as (doc id, score), best first.

    query_embeddings [Q, D], doc_embeddings [N, D]; score "cos" (cosine) or "dot" (inner product).
    An exact search whose ties at the cut follow trec_eval's order (`exact_trec_top`); only past
    `exact_threshold` docs, when one is given, contrastkit.index.VectorIndex (approximate from
    200,000 documents).
    """
    if score not in ("cos", "dot"):
        raise ValueError(f'score must be "cos" or "dot", got {score!r}')
    if len(query_ids) != len(query_embeddings) or len(doc_ids) != len(doc_embeddings):
        raise ValueError(f"{len(query_ids)} query ids for {len(query_embeddings)} embeddings, "
                         f"{len(doc_ids)} doc ids for {len(doc_embeddings)}")
    q = np.asarray(query_embeddings, dtype=np.float32)
    d = np.asarray(doc_embeddings, dtype=np.float32)
    for name, x in (("query", q), ("document", d)):
        bad = non_finite_rows(x) if x.ndim == 2 else []
        if len(bad):  # else such a query silently scored 0, such a document was never found
            raise DataError(f"{len(bad):,} {name} embeddings hold NaN or infinity (the first: row {bad[0]}); "
                            f"the model gave them: mend it before evaluating")
    if score == "cos":
        q, d = l2_normalize(q), l2_normalize(d)
    if exact_threshold is None or len(doc_ids) <= exact_threshold:
        return exact_trec_top(q, d, query_ids, doc_ids, k)
    else:
        from contrastkit.index import VectorIndex  # faiss only when the corpus is large

        scores, idx = VectorIndex.build(np.ascontiguousarray(d)).search(q, min(k, len(doc_ids)))
    return {qid: trec_order((doc_ids[j], float(s)) for s, j in zip(scores[i], idx[i]) if j >= 0)
            for i, qid in enumerate(query_ids)}


def dataset_queries(dataset: Any) -> dict[str, str]:
    """Query id -> text for the queries the split judges, in the dataset's order."""
    split = getattr(dataset, "split_queries", None)
    if isinstance(split, Mapping):
        return dict(split)
    if split is not None and not isinstance(split, str):
        return {q: dataset.queries[q] for q in split}
    return {q: t for q, t in dataset.queries.items() if q in dataset.qrels}


def dataset_documents(dataset: Any) -> tuple[list[str], list[str]]:
    """(doc ids, doc texts) of the corpus, each text title + " " + text as BEIR evaluates it."""
    ids = list(dataset.corpus)
    if hasattr(dataset, "doc_text"):
        return ids, [dataset.doc_text(d) for d in ids]
    docs = dataset.corpus
    return ids, [(docs[d].get("title", "") + " " + docs[d].get("text", "")).strip() for d in ids]


SplitTexts = tuple[dict[str, str], list[str], list[str], dict[str, dict[str, int]]]


def split_texts(dataset: Any) -> SplitTexts:
    """(queries, doc ids, doc texts, qrels) of a split, refusing an empty one."""
    queries = dataset_queries(dataset)
    if not queries:
        raise ValueError("the split has no queries with judgements (qrels)")
    doc_ids, doc_texts = dataset_documents(dataset)
    if not doc_ids:
        raise ValueError("the corpus is empty")
    return queries, doc_ids, doc_texts, {q: dataset.qrels[q] for q in queries if q in dataset.qrels}


def search_depth(ks: Sequence[int], top_k: int | None) -> int:
    """How many docs to keep per query: top_k, or the largest cut-off."""
    if not ks:
        raise ValueError("ks is empty: give at least one cut-off, e.g. (10,)")
    k = top_k if top_k is not None else max(ks)
    if k < 1:
        raise ValueError(f"top_k must be positive, got {k}")
    return k


def evaluate_retrieval(encoder: TextEncoder, dataset: Any, ks: Sequence[int] = DEFAULT_KS, *,
                       batch_size: int = 32, show_progress: bool = True,
                       exact_threshold: int | None = None, score: str = "cos",
                       top_k: int | None = None) -> RetrievalResult:
    """Evaluate a text encoder on a BEIR-style split (corpus, queries, qrels).

    encoder: anything with encode(texts, batch_size=, show_progress=) -> float32 [n, D]; an
    asymmetric one (a `contrastkit.towers.DualEncoder`) encodes documents with `encode_documents`
    and queries with `encode_queries` when it has them.
    dataset: a contrastkit.data.beir.BeirDataset or any object with corpus, queries, qrels (and
    optionally doc_text and split_queries). Documents are title + " " + text.
    top_k: docs kept per query (default max(ks)). Returns metrics, per-query values and the run.

    Example::

        result = evaluate_retrieval(Encoder.from_pretrained("default"), load_beir("data/cranfield"))
        print(result.metrics["ndcg@10"])
    """
    k = search_depth(ks, top_k)
    queries, doc_ids, doc_texts, qrels = split_texts(dataset)
    encode_documents = getattr(encoder, "encode_documents", None) or encoder.encode
    encode_queries = getattr(encoder, "encode_queries", None) or encoder.encode
    doc_emb = encode_documents(doc_texts, batch_size=batch_size, show_progress=show_progress)
    query_emb = encode_queries(list(queries.values()), batch_size=batch_size, show_progress=show_progress)
    run = retrieve(query_emb, doc_emb, list(queries), doc_ids, k, score=score,
                   exact_threshold=exact_threshold)
    return result_from_run(run, qrels, ks)


def _sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties dropped): P(a split at least this uneven | p = 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def compare_runs(per_query_a: Mapping[str, Mapping[str, float]],
                 per_query_b: Mapping[str, Mapping[str, float]], metric: str,
                 *, eps: float = 1e-9, top: int = 5) -> dict[str, Any]:
    """Per-query comparison of run B against run A on one metric (B is the candidate).

    Over the queries both runs scored: mean_a, mean_b, delta = mean_b - mean_a, wins (B better by
    more than eps), losses (B worse), ties, a two-sided sign-test p-value on wins vs losses, and
    the `top` biggest wins and losses as [query id, delta].
    """
    common = [q for q in per_query_a if q in per_query_b]
    if not common:
        raise ValueError("the two runs share no query")
    missing = [name for name, pq in (("A", per_query_a), ("B", per_query_b))
               if metric not in pq[common[0]]]
    if missing:
        raise ValueError(f"metric {metric!r} is not in run {' and '.join(missing)}; "
                         f"available: {sorted(per_query_a[common[0]])}")
    deltas = {q: per_query_b[q][metric] - per_query_a[q][metric] for q in common}
    wins = sum(1 for d in deltas.values() if d > eps)
    losses = sum(1 for d in deltas.values() if d < -eps)
    by_delta = sorted(deltas.items(), key=lambda kv: (kv[1], kv[0]))
    mean_a = math.fsum(per_query_a[q][metric] for q in common) / len(common)
    mean_b = math.fsum(per_query_b[q][metric] for q in common) / len(common)
    return {
        "metric": metric,
        "n": len(common),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "delta": mean_b - mean_a,
        "wins": wins,
        "losses": losses,
        "ties": len(common) - wins - losses,
        "sign_test_p": _sign_test_p(wins, losses),
        "top_wins": [[q, d] for q, d in reversed(by_delta[-top:]) if d > eps] if top else [],
        "top_losses": [[q, d] for q, d in by_delta[:top] if d < -eps] if top else [],
    }


def compare_results(a: RetrievalResult, b: RetrievalResult,
                    metrics: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """compare_runs for each metric (default: every metric both results report)."""
    names = list(metrics) if metrics is not None else [m for m in a.metrics if m in b.metrics]
    return {m: compare_runs(a.per_query, b.per_query, m) for m in names}


def _cutoff(name: str) -> tuple[str, int] | None:
    family, _, k = name.partition("@")
    return (family, int(k)) if k.isdigit() else None


def _columns(rows: Mapping[str, Mapping[str, float]], metrics: Iterable[str] | None) -> list[str]:
    """The given metrics; else per family the headline cut-offs present, or the nearest one
    at or below 10 (so --k 1,3 still shows ndcg@3); else every metric."""
    if metrics is not None:
        return list(metrics)
    present = list(dict.fromkeys(m for r in rows.values() for m in r))
    cols: list[str] = []
    for family in dict.fromkeys(m.split("@")[0] for m in HEADLINE_METRICS):
        chosen = [m for m in HEADLINE_METRICS if m.split("@")[0] == family and m in present]
        if not chosen:
            ks = sorted(c[1] for c in map(_cutoff, present) if c and c[0] == family)
            if ks:
                chosen = [f"{family}@{max([k for k in ks if k <= 10] or ks[:1])}"]
        cols += chosen
    return cols or present


def _render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # First column (names) left-aligned, numbers right-aligned.
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def format_table(rows: Mapping[str, Mapping[str, float]], metrics: Iterable[str] | None = None,
                 digits: int = 3) -> str:
    """A plain-text table for the terminal: one row per name, one column per metric.

    rows: name (a model, "bm25", ...) -> metrics. metrics: the columns (default: the headline
    metrics any row has, else every metric). A missing value prints as "-".
    """
    cols = _columns(rows, metrics)
    body = [[name] + [f"{r[m]:.{digits}f}" if m in r else "-" for m in cols]
            for name, r in rows.items()]
    return _render(["", *cols], body)


def format_comparison(comparison: Mapping[str, Mapping[str, Any]], name_a: str = "A",
                      name_b: str = "B", digits: int = 3) -> str:
    """A table of compare_results: one row per metric with both means, delta, wins/losses/ties."""
    body = [[m, f"{c['mean_a']:.{digits}f}", f"{c['mean_b']:.{digits}f}",
             f"{c['delta']:+.{digits}f}", str(c["wins"]), str(c["losses"]), str(c["ties"]),
             f"{c['sign_test_p']:.3g}"] for m, c in comparison.items()]
    header = ["metric", name_a, name_b, "delta", "wins", "losses", "ties", "sign p"]
    return _render(header, body)
