import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit import cli
from contrastkit.demo import DEMO_DIR
from contrastkit.encoder import Encoder

from _support import make_beir, write_jsonl


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["contrastkit", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    for command in ("encode", "search", "demo"):
        assert command in out


def test_demo_options_reach_the_demo_config(monkeypatch, capsys, tmp_path):
    import contrastkit.demo

    seen = []
    monkeypatch.setattr(contrastkit.demo, "run_demo", lambda config, echo: seen.append(config))
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--seed", "7", "--epochs", "2", "-o", tmp_path / "out")
    assert code == 0, err
    assert (seen[0].seed, seen[0].epochs, seen[0].output_dir) == (7, 2, str(tmp_path / "out"))
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--quick", "-o", tmp_path / "q")
    assert code == 0, err
    assert (seen[1].seed, seen[1].epochs, seen[1].max_train_pairs) == (0, 1, 256)


def test_encode_texts_to_npy(monkeypatch, capsys, tiny_model_dir, tmp_path):
    out_file = tmp_path / "emb.npy"
    code, out, err = run_cli(monkeypatch, capsys, "encode", "-m", tiny_model_dir, "-t", "hello", "-t",
                             "wing lift", "-o", out_file)
    assert code == 0, err
    saved = np.load(out_file)
    expected = Encoder.from_pretrained(tiny_model_dir).encode(["hello", "wing lift"])
    np.testing.assert_allclose(saved, expected, atol=1e-6)
    assert "wrote 2 × 32 embeddings" in out


def test_encode_jsonl_file(monkeypatch, capsys, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, "b", {"text": "c", "title": "t"}])
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tiny_model_dir, "-i", data, "-o",
                           tmp_path / "e.npy")
    assert code == 0, err
    expected = Encoder.from_pretrained(tiny_model_dir).encode(["a", "b", "t c"])
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)


def test_search_prints_ranked_hits(monkeypatch, capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [
        {"_id": "d1", "title": "wings", "text": "lift of thin wings"},
        {"_id": "d2", "title": "engines", "text": "jet engine noise"},
        {"_id": "d3", "title": "", "text": "lift of thin wings"},
    ])
    code, out, err = run_cli(monkeypatch, capsys, "search", "lift of thin wings", "-c", corpus, "-m",
                             tiny_model_dir, "-k", "2")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip().startswith(("1.", "2.", "3."))]
    assert len(lines) == 2
    assert "d3: lift of thin wings" in lines[0]  # identical text ranks first with score 1
    assert "[1.0000]" in lines[0]


@pytest.mark.slow
def test_search_with_default_model_finds_the_relevant_abstract(monkeypatch, capsys, tmp_path):
    rows = [json.loads(line) for line in (DEMO_DIR / "corpus.jsonl").read_text().splitlines()[:30]]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, err = run_cli(monkeypatch, capsys, "search", "aerodynamics of a wing in a propeller slipstream",
                             "-c", corpus, "-k", "3")
    assert code == 0, err
    first = [line for line in out.splitlines() if line.strip().startswith("1.")][0]
    assert " 1: experimental investigation of the aerodynamics of a wing in a slipstream" in first


@pytest.mark.parametrize("content, message", [
    ("", "in.jsonl: the file is empty: no texts to read"),
    ('{"text": "ok"}\n{"text": "broken"\n', "in.jsonl line 2: not valid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', 'in.jsonl line 2: field "text": is missing'),
    ('{"text": 3}\n', 'in.jsonl line 1: field "text": expected a string, got number'),
    ('{"text": "  "}\n', 'in.jsonl line 1: field "text": is empty'),
    ('[1, 2]\n', "in.jsonl line 1: expected a JSON object or string, got list"),
])
def test_encode_bad_input_files(monkeypatch, capsys, tiny_model_dir, tmp_path, content, message):
    data = tmp_path / "in.jsonl"
    data.write_text(content, encoding="utf-8")
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tiny_model_dir, "-i", data, "-o",
                           tmp_path / "e.npy")
    assert code == 2
    assert message in err
    assert not (tmp_path / "e.npy").exists()


