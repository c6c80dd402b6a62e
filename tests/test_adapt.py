"""`contrastkit adapt` and `run_adapt`: checks before training, the recipe end to end on the tiny model."""

import json
import sys

import pytest
import torch

from contrastkit import cli
from contrastkit.adapt import AdaptConfig, adapt_pairs, run_adapt, sample_documents
from contrastkit.data.corpus import Document, read_documents
from contrastkit.data.selfsup import STRATEGIES
from contrastkit.encoder import Encoder
from contrastkit.errors import ConfigError, DataError

from _support import write_jsonl

TOPICS = ["wing lift", "shock wave", "heat transfer", "boundary layer", "jet noise", "panel flutter",
          "nozzle flow", "buckling shell"]


def make_corpus_folder(folder, n=32):
    """A BEIR folder whose documents have titles and several sentences, and test queries (for --eval only)."""
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"on {TOPICS[i % 8]} {i}",
             "text": f"we study {TOPICS[i % 8]} in case {i}. the {TOPICS[(i + 3) % 8]} is measured too. "
                     f"results for {TOPICS[i % 8]} agree with theory {i}."} for i in range(n)]
    write_jsonl(folder / "corpus.jsonl", docs)
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": TOPICS[i]} for i in range(8)])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\nq{i}\td{i + 8}\t1\n" for i in range(8)))
    return folder


def refuse_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model must not load before the input is checked")
    monkeypatch.setattr(Encoder, "from_pretrained", refuse)


