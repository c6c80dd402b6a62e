"""The run records what the report needs, and the report renders it (or says what is missing)."""

import html
import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from contrastkit import cli
from contrastkit.encoder import Encoder
from contrastkit.report import ReportError, write_report
from contrastkit.report.collect import RunData, collect_run
from contrastkit.report.html import render_report
from contrastkit.report.plots import smooth
from contrastkit.train import TrainConfig, Trainer

from _support import NASTY_QUERY, REPORT_PLOTS, make_pairs

def records(run, key):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in lines if key in r]


def test_training_records_health_retrieval_and_similarities(tiny_run):
    health = records(tiny_run, "health")
    assert [s for s, _ in health] == [0, 4, 8, 12]  # step 0, every eval_every, the end
    assert all(math.isfinite(h[k]) for _, h in health for k in ("alignment", "uniformity", "pos_mean", "hardneg_mean"))
    assert health[-1][1]["separated"] > health[0][1]["separated"]  # the loss fell: positives now stand out
    evals = records(tiny_run, "eval")
    assert [s for s, _ in evals] == [4, 8, 12]  # the step-0 evaluation goes to retrieval.json only

    retrieval = json.loads((tiny_run / "retrieval.json").read_text())
    systems = retrieval["systems"]
    assert sorted(systems) == ["after", "before", "bm25"]
    assert (systems["before"]["step"], systems["after"]["step"]) == (0, 12)
    assert systems["after"]["metrics"] == evals[-1][1]  # the final evaluation is reused, not run twice
    assert systems["before"]["metrics"] != systems["after"]["metrics"]
    assert set(systems["after"]["per_query"]) == {"q0", "q1", "q2", "q3"}
    assert all(1 <= len(top) <= 5 for top in systems["after"]["top"].values())
    shown = {d for s in systems.values() for top in s["top"].values() for d, _ in top}
    assert shown <= set(retrieval["docs"]) and retrieval["queries"]["q0"] == NASTY_QUERY
    assert retrieval["relevant"]["q0"] == ["d0", "d6"] and retrieval["split"] == "test"

    sims = json.loads((tiny_run / "similarities.json").read_text())
    assert (sims["before"]["step"], sims["after"]["step"]) == (0, 12)
    n = len(make_pairs())
    assert len(sims["after"]["positive"]) == len(sims["after"]["hardest_negative"]) == n
    assert len(sims["after"]["negative"]) == n * (n - 1)  # every other pair's positive (all distinct anchors)
    for role, step in (("before", 0), ("after", 12)):  # the histograms and the curves describe the same model
        logged = dict(health)[step]
        assert np.mean(sims[role]["positive"]) == pytest.approx(logged["pos_mean"], abs=1e-4)
        assert np.mean(sims[role]["hardest_negative"]) == pytest.approx(logged["hardneg_mean"], abs=1e-4)
    environment = json.loads((tiny_run / "environment.json").read_text())
    assert environment["torch"] and environment["device"] == "cpu"


def test_the_report_has_every_plot_and_no_external_url(tiny_run):
    page = (tiny_run / "report.html").read_text()  # written by Trainer.train itself
    found = re.findall(r'<figure class="plot" data-plot="([^"]+)"><svg', page)
    assert sorted(found) == sorted(REPORT_PLOTS)
    for label in ("BM25", "before training", "after training", "Improved most", "Regressed most", "learnable_temperature"):
        assert label in page
    links = re.findall(r'\b(?:src|href|action)\s*=\s*"([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    assert links and all(link.startswith("#") for link in links), [x for x in links if not x.startswith("#")]
    assert "<script" not in page and "@import" not in page


def run_data(tmp_path, **kw) -> RunData:
    steps = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "temperature": float("nan"), "pairs_per_s": 10.0}
             for s in (1, 2, 3)]
    return RunData(run_dir=tmp_path, train_dir=tmp_path, steps=steps, **kw)


def test_every_run_text_is_escaped(tmp_path):
    evil = '<img src=x onerror="alert(1)">'
    snap = {"metrics": {"ndcg@10": 0.5}, "per_query": {"q": {"ndcg@10": 0.5}}, "top": {"q": [["d", 0.9]]}}
    better = {**snap, "metrics": {"ndcg@10": 1.0}, "per_query": {"q": {"ndcg@10": 1.0}}}
    retrieval = {"systems": {"before": {**snap, "label": evil}, "after": better}, "queries": {"q": evil},
                 "docs": {"d": evil}, "relevant": {"q": ["d"]}}
    page = render_report(run_data(tmp_path, config={"model": evil, evil: 1}, environment={"command": evil},
                                  retrieval=retrieval))
    assert "<img" not in page
    assert page.count(html.escape(evil)) >= 6  # subtitle, config key and value, command, label, query, document


