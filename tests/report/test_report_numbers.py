"""The numbers the report shows: hand-made runs whose deltas, columns and records are worked out by hand."""

import json
import re
from types import SimpleNamespace

from contrastkit.evaluate.retrieval import RetrievalResult
from contrastkit.report.collect import RunData
from contrastkit.report.html import health_section, queries_section, retrieval_section, summary_section
from contrastkit.report.record import record_retrieval, retrieval_snapshot


def system(label, ndcg, recall, per_query):
    return {"label": label, "metrics": {"ndcg@10": ndcg, "recall@10": recall},
            "per_query": {q: {"ndcg@10": v} for q, v in per_query.items()},
            "top": {q: [["d1", 0.9]] for q in per_query}}


def improved_run(tmp_path) -> RunData:
    """One query whose ndcg@10 rose from 0.5 to 1.0; the mean recall@10 fell from 0.8 to 0.6."""
    before = system("before training", 0.5, 0.8, {"qa": 0.5})
    after = system("after training", 1.0, 0.6, {"qa": 1.0})
    retrieval = {"systems": {"before": before, "after": after}, "queries": {"qa": "wing lift"},
                 "docs": {"d1": "lift of thin wings"}, "relevant": {"qa": ["d1"]}}
    return RunData(run_dir=tmp_path, train_dir=tmp_path, retrieval=retrieval)


def cells(page: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`, as HTML."""
    row = re.search(rf"<tr><td>{re.escape(first)}</td>(.*?)</tr>", page)
    assert row, f"no row {first!r}"
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_the_headline_card_shows_after_minus_before(tmp_path):
    page = summary_section(improved_run(tmp_path))
    assert '0.500 → 1.000 <span class="delta up">+0.500</span>' in page
    assert "-0.500" not in page


def test_the_change_row_is_after_minus_before_per_metric(tmp_path):
    page = retrieval_section(improved_run(tmp_path))
    assert cells(page, "change") == ['<span class="delta up">+0.500</span>',    # ndcg@10: 1.0 - 0.5
                                     '<span class="delta down">-0.200</span>']  # recall@10: 0.6 - 0.8


def test_a_query_that_improved_counts_as_better_and_is_listed_as_improved(tmp_path):
    run = improved_run(tmp_path)
    assert "<b>1</b> better, <b>0</b> worse, 0 unchanged of 1" in retrieval_section(run)
    page = queries_section(run)
    improved, regressed = page.split("Regressed most")
    assert "wing lift" in improved and '<span class="delta up">+0.500</span>' in improved
    assert "No query regressed." in regressed and "wing lift" not in regressed


def test_the_health_table_shows_the_first_and_the_last_step_in_their_columns(tmp_path):
    def record(alignment, uniformity, pos, hardneg, flags):
        return {"alignment": alignment, "uniformity": uniformity, "pos_mean": pos, "hardneg_mean": hardneg,
                "neg_mean": 0.1, "gap": round(pos - hardneg, 3), "n": 16, "flags": flags}

    health = [(0, record(1.25, -0.5, 0.4, 0.35, ["collapsed"])), (4, record(1.0, -1.0, 0.6, 0.3, [])),
              (12, record(0.75, -2.0, 0.8, 0.2, []))]
    page = health_section(RunData(run_dir=tmp_path, train_dir=tmp_path, health=health))
    assert "<th>step 0</th><th>step 12</th>" in page
    assert cells(page, "alignment ↓") == ["1.250", "0.750"]
    assert cells(page, "uniformity ↓") == ["-0.500", "-2.000"]
    assert cells(page, "mean positive cos") == ["0.400", "0.800"]
    assert cells(page, "gap (positive − hardest negative) ↑") == ["0.050", "0.600"]
    assert cells(page, "flags") == ["collapsed", "none"]


def test_a_snapshot_keeps_the_best_results_of_each_query():
    ranked = [(f"d{i}", 1.0 - i / 10) for i in range(8)]  # best first, as a RetrievalResult's run is
    result = RetrievalResult(metrics={"ndcg@10": 0.7}, per_query={"q": {"ndcg@10": 0.7, "map@100": 0.1}},
                             run={"q": ranked})
    snap = retrieval_snapshot(result, label="after training", step=3)
    assert snap["top"] == {"q": [["d0", 1.0], ["d1", 0.9], ["d2", 0.8], ["d3", 0.7], ["d4", 0.6]]}
    assert snap["per_query"] == {"q": {"ndcg@10": 0.7}} and snap["step"] == 3


def test_a_document_judged_zero_is_not_relevant(tmp_path):
    result = RetrievalResult(metrics={"ndcg@10": 1.0}, per_query={"q": {"ndcg@10": 1.0}},
                             run={"q": [("d2", 0.9), ("d0", 0.5)]})
    dataset = SimpleNamespace(split="test", queries={"q": "wing lift"}, qrels={"q": {"d0": 0, "d1": 2, "d2": 1}},
                              corpus={d: {"title": "", "text": f"text of {d}"} for d in ("d0", "d1", "d2")})
    record_retrieval(tmp_path, "after", result, dataset, label="after training")
    data = json.loads((tmp_path / "retrieval.json").read_text())
    assert data["relevant"] == {"q": ["d1", "d2"]}