def test_bad_utf8_names_the_line(monkeypatch, capsys, tiny_model_dir, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tiny_model_dir, "-i", data, "-o",
                           tmp_path / "e.npy")
    assert code == 2 and "in.jsonl line 2: not valid UTF-8" in err


def test_cli_model_errors(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tmp_path / "missing", "-t", "x", "-o",
                           tmp_path / "e.npy")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty_model").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tmp_path / "empty_model", "-t", "x", "-o",
                           tmp_path / "e.npy")
    assert code == 2 and "neither a Hugging Face model folder" in err


def test_encode_needs_exactly_one_source(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-o", tmp_path / "e.npy", "-t", "x", "-i",
                           tmp_path / "in.jsonl")
    assert code == 2 and "give either --text (one or more) or --input FILE, not both" in err


def test_eval_writes_metrics_json_with_compare_and_bm25(monkeypatch, capsys, tiny_model_dir, tmp_path):
    data = make_beir(tmp_path / "beir")
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "-m", tiny_model_dir, "-d", data, "-o", out,
                                "--compare", tiny_model_dir, "--baseline", "bm25", "--k", "1,3")
    assert code == 0, err
    metrics = json.loads(out.read_text())
    assert set(metrics["per_query"]) == {"q1", "q2"} and metrics["num_queries"] == 2
    assert 0.0 <= metrics["ndcg@3"] <= 1.0 and "recall@1" in metrics
    assert metrics["baselines"]["bm25"]["ndcg@3"] == 1.0  # exact word overlap: BM25 ranks both right
    assert metrics["compare"]["per_metric"]["ndcg@3"]["delta"] == 0.0  # same model twice
    assert "bm25" in stdout and "2 queries, 4 documents" in stdout


def test_eval_names_unscored_queries_and_unequal_lengths(monkeypatch, capsys, tiny_model_dir, tmp_path):
    data = make_beir(tmp_path / "beir")
    (data / "queries.jsonl").write_text((data / "queries.jsonl").read_text() + '{"_id": "q3", "text": "drag"}\n')
    (data / "qrels" / "test.tsv").write_text((data / "qrels" / "test.tsv").read_text() + "q3\td2\t0\n")
    other = tmp_path / "short"
    Encoder.from_pretrained(tiny_model_dir, max_seq_length=16).save(other)
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "-m", tiny_model_dir, "-d", data, "--compare", other,
                                "-o", out)
    assert code == 0, err
    assert "3 queries (2 with a relevant document, which the metrics average over)" in stdout
    long = Encoder.from_pretrained(tiny_model_dir).max_seq_length
    assert f"texts cut at {long} tokens" in stdout and "texts cut at 16 tokens" in stdout
    assert f"cut texts at different lengths ({long} and 16 tokens)" in stdout
    metrics = json.loads(out.read_text())
    assert (metrics["num_queries"], metrics["max_seq_length"], metrics["compare"]["max_seq_length"]) == (2, long, 16)
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "-m", tiny_model_dir, "-d", data, "--compare", other,
                                "--max-seq-length", "16")
    assert code == 0 and "different lengths" not in stdout


def test_eval_bad_k_is_a_usage_error(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "eval", "-d", make_beir(tmp_path / "b"), "--k", "ten")
    assert code == 2 and "--k takes comma-separated whole numbers" in err