@pytest.mark.parametrize("overrides, message", [
    (dict(strategy="simcse"), "unknown strategy 'simcse'"),
    (dict(augment="shuffle:0.1"), "unknown augmentation 'shuffle'"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(max_docs=0), "max_docs must be at least 1"),
    (dict(eval_data="/no/such/folder"), "eval folder '/no/such/folder' does not exist"),
    (dict(eval_data=__file__), "is a file \\(give a BEIR folder\\)"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        AdaptConfig(corpus="c.jsonl", **overrides).validate()


def test_span_masking_takes_the_models_mask_token(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from contrastkit.adapt import _mask_token
    assert _mask_token(AdaptConfig(corpus="c.jsonl", model=str(tiny_model_dir), augment="span_masking")) == "[MASK]"
    other = tmp_path / "roberta-like"
    AutoTokenizer.from_pretrained(str(tiny_model_dir), mask_token="<mask>").save_pretrained(other)
    assert _mask_token(AdaptConfig(corpus="c.jsonl", model=str(other), augment="span_masking:0.2")) == "<mask>"


def test_a_batch_smaller_than_the_mini_batch_is_its_own_mini_batch():
    assert AdaptConfig(corpus="c.jsonl", batch_size=8).validate().train_config().mini_batch_size is None
    assert AdaptConfig(corpus="c.jsonl", batch_size=16).validate().train_config().mini_batch_size is None
    assert AdaptConfig(corpus="c.jsonl").train_config().mini_batch_size == 16
    assert AdaptConfig(corpus="c.jsonl", mini_batch_size=None).train_config().mini_batch_size is None


@pytest.mark.parametrize("rows, error, message", [
    ([{"text": "fine"}, {"text": "x", "title": 3}], DataError, 'line 2: field "title": expected a string, got number'),
    ([{"text": "fine"}, {"text": None}], DataError, 'line 2: field "text": is missing'),
    ([{"_id": "a", "text": "only one document of a few words"}] * 3, ConfigError, "fewer than one batch of 64"),
    ([{"text": "untitled"}], ConfigError, "needs documents with a title"),
])
def test_bad_corpus_stops_before_the_model_loads(monkeypatch, tmp_path, rows, error, message):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    refuse_model_loading(monkeypatch)
    strategy = "title-body" if "title" in message else "dropout"
    with pytest.raises(error, match=message):
        run_adapt(AdaptConfig(corpus=str(corpus), strategy=strategy, output_dir=str(tmp_path / "out")))


def test_sample_documents_is_seeded_and_keeps_corpus_order():
    docs = [Document(str(i), "", f"text {i}") for i in range(100)]
    sample = sample_documents(docs, 10, seed=1)
    assert sample == sample_documents(docs, 10, seed=1) != sample_documents(docs, 10, seed=2)
    assert len(sample) == 10 and sample == sorted(sample, key=lambda d: int(d.id))
    assert sample_documents(docs, 500, seed=1) == docs and sample_documents(docs, None, seed=1) == docs


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_makes_pairs_from_a_beir_folder(tmp_path, strategy):
    folder = make_corpus_folder(tmp_path / "beir")
    (folder / "queries.jsonl").write_text("not JSON: the pairs must come from corpus.jsonl alone\n")
    documents, pairs = adapt_pairs(AdaptConfig(corpus=str(folder), strategy=strategy, batch_size=8))
    assert len(documents) == 32 and len(pairs) == 32


def test_cli_adapt_trains_saves_and_reports_before_after(monkeypatch, capsys, tiny_model_dir, tmp_path):
    folder = make_corpus_folder(tmp_path / "beir")
    out = tmp_path / "adapted"
    monkeypatch.setattr(sys, "argv", ["contrastkit", "adapt", "--model", str(tiny_model_dir), "--corpus", str(folder),
                                      "--output", str(out), "--strategy", "dropout", "--batch-size", "8",
                                      "--mini-batch-size", "16", "--max-steps", "3", "--max-seq-length", "32",
                                      "--lr", "1e-3", "--eval", str(folder)])
    cli.main()
    printed = capsys.readouterr().out
    assert "32 documents → 32 'dropout' pairs" in printed and "adapted (dropout)" in printed
    assert "batch 8\n" in printed and "gradient caching" not in printed  # a batch within the mini-batch: none
    results = json.loads((out / "adapt_results.json").read_text())
    assert results["steps"] == 3 and results["pairs"] == 32
    assert set(results["metrics"]["before"]) >= {"ndcg@10", "recall@10", "mrr@10"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)  # identical strings, yet a real loss
    adapted, base = Encoder.from_pretrained(out), Encoder.from_pretrained(tiny_model_dir)
    assert (out / "modules.json").is_file()
    changed = [not torch.equal(a, b) for a, b in zip(adapted.model.parameters(), base.model.parameters())]
    assert any(changed)
    # the saved model gives the printed numbers: saved with the evaluation's length, not the training's 32
    assert adapted.max_seq_length == results["eval_max_seq_length"] == base.max_seq_length != 32
    from contrastkit.data import load_beir
    from contrastkit.evaluate import evaluate_retrieval
    assert evaluate_retrieval(adapted, load_beir(folder, "test")).metrics == pytest.approx(results["metrics"]["after"])
    retrieval = json.loads((out / "retrieval.json").read_text())  # the report gets the before / after
    assert set(retrieval["systems"]) == {"bm25", "before", "after"}
    assert retrieval["systems"]["after"]["label"] == "adapted (dropout)"
    assert f"report: {out / 'report.html'}" in printed
    assert "adapted (dropout)" in (out / "report.html").read_text()


def test_cli_adapt_bad_corpus_is_one_clear_line(monkeypatch, capsys, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "ok"}\n{"text": "broken"\n')
    monkeypatch.setattr(sys, "argv", ["contrastkit", "adapt", "--corpus", str(corpus)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert f"error: {corpus} line 2: not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    ("cranfield", {"dropout": 1398, "crop": 1398, "title-body": 1398, "neighbours": 1398}),
    ("debian-packages", {"dropout": 15000, "crop": 15000, "neighbours": 13984}),
])
def test_real_corpora_give_one_pair_per_usable_document(shared_data, name, expected):
    documents = read_documents(shared_data / name)
    for strategy, count in expected.items():
        config = AdaptConfig(corpus=str(shared_data / name), strategy=strategy)
        assert len(adapt_pairs(config)[1]) == count
    if "title-body" not in expected:
        with pytest.raises(ConfigError, match="needs documents with a title"):
            adapt_pairs(AdaptConfig(corpus=str(shared_data / name), strategy="title-body"))
    assert len(documents) == max(expected.values())


def test_adapt_resumes_a_run_from_its_checkpoint(monkeypatch, capsys, tiny_model_dir, tmp_path):
    folder = make_corpus_folder(tmp_path / "beir")
    out = tmp_path / "adapted"
    args = ["contrastkit", "adapt", "--model", str(tiny_model_dir), "--corpus", str(folder), "--output", str(out),
            "--batch-size", "8", "--max-steps", "3", "--max-seq-length", "32"]
    monkeypatch.setattr(sys, "argv", args)
    cli.main()
    first = Encoder.from_pretrained(out)
    monkeypatch.setattr(sys, "argv", args + ["--resume"])
    cli.main()  # the run was complete: its last checkpoint is step 3, nothing is trained again
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(first.model.parameters(),
                                                 Encoder.from_pretrained(out).model.parameters()))
    monkeypatch.setattr(sys, "argv", args + ["--resume", "--lr", "0.5"])
    with pytest.raises(SystemExit):
        cli.main()
    assert "settings differ from the checkpoint's (lr: 2e-05 then, 0.5 now)" in capsys.readouterr().err
