"""The BM25 baseline row: lexical retrieval with the bm25s library, scored like any encoder.

Settings follow the data READMEs: documents are title + " " + text, lower-cased, split on word
characters, English stop words removed, no stemming; BM25 with Lucene's formula, k1 = 1.5,
b = 0.75 (bm25s's defaults). Robertson & Zaragoza, "The Probabilistic Relevance Framework:
BM25 and Beyond" (2009); Lù, "BM25S" (2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from contrastkit.evaluate.metrics import DEFAULT_KS
from contrastkit.evaluate.retrieval import (RetrievalResult, result_from_run, search_depth, split_texts,
                                            trec_order)

__all__ = ["bm25_retrieval", "bm25_run"]


def bm25_run(doc_ids: Sequence[str], doc_texts: Sequence[str], query_ids: Sequence[str],
             query_texts: Sequence[str], k: int, *, k1: float = 1.5, b: float = 0.75,
             method: str = "lucene", stopwords: str | None = "en",
             show_progress: bool = False) -> dict[str, list[tuple[str, float]]]:
    """Top-k docs per query by BM25 score, as (doc id, score) pairs, ties at the cut broken as
    trec_eval orders them.

    bm25s's own top-k keeps an arbitrary few of the documents tied at the k-th score, so a query's
    nDCG@10 could change with the search depth (a query of debian-packages had five documents tied
    at ranks 8-12, the relevant one among them). Here each query's scores over the whole corpus are
    taken, every document scoring at least the k-th score is a candidate, and candidates are ranked
    by (score, doc id) descending before the cut, as `retrieval.exact_trec_top` does for embeddings.
    A query none of whose words occur in the corpus gets an empty ranking rather than k arbitrary
    zero-score docs.
    """
    import bm25s  # imported here: only the baseline needs it

    if len(doc_ids) != len(doc_texts) or len(query_ids) != len(query_texts):
        raise ValueError("ids and texts differ in length")
    retriever = bm25s.BM25(k1=k1, b=b, method=method)
    retriever.index(bm25s.tokenize(list(doc_texts), stopwords=stopwords, show_progress=False),
                    show_progress=False)
    query_tokens = bm25s.tokenize(list(query_texts), stopwords=stopwords, return_ids=False, show_progress=False)
    run: dict[str, list[tuple[str, float]]] = {}
    for qid, tokens in tqdm(zip(query_ids, query_tokens), total=len(query_ids), desc="BM25", unit="query",
                            disable=not show_progress):
        scores = retriever.get_scores(tokens) if tokens else np.zeros(len(doc_ids), np.float32)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
            candidates = candidates[scores[candidates] >= kth]
        run[qid] = trec_order((doc_ids[j], float(scores[j])) for j in candidates)[:k]
    return run


def bm25_retrieval(dataset: Any, ks: Sequence[int] = DEFAULT_KS, *, top_k: int | None = None,
                   k1: float = 1.5, b: float = 0.75, method: str = "lucene",
                   stopwords: str | None = "en", show_progress: bool = False) -> RetrievalResult:
    """Evaluate BM25 on a BEIR-style split; the same shape of result as evaluate_retrieval."""
    k = search_depth(ks, top_k)
    queries, doc_ids, doc_texts, qrels = split_texts(dataset)
    run = bm25_run(doc_ids, doc_texts, list(queries), list(queries.values()), k, k1=k1, b=b,
                   method=method, stopwords=stopwords, show_progress=show_progress)
    return result_from_run(run, qrels, ks)
