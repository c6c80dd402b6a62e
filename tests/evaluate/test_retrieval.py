"""evaluate_retrieval on hand data, exact vs index search, compare_runs, and the tables."""

import json
import math
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from contrastkit.evaluate import metrics as M
from contrastkit.evaluate.retrieval import (RetrievalResult, compare_results, compare_runs,
                                            evaluate_retrieval, exact_search, format_comparison,
                                            format_table, result_from_run, retrieve)


def test_evaluate_retrieval_by_hand(tiny_beir, lookup_encoder):
    result = evaluate_retrieval(lookup_encoder, tiny_beir, ks=(1, 10), show_progress=False)
    # Documents are encoded as title + " " + text; only the split's judged queries are encoded.
    assert lookup_encoder.calls[0] == ["Cats cats purr", "dogs bark loudly", "Felines lions and cats",
                                       "Weather rain today"]
    assert lookup_encoder.calls[1] == ["about cats", "about dogs", "about rain"]
    assert [d for d, _ in result.run["q1"]] == ["d1", "d3", "d2", "d4"]
    assert [d for d, _ in result.run["q2"]] == ["d2", "d3", "d1", "d4"]
    assert result.run["q1"][0][1] == pytest.approx(1 / math.hypot(1, 0.1), abs=1e-6)
    # q3 has no relevant doc, so the means are over q1 and q2.
    assert set(result.per_query) == {"q1", "q2"}
    ndcg_q1 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert result.per_query["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
    assert result.metrics["ndcg@10"] == pytest.approx((ndcg_q1 + 1) / 2)
    assert result.metrics["recall@1"] == pytest.approx(0.75)
    assert result.metrics["mrr@1"] == 1.0
    assert list(result.metrics) == M.metric_names((1, 10))


def test_evaluate_retrieval_agrees_with_pytrec_eval(tiny_beir, lookup_encoder):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    result = evaluate_retrieval(lookup_encoder, tiny_beir, ks=(1, 3), show_progress=False)
    run = {q: {d: s for d, s in docs} for q, docs in result.run.items()}
    theirs = pytrec_eval.RelevanceEvaluator(tiny_beir.qrels, {"ndcg_cut.1,3", "recall.3"}).evaluate(run)
    for q in result.per_query:
        assert result.per_query[q]["ndcg@3"] == pytest.approx(theirs[q]["ndcg_cut_3"], abs=1e-9)
        assert result.per_query[q]["recall@3"] == pytest.approx(theirs[q]["recall_3"], abs=1e-9)


def test_plain_dataset_without_helpers_and_top_k(tiny_beir, lookup_encoder):
    plain = SimpleNamespace(corpus=tiny_beir.corpus, queries=tiny_beir.queries, qrels=tiny_beir.qrels)
    result = evaluate_retrieval(lookup_encoder, plain, ks=(1,), top_k=2, show_progress=False)
    assert all(len(docs) == 2 for docs in result.run.values())
    assert set(result.run) == {"q1", "q2", "q3"}


def test_dot_and_cos_scores_differ_for_unnormalised_embeddings():
    q = np.array([[1.0, 0.0]], np.float32)
    d = np.array([[0.9, 0.1], [5.0, 5.0]], np.float32)
    assert retrieve(q, d, ["q"], ["small", "big"], 1, score="cos")["q"][0][0] == "small"
    assert retrieve(q, d, ["q"], ["small", "big"], 1, score="dot")["q"][0][0] == "big"
    with pytest.raises(ValueError, match="score must be"):
        retrieve(q, d, ["q"], ["small", "big"], 1, score="l2")


def test_exact_search_matches_naive_and_chunking_changes_nothing():
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((37, 8)).astype(np.float32), rng.standard_normal((200, 8)).astype(np.float32)
    scores, ids = exact_search(q, d, 5)
    naive = np.argsort(-(q @ d.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, naive)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ d.T, naive, 1), rtol=1e-5)
    s2, i2 = exact_search(q, d, 5, max_chunk_elements=300)  # one query per chunk
    np.testing.assert_array_equal(i2, ids)
    np.testing.assert_allclose(s2, scores, rtol=1e-5)  # BLAS may round a 1-row product differently
    assert exact_search(q, d[:3], 10)[1].shape == (37, 3)