def test_search_saves_and_reloads_a_faiss_index(monkeypatch, capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "title": f"title {i}", "text": f"text number {i}"}
                                                for i in range(20)])
    index = tmp_path / "idx"
    code, first, err = run_cli(monkeypatch, capsys, "search", "text number 7", "-c", corpus, "--index", index,
                               "-m", tiny_model_dir, "-k", "3")
    assert code == 0, err
    assert "saved a flat index of 20 documents" in first
    assert {"index.faiss", "docs.jsonl", "meta.json"} <= {p.name for p in index.iterdir()}
    corpus.unlink()  # the saved index alone must answer
    code, second, err = run_cli(monkeypatch, capsys, "search", "text number 7", "--index", index,
                                "-m", tiny_model_dir, "-k", "3")
    assert code == 0, err
    hits = lambda out: [line for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert hits(second) == hits(first) and len(hits(first)) == 3
    assert "d7: title 7" in hits(first)[0]


def test_a_rebuild_of_an_index_cut_short_is_never_read_as_complete(monkeypatch, capsys, tiny_model_dir, tmp_path):
    import contrastkit.search as search

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    index = tmp_path / "idx"
    assert run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir)[0] == 0
    reversed_corpus = write_jsonl(tmp_path / "r.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"}
                                                         for i in reversed(range(6))])
    real = search.write_text_whole

    def killed(path, text):  # the new index.faiss is in place; the kill comes before docs.jsonl
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "write_text_whole", killed)
    code, _, _ = run_cli(monkeypatch, capsys, "search", "a", "-c", reversed_corpus, "--index", index,
                         "-m", tiny_model_dir)
    monkeypatch.setattr(search, "write_text_whole", real)
    assert code == 130 and not (index / "meta.json").exists()
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir)
    assert code == 2 and "holds no index yet: pass --corpus to build it" in err


def test_a_saved_index_on_read_only_storage_is_read_without_a_write_probe(monkeypatch, capsys, tiny_model_dir,
                                                                         tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    index = tmp_path / "idx"
    assert run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir)[0] == 0
    monkeypatch.setattr(cli, "_writable", lambda *a, **k: (_ for _ in ()).throw(AssertionError("probed")))
    code, out, err = run_cli(monkeypatch, capsys, "search", "text number 3", "--index", index, "-m", tiny_model_dir)
    assert code == 0, err


def test_search_index_built_by_another_model_is_refused(monkeypatch, capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}])
    run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", tmp_path / "idx", "-m", tiny_model_dir)
    other = tmp_path / "other"
    Encoder.from_pretrained(tiny_model_dir).save(other)
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", tmp_path / "idx", "-m", other)
    assert code == 2 and "was built with model" in err