def test_text_where_a_number_belongs_is_escaped_too(tmp_path):
    """A metric cell, a card or a health row printed a string as it was: a retrieval.json holding
    markup sent the page elsewhere (a meta refresh, a form: the page's policy stops neither alone)."""
    evil = '<meta http-equiv="refresh" content="0;url=https://example.invalid/">'
    snap = {"metrics": {"ndcg@10": 0.5, "recall@10": 0.25}, "per_query": {"q": {"ndcg@10": 0.5}},
            "top": {"q": [["d", 0.9]]}}
    better = {**snap, "metrics": {"ndcg@10": 1.0, "recall@10": 0.5}, "per_query": {"q": {"ndcg@10": 1.0}}}
    bm25 = {**snap, "metrics": {"ndcg@10": 0.4, "recall@10": evil}}
    retrieval = {"systems": {"bm25": bm25, "before": snap, "after": better}, "queries": {"q": "q"}, "docs": {"d": "d"},
                 "relevant": {"q": ["d"]}}
    page = render_report(run_data(tmp_path, retrieval=retrieval))
    assert "<meta http-equiv=\"refresh\"" not in page and html.escape(evil) in page
    assert "form-action 'none'" in page and "base-uri 'none'" in page


def test_missing_pieces_become_notes(tmp_path):
    log = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0, "temperature": float("nan"),
            "pairs_per_s": 5.0 + s, "skipped": s == 2} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    page = write_report(tmp_path).read_text()
    assert sorted(re.findall(r'data-plot="([^"]+)"', page)) == ["loss", "lr", "throughput"]
    for text in ("No temperature", "No evaluation data", "No embedding-health records",
                 "Needs retrieval before and after", "1 step(s) skipped", "No environment.json"):
        assert text in page


def test_a_log_whose_last_line_a_kill_cut_short_still_reports(tmp_path):
    log = "".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3, "pairs_per_s": 5.0}) + "\n" for s in (1, 2, 3))
    (tmp_path / "metrics.jsonl").write_text(log + '{"step": 4, "lo')
    with pytest.warns(UserWarning, match="metrics.jsonl line 4: cut short"):
        run = collect_run(tmp_path)
    assert [r["step"] for r in run.steps] == [1, 2, 3]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo\n' + log)  # not the last line: still an error
    with pytest.raises(ReportError, match="metrics.jsonl line 1"):
        collect_run(tmp_path)


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(ReportError, match=f"'{tmp_path}' is not a contrastkit run: no metrics.jsonl"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="is not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"loss": 2.0}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl line 2: expected a JSON object with a \"step\""):
        collect_run(tmp_path)


def test_cli_report_writes_the_page_where_asked(tiny_run, tmp_path):
    target = tmp_path / "elsewhere" / "r.html"
    result = CliRunner().invoke(cli.app, ["report", str(tiny_run), "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.output
    assert target.read_text() == (tiny_run / "report.html").read_text()  # same run, same page: deterministic


def test_a_fresh_run_drops_an_old_runs_records(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("retrieval.json", "similarities.json"):
        (run / name).write_text('{"stale": true}')
    config = TrainConfig(data="(in memory)", output_dir=str(run), batch_size=8, max_steps=2, show_progress=False,
                         report=False, health_sample=0)
    Trainer(config, Encoder.from_pretrained(tiny_model_dir, max_seq_length=32), make_pairs()).train()
    assert not (run / "retrieval.json").exists() and not (run / "similarities.json").exists()
    assert records(run, "health") == []  # health_sample = 0: no health records at all


def test_smooth_is_a_trailing_mean():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]
    expected = [np.mean(values[max(0, i - 2):i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(smooth(values, 3), expected)


def test_without_matplotlib_training_still_finishes_and_warns(tiny_model_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `report` extra were not installed
    import contrastkit.report

    for name in ("plots", "html"):  # imported afresh, as in a process that never had matplotlib
        monkeypatch.delitem(sys.modules, f"contrastkit.report.{name}", raising=False)
        monkeypatch.delattr(contrastkit.report, name, raising=False)
    config = TrainConfig(data="(in memory)", output_dir=str(tmp_path / "run"), batch_size=8, max_steps=2,
                         show_progress=False, health_sample=16, health_every=1)
    with pytest.warns(UserWarning, match=r"no report.html written: the report needs matplotlib: pip install"):
        out = Trainer(config, Encoder.from_pretrained(tiny_model_dir, max_seq_length=32), make_pairs()).train()
    assert (out / "modules.json").is_file() and not (out / "report.html").exists()
    assert [s for s, _ in records(out, "health")] == [0, 1, 2]


@pytest.mark.parametrize("name, content, message", [
    ("retrieval.json", '{"systems": ', "retrieval.json: not valid JSON (Expecting value"),
    ("retrieval.json", "[1, 2]", "retrieval.json: expected a JSON object, got list"),
    ("retrieval.json", '{"systems": {"before": 5}}', '"systems" must map each role (before, after) to a JSON object'),
    ("similarities.json", '{"before": [1], "after": [2]}', "similarities.json must map each role"),
    ("environment.json", "{bad", "environment.json: not valid JSON"),
    ("train_config.yaml", "a: [", "train_config.yaml: not valid YAML"),
    ("train_config.yaml", "- a\n", "train_config.yaml: expected a mapping of settings, got list"),
    ("metrics.jsonl", '{"step": 1, "loss": 1.0}\n{"step": 2, "health": 7}\n',
     'metrics.jsonl line 2: field "health": expected a JSON object, got number'),
])
def test_a_broken_run_file_is_named_not_a_traceback(tmp_path, name, content, message):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (tmp_path / name).write_text(content)
    with pytest.raises(ReportError) as err:
        collect_run(tmp_path)
    assert message in str(err.value) and str(tmp_path) in str(err.value)
