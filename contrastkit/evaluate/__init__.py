"""Evaluation: retrieval metrics (pytrec_eval's definitions), STS, embedding-space health, BM25.

    from contrastkit.evaluate import evaluate_retrieval, bm25_retrieval, format_table
    dense = evaluate_retrieval(encoder, dataset)          # dataset: contrastkit.data.beir.load_beir
    lexical = bm25_retrieval(dataset)
    print(format_table({"model": dense.metrics, "bm25": lexical.metrics}))

What each number means: docs/evaluation.md.
"""

from contrastkit.evaluate.bm25 import bm25_retrieval, bm25_run
from contrastkit.evaluate.health import (HealthReport, alignment, effective_rank, embedding_health,
                                         positive_negative_similarity, similarity_values,
                                         uniformity)
from contrastkit.evaluate.metrics import (DEFAULT_KS, METRICS, evaluate_run, mean_metrics,
                                          metric_names, query_metrics, rank_by_score)
from contrastkit.evaluate.retrieval import (HEADLINE_METRICS, RetrievalResult, compare_results,
                                            compare_runs, evaluate_retrieval, exact_search,
                                            format_comparison, format_table, result_from_run,
                                            retrieve)
from contrastkit.evaluate.sts import evaluate_sts, pearson, spearman, sts_correlation

__all__ = [
    "DEFAULT_KS",
    "HEADLINE_METRICS",
    "METRICS",
    "HealthReport",
    "RetrievalResult",
    "alignment",
    "bm25_retrieval",
    "bm25_run",
    "compare_results",
    "compare_runs",
    "effective_rank",
    "embedding_health",
    "evaluate_retrieval",
    "evaluate_run",
    "evaluate_sts",
    "exact_search",
    "format_comparison",
    "format_table",
    "mean_metrics",
    "metric_names",
    "pearson",
    "positive_negative_similarity",
    "query_metrics",
    "rank_by_score",
    "result_from_run",
    "retrieve",
    "similarity_values",
    "spearman",
    "sts_correlation",
    "uniformity",
]