def test_search_index_of_a_model_trained_again_in_place_is_not_reused(monkeypatch, capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    model = tmp_path / "model"
    Encoder.from_pretrained(tiny_model_dir).save(model)
    index = tmp_path / "idx"
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", model)
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", model, "--max-seq-length", "8")
    assert code == 2 and "its weights and settings as they were then" in err  # another truncation
    encoder = Encoder.from_pretrained(model)
    with torch.no_grad():
        next(encoder.model.parameters()).add_(0.5)
    encoder.save(model)  # trained again, in place
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", model)
    assert code == 2 and "pass --corpus to rebuild it" in err
    code, out, err = run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", model)
    assert code == 0 and "saved a flat index of 6 documents" in out  # rebuilt, not reused
    code, out, err = run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", model)
    assert code == 0 and "saved a" not in out  # and now reused


def test_a_saved_index_is_reused_whatever_the_models_path_is_spelled(monkeypatch, capsys, tiny_model_dir, tmp_path):
    """"runs/m", "./runs/m" and its absolute path are one model: the index was refused for the others."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    index = tmp_path / "idx"
    code, out, err = run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", "m")
    assert code == 0 and "saved a" in out, err
    for spelling in ("./m", str(tmp_path / "m"), "m/"):
        code, out, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", spelling)
        assert code == 0 and "1. [" in out, (spelling, err)


def test_an_index_saved_by_an_earlier_version_says_so(monkeypatch, capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    index = tmp_path / "idx"
    run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir)
    meta = json.loads((index / "meta.json").read_text())
    meta.pop("fingerprint_version")
    meta["model_fingerprint"] = "0123456789abcdef"  # as the earlier fingerprint read
    (index / "meta.json").write_text(json.dumps(meta))
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir)
    assert code == 2 and "was saved by an earlier contrastkit" in err and "pass --corpus to rebuild it" in err


def test_a_damaged_index_is_named_and_rebuilt_from_the_corpus(monkeypatch, capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    index = tmp_path / "idx"
    run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir)
    whole = (index / "index.faiss").read_bytes()
    (index / "index.faiss").write_bytes(whole[:100])  # cut short
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir)
    assert code == 2 and f"{index}: a damaged search index (index.faiss does not read" in err
    assert "rebuild it with --corpus" in err
    assert "Traceback" not in err
    code, out, err = run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir)
    assert code == 0 and "rebuilding it from" in err and "saved a flat index of 6 documents" in out
    with (index / "docs.jsonl").open("a") as handle:  # a document more than the vectors
        handle.write(json.dumps({"_id": "extra", "title": "", "snippet": "x"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir)
    assert code == 2 and "6 vectors but 7 documents" in err
    (index / "docs.jsonl").unlink()
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir)
    assert code == 2 and "a damaged search index (FileNotFoundError" in err


def test_eval_takes_a_two_tower_folder_and_other_commands_name_it(monkeypatch, capsys, tiny_model_dir, tmp_path):
    """docs/towers.md sends users to `contrastkit eval` for a DualEncoder; it said "neither ... folder"."""
    from contrastkit.data import load_beir
    from contrastkit.evaluate import evaluate_retrieval
    from contrastkit.towers import DualEncoder

    beir = make_beir(tmp_path / "beir")
    model = DualEncoder.shared(Encoder.from_pretrained(tiny_model_dir, max_seq_length=32))
    model.save(tmp_path / "dual")
    code, out, err = run_cli(monkeypatch, capsys, "eval", "-d", beir, "-m", tmp_path / "dual", "-o", tmp_path / "m.json")
    assert code == 0, err
    expected = evaluate_retrieval(DualEncoder.load(tmp_path / "dual"), load_beir(beir, "test")).metrics
    assert json.loads((tmp_path / "m.json").read_text())["ndcg@10"] == pytest.approx(expected["ndcg@10"])
    assert "texts cut at 32 tokens" in out
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "-c", beir / "corpus.jsonl", "-m", tmp_path / "dual")
    assert code == 2 and "is a two-tower model (DualEncoder)" in err and "query" in err


def test_encode_takes_a_prompt_by_name(monkeypatch, capsys, tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir)
    encoder.prompts = {"query": "query: "}
    encoder.save(tmp_path / "m")
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tmp_path / "m", "-t", "wing lift", "-o", tmp_path / "q.npy",
                           "--prompt-name", "query")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), encoder.encode(["query: wing lift"]), atol=1e-6)
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tmp_path / "m", "-t", "x", "-o", tmp_path / "d.npy",
                           "--prompt-name", "doc")
    assert code == 2 and "the model has no prompt 'doc' (its prompts: query)" in err


@pytest.mark.parametrize("flag, expected", [((), None), (("--fp32",), False), (("--bf16",), True)])
def test_demo_precision_flags_reach_the_demo(monkeypatch, capsys, flag, expected):
    seen = []
    monkeypatch.setattr("contrastkit.demo.run_demo", lambda config, echo: seen.append(config))
    code, _, _ = run_cli(monkeypatch, capsys, "demo", "--quick", *flag)
    assert code == 0 and seen[0].bf16 is expected


def test_demo_batch_size_flag_reaches_the_demo(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("contrastkit.demo.run_demo", lambda config, echo: seen.append(config))
    assert run_cli(monkeypatch, capsys, "demo", "--quick", "--batch-size", "8")[0] == 0
    assert run_cli(monkeypatch, capsys, "demo")[0] == 0
    assert [c.batch_size for c in seen] == [8, 64]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the checks under test must come before it."""
    import contrastkit.encoder

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(contrastkit.encoder.Encoder, "from_pretrained", refuse)


def test_output_paths_that_cannot_be_written_are_refused_before_the_model_loads(monkeypatch, capsys, tmp_path,
                                                                                 no_model):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"anchor": "a", "positive": "b"}] * 4)
    beir = make_beir(tmp_path / "beir")
    cases = [
        (["encode", "-t", "x", "-o", a_file / "e.npy"], f"{a_file} is a file, so {a_file / 'e.npy'} cannot be written"),
        (["encode", "-t", "x", "-o", tmp_path / "d.npy"], "is a folder; give a file name"),
        (["mine", "-d", pairs, "-o", tmp_path], "is a folder; give a file name"),
        (["mine", "-d", pairs, "-o", pairs], "is an input of this command"),
        (["eval", "-d", beir, "-o", tmp_path], "is a folder; give a file name"),
        (["search", "q", "-c", beir / "corpus.jsonl", "--index", a_file], "is a file; give a folder"),
        (["train", "-m", "default", "-d", pairs, "-o", a_file], "is a file; give a folder"),
        (["adapt", "-c", beir, "-o", a_file], "is a file; give a folder"),
        (["demo", "-o", a_file / "sub"], f"{a_file} is a file, so {a_file / 'sub'} cannot be written"),
        (["report", tmp_path, "-o", tmp_path], "is a folder; give a file name"),
        (["encode", "-t", "x", "-o", tmp_path / "folder"], "is a folder; give a file name"),  # not folder.npy
        # a place that takes no new files (even for root): refused before any work, naming the path given
        (["eval", "-d", beir, "-o", "/proc/m.json"], "/proc/m.json cannot be written: /proc does not take new files"),
        (["mine", "-d", pairs, "-o", "/proc/sub/x.jsonl"], "/proc/sub/x.jsonl cannot be written: /proc does not"),
        (["encode", "-t", "x", "-o", "/proc/x.npy"], "/proc/x.npy cannot be written"),
        (["search", "q", "-c", beir / "corpus.jsonl", "--index", "/proc/idx"], "/proc/idx cannot be written"),
        (["train", "-m", "default", "-d", pairs, "-o", "/proc/run"], "/proc/run cannot be written"),
        (["adapt", "-c", beir, "-o", "/proc/run"], "/proc/run cannot be written"),
        (["report", tmp_path, "-o", "/proc/r.html"], "/proc/r.html cannot be written"),
    ]
    (tmp_path / "d.npy").mkdir()
    (tmp_path / "folder").mkdir()
    for args, message in cases:
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and message in err, (args, err)
    assert a_file.read_text() == "x"


