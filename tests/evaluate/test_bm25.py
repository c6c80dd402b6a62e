"""The BM25 baseline against a naive Lucene BM25, and its result shape."""

import math
import re
from collections import Counter

import pytest

from contrastkit.evaluate.bm25 import bm25_retrieval, bm25_run

DOCS = {
    "a": "The cat sat on the mat with another cat",
    "b": "Dogs and cats are common pets",
    "c": "A treatise on the aerodynamics of wings in a slipstream",
    "d": "Slipstream effects on wing lift at high angles of attack, measured in a wind tunnel",
    "e": "The mat was red",
}


def naive_lucene_bm25(docs, query, k1=1.5, b=0.75):
    """Lucene's BM25 (Kamphuis et al. 2020): idf = ln(1 + (N - df + .5) / (df + .5)),
    tf part = tf / (tf + k1 (1 - b + b |d| / avgdl)); English stop words removed, no stemming."""
    from bm25s.stopwords import STOPWORDS_EN

    def tokens(text):
        return [t for t in re.findall(r"(?u)\b\w\w+\b", text.lower()) if t not in STOPWORDS_EN]

    toks = {d: tokens(t) for d, t in docs.items()}
    avgdl = sum(map(len, toks.values())) / len(toks)
    df = Counter(t for ts in toks.values() for t in set(ts))
    scores = {}
    for d, ts in toks.items():
        tf = Counter(ts)
        scores[d] = sum(
            math.log(1 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5))
            * tf[t] / (tf[t] + k1 * (1 - b + b * len(ts) / avgdl))
            for t in set(tokens(query)) if t in tf)
    return scores


@pytest.mark.parametrize("query", ["cat on a mat", "slipstream wing lift", "pets", "red cats"])
def test_scores_match_a_naive_lucene_bm25(query):
    run = bm25_run(list(DOCS), list(DOCS.values()), ["q"], [query], k=5)
    expected = {d: s for d, s in naive_lucene_bm25(DOCS, query).items() if s > 0}
    got = dict(run["q"])
    assert set(got) == set(expected)
    for d, s in expected.items():
        assert got[d] == pytest.approx(s, rel=1e-5)
    assert [s for _, s in run["q"]] == sorted(got.values(), reverse=True)


def test_queries_of_only_stop_words_or_unknown_words_retrieve_nothing():
    run = bm25_run(list(DOCS), list(DOCS.values()), ["stop", "oov"], ["the of and", "zebra"], k=3)
    assert run == {"stop": [], "oov": []}


def test_bm25_retrieval_on_a_beir_shaped_set(tiny_beir):
    result = bm25_retrieval(tiny_beir, ks=(1, 10))
    # "about cats" matches d1 (title Cats + "cats purr") and d3 ("lions and cats").
    assert [d for d, _ in result.run["q1"]][:2] in (["d1", "d3"], ["d3", "d1"])
    assert set(result.per_query) == {"q1", "q2"}
    assert result.per_query["q2"]["ndcg@1"] == 1.0  # "about dogs" -> d2 only
    assert set(result.metrics) >= {"ndcg@10", "recall@10", "mrr@10", "accuracy@1"}


def test_ties_at_the_cut_are_broken_as_trec_eval_whatever_the_depth():
    """Five identical documents tie; bm25s's own top-k kept an arbitrary few of them, so nDCG@k of
    the same query moved with the search depth. The kept ones are the largest doc ids (trec_eval's
    order for equal scores), and a deeper search begins with the same list."""
    docs = {"a": "cat cat cat", **{f"t{i}": "cat and a dog" for i in range(5)}, "z": "dog"}
    shallow = bm25_run(list(docs), list(docs.values()), ["q"], ["cat"], k=3)["q"]
    deep = bm25_run(list(docs), list(docs.values()), ["q"], ["cat"], k=6)["q"]
    assert [d for d, _ in shallow] == ["a", "t4", "t3"]
    assert deep[:3] == shallow and [d for d, _ in deep] == ["a", "t4", "t3", "t2", "t1", "t0"]
