"""The demo chain end to end on a small hand-made BEIR folder with the tiny model (fast)."""

import json

from contrastkit.demo import DemoConfig, run_demo

from _support import TOPICS

def make_beir(folder, n_queries=24):
    (folder / "qrels").mkdir(parents=True)
    docs, queries, train, test = [], [], [], []
    for i in range(n_queries):
        topic = TOPICS[i % len(TOPICS)]
        docs.append({"_id": f"d{i}", "title": f"{topic} report {i}", "text": f"measurements of {topic} in case {i}"})
        queries.append({"_id": f"q{i}", "text": f"what is known about {topic} case {i}"})
        (test if i % 4 == 0 else train).append(f"q{i}\td{i}\t1\n")
    for i in range(n_queries, n_queries + 40):  # distractors for mining
        docs.append({"_id": f"x{i}", "title": "", "text": f"unrelated note {i} on {TOPICS[i % len(TOPICS)]}"})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(train))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(test))
    return folder


def test_demo_chain_runs_and_reports_before_and_after(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "cache"))
    data = make_beir(tmp_path / "beir")
    lines = []
    config = DemoConfig(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "out"),
                        max_seq_length=32, train_max_seq_length=32, epochs=2, batch_size=6, mini_batch_size=3,
                        lr=1e-3, mine_range="0:20", relative_margin=None)
    results = run_demo(config, echo=lines.append)
    text = "\n".join(lines)
    for row in ("BM25", "base model", "fine-tuned"):
        assert row in text
    assert "ndcg@10" in text and "example query:" in text
    metrics = results["metrics"]
    assert metrics["fine-tuned"]["ndcg@10"] != metrics["base model"]["ndcg@10"]  # training changed the model
    assert results["mining"]["negatives"] > 0
    saved = json.loads((tmp_path / "out" / "demo_results.json").read_text())
    assert saved["metrics"] == metrics
    assert (tmp_path / "out" / "model" / "modules.json").is_file()
    # the report of the demo folder: the trainer's curves and health (model/) with the demo's own before/after
    assert f"report: {tmp_path / 'out' / 'report.html'}" in text
    page = (tmp_path / "out" / "report.html").read_text()
    for marker in ('data-plot="loss"', 'data-plot="similarity-histograms"', 'data-plot="eval"', ">base model<",
                   ">fine-tuned<", ">BM25<", "Demo config"):
        assert marker in page
    assert not (tmp_path / "out" / "model" / "report.html").exists()  # one report per demo, in its folder


def test_text_memo_encodes_each_text_once(tiny_encoder):
    from contrastkit.demo import TextMemo

    calls = []
    real = tiny_encoder.encode
    tiny_encoder.encode = lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw)
    memo = TextMemo(tiny_encoder)
    first = memo.encode(["a", "b", "a"])
    second = memo.encode(["b", "c"])
    assert calls == [["a", "b"], ["c"]]
    import numpy as np
    np.testing.assert_allclose(first[0], first[2])
    np.testing.assert_allclose(second, real(["b", "c"]), atol=1e-6)


def test_text_memo_takes_a_models_prompts_as_the_encoder_does(tiny_model_dir):
    """The demo measured a prompted base model without its prompts and the fine-tuned one with them."""
    import numpy as np

    from contrastkit.demo import TextMemo
    from contrastkit.encoder import Encoder

    encoder = Encoder.from_pretrained(tiny_model_dir)
    encoder.prompts = {"query": "query: ", "passage": "passage: "}
    memo = TextMemo(encoder)
    np.testing.assert_allclose(memo.encode_queries(["wing lift"]), encoder.encode_queries(["wing lift"]), atol=1e-6)
    np.testing.assert_allclose(memo.encode_documents(["wing lift"]), encoder.encode_documents(["wing lift"]), atol=1e-6)
    np.testing.assert_allclose(memo.encode(["wing lift"]), encoder.encode(["wing lift"]), atol=1e-6)
    assert not np.allclose(memo.encode_queries(["wing lift"]), memo.encode(["wing lift"]))


def test_train_overrides_reach_the_trainer_and_unknown_ones_stop_first(tiny_model_dir, tmp_path, monkeypatch):
    import pytest
    import yaml

    from contrastkit.errors import ConfigError

    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "cache"))
    data = make_beir(tmp_path / "beir")
    base = dict(data=str(data), model=str(tiny_model_dir), max_seq_length=32, train_max_seq_length=32,
                max_steps=2, batch_size=6, mini_batch_size=3, mine_range="0:20", relative_margin=None)
    with pytest.raises(ConfigError, match="not TrainConfig fields: no_such_field"):
        run_demo(DemoConfig(**base, output_dir=str(tmp_path / "bad"), train_overrides={"no_such_field": 1}))
    assert not (tmp_path / "bad").exists()  # refused before any work
    lines = []
    run_demo(DemoConfig(**base, output_dir=str(tmp_path / "out"),
                        train_overrides={"mask_known_positives": False, "symmetric": True, "batch_size": 4}),
             echo=lines.append)
    used = yaml.safe_load((tmp_path / "out" / "model" / "train_config.yaml").read_text())
    assert used["mask_known_positives"] is False and used["symmetric"] is True and used["batch_size"] == 4
    step = next(line for line in lines if line.startswith("\n[3/5]"))
    assert "masked" not in step and "batch 4 " in step


def test_a_batch_the_data_cannot_fill_names_the_demos_flag_and_a_small_one_runs(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    import pytest

    from contrastkit.errors import ConfigError

    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "cache"))
    data = make_beir(tmp_path / "beir")
    base = dict(data=str(data), model=str(tiny_model_dir), max_seq_length=32, train_max_seq_length=32,
                max_steps=1, mine_range="0:20", relative_margin=None)
    with pytest.raises(ConfigError, match=r"fewer than batch_size 64 \(the demo's batch size is 64: contrastkit "
                                          r"demo --batch-size N\)"):
        run_demo(DemoConfig(**base, output_dir=str(tmp_path / "big")), echo=lambda line: None)
    lines = []
    run_demo(DemoConfig(**base, output_dir=str(tmp_path / "small"), batch_size=4), echo=lines.append)  # mini 16 > 4
    assert any("batch 4 with length-sorted chunks, no caching" in line for line in lines)  # fits as it is