def test_encode_names_the_file_it_writes(monkeypatch, capsys, tiny_model_dir, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "encode", "-m", tiny_model_dir, "-t", "x", "-o", tmp_path / "plain")
    assert code == 0, err
    assert np.load(tmp_path / "plain.npy").shape == (1, 32) and f"to {tmp_path / 'plain.npy'}" in out


@pytest.mark.parametrize("args, message", [
    (["encode", "-t", "ok", "-t", " ", "-o", "e.npy"], "text 2 is empty"),
    (["encode", "-o", "e.npy"], "give --text (one or more) or --input FILE\n"),
    (["search", "", "-c", "corpus.jsonl"], "text 1 is empty"),
    (["search", "q", "-c", "corpus.jsonl", "--kind", "annoy"], "expected one of auto, flat, ivf, hnsw; got 'annoy'"),
    (["search", "q", "-c", "dup.jsonl"], 'dup.jsonl line 2: field "_id": duplicate id "d1" (first on line 1'),
    (["eval", "-d", "beir", "--compare", "nowhere"], "model path 'nowhere' does not exist"),
    (["eval", "-d", "ungraded"], "qrels/test.tsv: no judgement with a grade above 0"),
    (["train", "-m", "default", "-d", "few.jsonl", "-o", "run"], "only 2 training pairs, fewer than batch_size"),
    (["train", "-m", "default", "-d", "few.jsonl", "-o", "run", "--set", "batch_size=2", "--set",
      "num_hard_negatives=1"], "num_hard_negatives = 1 but no training pair has negatives"),
    (["train", "-m", "default", "-d", "few.jsonl", "-o", "run", "--set", "batch_size=2", "--set", "eval_every=1",
      "--set", "eval_data=ungraded", "--set", "eval_split=nosuch"], "qrels/nosuch.tsv: no such split file"),
])
def test_bad_input_is_refused_before_the_model_loads(monkeypatch, capsys, tmp_path, no_model, args, message):
    monkeypatch.chdir(tmp_path)
    beir = make_beir(tmp_path / "beir")
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "x"}])
    write_jsonl(tmp_path / "dup.jsonl", [{"_id": "d1", "text": "x"}, {"_id": "d1", "text": "y"}])
    write_jsonl(tmp_path / "few.jsonl", [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": "d"}])
    ungraded = make_beir(tmp_path / "ungraded")
    (ungraded / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t0\n")
    assert beir.is_dir()
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and message in err, err


def test_a_place_the_file_system_refuses_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path, no_model):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"anchor": "a", "positive": "b"}] * 8)
    out = tmp_path / "run"

    def refused(self, *args, **kwargs):  # the probe passed, then the file system said no
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    code, _, err = run_cli(monkeypatch, capsys, "train", "-m", "default", "-d", pairs, "-o", out,
                           "--set", "batch_size=4")
    assert code == 1 and err.startswith("error: ") and str(out) in err and "Traceback" not in err


