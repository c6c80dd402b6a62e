"""The retrieval metrics against pytrec_eval (trec_eval) on random graded runs, and by hand."""

import math
import random

import pytest

from contrastkit.evaluate import metrics as M

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 3, 5, 10, 100)
TREC = {"ndcg": "ndcg_cut_{k}", "recall": "recall_{k}", "precision": "P_{k}", "map": "map_cut_{k}",
        "accuracy": "success_{k}"}


def random_case(seed, n_queries=150, n_docs=300):
    """Graded qrels (grades -1..3, some queries with no relevant doc) and runs with many ties."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 40))
        qrels[qid] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
        retrieved = rng.sample(docs, rng.randint(0, 150))
        # Scores on a coarse grid: ties are common, so the tie-break must match trec_eval's.
        run[qid] = {d: float(rng.randint(0, 20)) / 4 for d in retrieved}
    return qrels, run


def trec_measures(qrels, run, ks):
    cut = ",".join(str(k) for k in ks)
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {f"ndcg_cut.{cut}", f"recall.{cut}", f"P.{cut}", f"map_cut.{cut}", f"success.{cut}"})
    return evaluator.evaluate(run)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_pytrec_eval(seed):
    qrels, run = random_case(seed)
    ours = M.evaluate_run(run, qrels, KS)
    theirs = trec_measures(qrels, run, KS)
    has_rel = {q for q, rel in qrels.items() if any(g >= 1 for g in rel.values())}
    assert set(ours) == has_rel and len(ours) >= 100
    for qid in ours:
        for metric, trec_name in TREC.items():
            for k in KS:
                assert ours[qid][f"{metric}@{k}"] == pytest.approx(
                    theirs[qid][trec_name.format(k=k)], abs=1e-9), (qid, metric, k)


@pytest.mark.parametrize("seed", [0, 1])
def test_mrr_at_k_is_recip_rank_of_the_run_cut_at_k(seed):
    qrels, run = random_case(seed)
    ours = M.evaluate_run(run, qrels, KS, metrics=["mrr"])
    for k in KS:
        cut_run = {q: {d: s for d, s in zip(M.rank_by_score(r)[:k], range(k, 0, -1))}
                   for q, r in run.items()}
        theirs = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut_run)
        for qid in ours:
            assert ours[qid][f"mrr@{k}"] == pytest.approx(theirs[qid]["recip_rank"], abs=1e-9)


def test_scores_that_differ_past_float32_tie_as_in_trec_eval():
    """trec_eval stores scores as C floats: 0.70000001 and 0.7 tie there, and the tie goes to the
    larger doc id. A run from another tool in float64 must score the same here."""
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.70000001, "b": 0.7, "c": 0.1}}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"}).evaluate(run)["q"]
    ours = M.evaluate_run(run, qrels, (10,))["q"]
    assert M.rank_by_score(run["q"]) == ["b", "a", "c"]
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg_cut_10"], abs=1e-9) and ours["mrr@10"] == 0.5


def test_means_match_pytrec_eval_over_queries_with_a_relevant_doc():
    qrels, run = random_case(3)
    theirs = trec_measures(qrels, run, (10,))
    ours = M.mean_metrics(M.evaluate_run(run, qrels, (10,)))
    has_rel = [q for q, rel in qrels.items() if any(g >= 1 for g in rel.values())]
    expected = math.fsum(theirs[q]["ndcg_cut_10"] for q in has_rel) / len(has_rel)
    assert ours["ndcg@10"] == pytest.approx(expected, abs=1e-12)


def test_hand_worked_example():
    # Ranked by trec_eval's rule: b, a (tie on 1.0, id descending), c, x, d (tie), e.
    qrel = {"a": 2, "b": 0, "c": -1, "d": 1, "e": 3}
    run = {"a": 1.0, "b": 1.0, "c": 0.9, "d": 0.5, "x": 0.5, "e": 0.1}
    assert M.rank_by_score(run) == ["b", "a", "c", "x", "d", "e"]
    got = M.query_metrics(run, qrel, ks=(3, 5))
    idcg3 = 3 + 2 / math.log2(3) + 1 / 2
    assert got["ndcg@3"] == pytest.approx((2 / math.log2(3)) / idcg3)
    assert got["mrr@3"] == 0.5 and got["mrr@5"] == 0.5
    assert got["precision@5"] == pytest.approx(2 / 5)
    assert got["recall@5"] == pytest.approx(2 / 3)
    assert got["map@5"] == pytest.approx((1 / 2 + 2 / 5) / 3)
    assert got["accuracy@3"] == 1.0


def test_ranking_shapes_agree_and_empty_rankings_score_zero():
    qrel = {"a": 1, "b": 2}
    as_ids = M.query_metrics(["x", "b", "a"], qrel, ks=(2,))
    as_pairs = M.query_metrics([("x", 0.9), ("b", 0.8), ("a", 0.1)], qrel, ks=(2,))
    as_dict = M.query_metrics({"x": 0.9, "b": 0.8, "a": 0.1}, qrel, ks=(2,))
    assert as_ids == as_pairs == as_dict
    assert set(M.query_metrics([], qrel, ks=(2,)).values()) == {0.0}
    # A query with relevant docs but no run entry counts, with zeros; one with none is left out.
    per_query = M.evaluate_run({}, {"q1": qrel, "q2": {"a": 0}}, ks=(1,))
    assert list(per_query) == ["q1"] and set(per_query["q1"].values()) == {0.0}


def test_precision_divides_by_k_even_for_short_rankings():
    assert M.precision_at_k(["a"], {"a": 1}, 10) == pytest.approx(0.1)
    assert M.recall_at_k(["a"], {"a": 1}, 10) == 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="more than once"):
        M.query_metrics(["a", "b", "a"], {"a": 1})
    with pytest.raises(ValueError, match="positive integer"):
        M.ndcg_at_k(["a"], {"a": 1}, 0)
    with pytest.raises(ValueError, match="unknown metric"):
        M.metric_names((1,), ["ndgc"])


def test_metric_names_order():
    assert M.metric_names((10, 1), ["ndcg", "mrr"]) == ["ndcg@1", "ndcg@10", "mrr@1", "mrr@10"]