def test_ties_at_the_cut_follow_trec_order_whatever_the_depth():
    """31 documents with the same embedding, the relevant one ("z") sorting first by id, as trec_eval ranks
    ties: torch.topk alone kept an arbitrary 10 of them, so @10 depended on how deep the search went."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    d = np.repeat(rng.standard_normal((1, 8)).astype(np.float32), 31, axis=0)
    doc_ids = [f"d{i:02d}" for i in range(30)] + ["z"]
    qids = ["a", "b", "c"]
    everything = retrieve(q, d, qids, doc_ids, 31)
    for qid in qids:
        if len({score for _, score in everything[qid]}) == 1:  # the product gave exact ties (BLAS may not)
            assert [doc for doc, _ in everything[qid]] == sorted(doc_ids, reverse=True)
    for k in (1, 10, 30):  # whatever the depth, the same prefix of the trec order of the same scores
        assert retrieve(q, d, qids, doc_ids, k) == {qid: everything[qid][:k] for qid in qids}, k
    distinct = rng.standard_normal((200, 8)).astype(np.float32)  # no ties: exactly exact_search's top k
    ids = [f"x{i}" for i in range(200)]
    run = retrieve(q, distinct, qids, ids, 7, score="dot")
    _, top = exact_search(q, distinct, 7)
    assert all([doc for doc, _ in run[qid]] == [ids[j] for j in top[i]] for i, qid in enumerate(qids))


def test_large_corpora_go_through_the_vector_index(monkeypatch):
    built = []

    class FakeIndex:
        def __init__(self, x):
            self.x = x

        @classmethod
        def build(cls, embeddings, kind="auto"):
            built.append(embeddings.shape)
            return cls(embeddings)

        def search(self, queries, k):
            scores, ids = exact_search(queries, self.x, k)
            ids[:, -1] = -1  # faiss pads missing results with -1
            return scores, ids

    monkeypatch.setitem(sys.modules, "contrastkit.index", types.SimpleNamespace(VectorIndex=FakeIndex))
    rng = np.random.default_rng(1)
    q, d = rng.standard_normal((4, 6)), rng.standard_normal((50, 6))
    ids = [f"d{i}" for i in range(50)]
    via_index = retrieve(q, d, list("abcd"), ids, 5, exact_threshold=10)
    exact = retrieve(q, d, list("abcd"), ids, 5)
    assert built == [(50, 6)]
    assert all(via_index[x] == exact[x][:4] for x in "abcd")


def test_real_vector_index_agrees_with_exact_search():
    import contrastkit.index  # ours: a failed import is a failure here, not a skip
    assert hasattr(contrastkit.index, "VectorIndex")
    rng = np.random.default_rng(2)
    q, d = rng.standard_normal((20, 16)), rng.standard_normal((500, 16))
    ids = [f"d{i}" for i in range(500)]
    via_index = retrieve(q, d, [str(i) for i in range(20)], ids, 10, exact_threshold=100)
    exact = retrieve(q, d, [str(i) for i in range(20)], ids, 10)
    for qid in exact:
        assert [x for x, _ in via_index[qid]] == [x for x, _ in exact[qid]]


def test_result_from_run_orders_like_trec_eval_and_serialises():
    result = result_from_run({"q": [("a", 0.5), ("b", 0.9), ("c", 0.5)]}, {"q": {"a": 1}}, ks=(1, 2))
    assert [d for d, _ in result.run["q"]] == ["b", "c", "a"]
    assert result.metrics["mrr@2"] == 0.0 and result.metrics["recall@2"] == 0.0
    payload = json.loads(json.dumps(result.to_dict(include_run=True)))
    assert payload["metrics"]["mrr@1"] == 0.0 and payload["num_queries"] == 1
    assert payload["run"]["q"][0] == ["b", 0.9]


def test_empty_inputs_are_refused(tiny_beir, lookup_encoder):
    with pytest.raises(ValueError, match="ks is empty"):
        evaluate_retrieval(lookup_encoder, tiny_beir, ks=())
    empty = SimpleNamespace(corpus=tiny_beir.corpus, queries={}, qrels={})
    with pytest.raises(ValueError, match="no queries"):
        evaluate_retrieval(lookup_encoder, empty)


PER_QUERY_A = {"q1": {"ndcg@10": 0.5}, "q2": {"ndcg@10": 0.2}, "q3": {"ndcg@10": 0.7},
               "q4": {"ndcg@10": 0.0}, "q5": {"ndcg@10": 1.0}}
PER_QUERY_B = {"q1": {"ndcg@10": 0.6}, "q2": {"ndcg@10": 0.2}, "q3": {"ndcg@10": 0.4},
               "q4": {"ndcg@10": 0.9}, "q5": {"ndcg@10": 1.0}, "q9": {"ndcg@10": 1.0}}


def test_compare_runs_counts_wins_and_losses():
    c = compare_runs(PER_QUERY_A, PER_QUERY_B, "ndcg@10")
    assert (c["n"], c["wins"], c["losses"], c["ties"]) == (5, 2, 1, 2)  # q9 is not in A
    assert c["mean_a"] == pytest.approx(2.4 / 5) and c["mean_b"] == pytest.approx(3.1 / 5)
    assert c["delta"] == pytest.approx(0.7 / 5)
    assert [q for q, _ in c["top_wins"]] == ["q4", "q1"]
    assert c["top_losses"][0][0] == "q3" and c["top_losses"][0][1] == pytest.approx(-0.3)
    reverse = compare_runs(PER_QUERY_B, PER_QUERY_A, "ndcg@10")
    assert (reverse["wins"], reverse["losses"]) == (1, 2) and reverse["delta"] == pytest.approx(-c["delta"])
    with pytest.raises(ValueError, match="not in run"):
        compare_runs(PER_QUERY_A, PER_QUERY_B, "mrr@10")


def test_sign_test_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = {f"q{i}": {"m": 0.0} for i in range(40)}
    b = {f"q{i}": {"m": 1.0 if i < 27 else (-1.0 if i < 36 else 0.0)} for i in range(40)}
    c = compare_runs(a, b, "m")
    assert (c["wins"], c["losses"], c["ties"]) == (27, 9, 4)
    assert c["sign_test_p"] == pytest.approx(scipy_stats.binomtest(27, 36).pvalue, rel=1e-9)


def test_compare_results_and_format_comparison(tiny_beir, lookup_encoder):
    a = result_from_run({"q1": [("d1", 1.0)], "q2": [("d2", 1.0)]}, tiny_beir.qrels, ks=(1,))
    b = result_from_run({"q1": [("d3", 1.0)], "q2": [("d1", 1.0)]}, tiny_beir.qrels, ks=(1,))
    comparison = compare_results(a, b, ["ndcg@1", "recall@1"])
    assert list(comparison) == ["ndcg@1", "recall@1"]
    assert comparison["ndcg@1"]["losses"] == 1 and comparison["ndcg@1"]["wins"] == 1
    text = format_comparison(comparison, "base", "tuned")
    header, rule, *rows = text.splitlines()
    assert header.split() == ["metric", "base", "tuned", "delta", "wins", "losses", "ties", "sign", "p"]
    # base: q1 gets its grade-1 doc (0.5), q2 its relevant doc (1); tuned: 1 and 0.
    assert rows[0].split()[:4] == ["ndcg@1", "0.750", "0.500", "-0.250"]


def test_format_table():
    rows = {"all-MiniLM-L6-v2": {"ndcg@10": 0.40314, "recall@100": 0.785, "precision@1": 0.3},
            "bm25": {"ndcg@10": 0.361}}
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["ndcg@10", "recall@100"]  # headline metrics only, in order
    assert lines[2].split() == ["all-MiniLM-L6-v2", "0.403", "0.785"]
    assert lines[3].split() == ["bm25", "0.361", "-"]
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up
    assert format_table(rows, ["precision@1"], digits=2).splitlines()[2].endswith("0.30")
    assert format_table({"x": {"odd": 1.0}}).splitlines()[0].split() == ["odd"]
    # Without the headline cut-offs, each family shows its nearest cut-off at or below 10.
    short = format_table({"x": dict.fromkeys(M.metric_names((1, 3)), 0.5)})
    assert short.splitlines()[0].split() == ["ndcg@3", "mrr@3", "map@3", "recall@3", "accuracy@1"]


def test_retrieval_result_is_a_dataclass_with_num_queries():
    r = RetrievalResult(metrics={"ndcg@10": 1.0}, per_query={"q": {"ndcg@10": 1.0}}, run={})
    assert r.num_queries == 1


def test_runs_with_the_real_encoder_class(tiny_beir, tiny_encoder):
    result = evaluate_retrieval(tiny_encoder, tiny_beir, ks=(1, 3), show_progress=False)
    assert set(result.per_query) == {"q1", "q2"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert all(len(docs) == 3 for docs in result.run.values())


def test_a_large_corpus_is_still_searched_exactly_by_default(monkeypatch):
    """Past 100,000 documents evaluation went through faiss (approximate past 200,000): other figures
    for the same model, and slower than the chunked exact search."""

    class Refused:
        @staticmethod
        def build(*args, **kwargs):
            raise AssertionError("an evaluation must not take an approximate index unasked")

    monkeypatch.setitem(sys.modules, "contrastkit.index", types.SimpleNamespace(VectorIndex=Refused))
    rng = np.random.default_rng(3)
    q, d = rng.standard_normal((3, 4)), rng.standard_normal((100_001, 4))
    run = retrieve(q, d, ["a", "b", "c"], [f"d{i}" for i in range(100_001)], 10)
    best = np.argmax((q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T,
                     axis=1)
    assert [run[x][0][0] for x in "abc"] == [f"d{i}" for i in best]


def test_non_finite_embeddings_are_refused_not_scored_zero():
    from contrastkit.errors import DataError

    q, d = np.ones((2, 3)), np.ones((4, 3))
    q[1, 0] = np.nan
    with pytest.raises(DataError, match="1 query embeddings hold NaN or infinity"):
        retrieve(q, d, ["a", "b"], ["w", "x", "y", "z"], 2)