def test_encode_failing_midway_leaves_the_old_file_whole(monkeypatch, capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "e.npy"
    np.save(out, np.zeros((1, 2), dtype=np.float32))

    def killed(file, array):  # np.save cut short: half a matrix written, then the disk is full
        handle = open(file, "wb") if isinstance(file, (str, Path)) else file
        handle.write(b"\x93NUMPY half")
        handle.flush()
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", killed)
    code, _, err = run_cli(monkeypatch, capsys, "encode", "-m", tiny_model_dir, "-t", "x", "-o", out)
    monkeypatch.undo()
    assert code == 1 and "disk full" in err
    assert np.array_equal(np.load(out), np.zeros((1, 2), dtype=np.float32))
    assert not list(tmp_path.glob(".e.npy*"))  # nothing half-written left beside it


def test_train_says_what_negatives_it_trains_on_and_that_mined_ones_go_unused(monkeypatch, capsys, tiny_model_dir,
                                                                            tmp_path):
    """The README's tour mined negatives and trained without num_hard_negatives: all left out, unsaid."""
    from _support import make_pairs, write_pairs

    data = write_pairs(tmp_path / "mined.jsonl", make_pairs(16, negatives=1))
    args = ["train", "--model", tiny_model_dir, "--data", data, "--output", tmp_path / "run", "--set", "batch_size=8",
            "--set", "max_steps=1", "--set", "report=false", "--set", "show_progress=false", "--set", "max_seq_length=32"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "training on 16 pairs (in-batch negatives only)" in out
    assert "warning: the training pairs bring 16 hard negatives, but num_hard_negatives = 0" in err
    code, out, err = run_cli(monkeypatch, capsys, *args, "--set", "num_hard_negatives=1")
    assert code == 0 and "(up to 1 hard negative(s) each, and in-batch negatives)" in out and "warning" not in err


def test_search_rebuilds_a_saved_index_of_another_kind_than_asked(monkeypatch, capsys, tiny_model_dir, tmp_path):
    """--kind flat on a saved HNSW index kept the approximate one without a word."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"text number {i}"} for i in range(6)])
    index = tmp_path / "idx"
    run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir)
    code, _, err = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir, "--kind", "hnsw")
    assert code == 2 and "is a flat index, not hnsw; pass --corpus to rebuild it as hnsw" in err
    code, out, err = run_cli(monkeypatch, capsys, "search", "a", "-c", corpus, "--index", index, "-m", tiny_model_dir,
                             "--kind", "hnsw")
    assert code == 0 and "saved a hnsw index of 6 documents" in out, err
    assert json.loads((index / "meta.json").read_text())["index"] == "hnsw"
    code, out, _ = run_cli(monkeypatch, capsys, "search", "a", "--index", index, "-m", tiny_model_dir)
    assert code == 0 and "saved a" not in out  # auto: whatever kind is there
