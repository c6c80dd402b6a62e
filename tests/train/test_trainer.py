import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contrastkit.data import Pair
from contrastkit.encoder import Encoder
from contrastkit.errors import ConfigError, DataError
from contrastkit.train import TrainConfig, Trainer, TrainingError
from contrastkit.train.checkpoint import checkpoint_due, latest_checkpoint, list_checkpoints

from _support import assert_resumed_from, make_beir, make_pairs, record_chunk_sizes, write_pairs

def config(tmp_path, **kw):
    # report=False: these tests are about the loop (tests/report renders reports); health records stay on
    base = dict(data="unused", output_dir=str(tmp_path / "run"), batch_size=8, lr=1e-3, warmup_ratio=0.0,
                max_steps=12, checkpoint_every=6, show_progress=False, seed=3, report=False)
    base.update(kw)
    return TrainConfig(**base)


def step_records(path):
    """The training-step records of a metrics.jsonl (not its "eval" or "health" records)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if "eval" not in r and "health" not in r]


def mean_pair_loss(encoder, pairs):
    from contrastkit.losses import info_nce
    a = torch.from_numpy(encoder.encode([p.anchor for p in pairs]))
    b = torch.from_numpy(encoder.encode([p.positive for p in pairs]))
    return float(info_nce(a, b, temperature=0.05))


@pytest.mark.parametrize("options", [
    dict(),                                                   # length-sorted chunks
    dict(mini_batch_size=2),                                  # gradient cache
    dict(num_hard_negatives=1, learnable_temperature=True),   # hard negatives, learnable τ
    dict(num_hard_negatives=2, mini_batch_size=4, uneven=True),  # 0, 1 or 2 negatives per pair, pooled
    dict(loss="triplet", num_hard_negatives=1, margin=0.3),
    dict(loss="contrastive", num_hard_negatives=1),
    dict(symmetric=True, bf16=True, scheduler="cosine"),
])
def test_training_lowers_the_loss_and_saves_a_loadable_model(tiny_model_dir, tmp_path, options):
    from sentence_transformers import SentenceTransformer

    uneven = options.pop("uneven", False)
    pairs = make_pairs(negatives=(2 if uneven else 1) if options.get("num_hard_negatives") else 0)
    if options.get("num_hard_negatives") == 2:
        for i, pair in enumerate(pairs):
            pair.negatives = pair.negatives[:i % 3]
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    before = mean_pair_loss(encoder, pairs)
    out = Trainer(config(tmp_path, **options), encoder, pairs).train()
    after = mean_pair_loss(encoder, pairs)
    assert after < before - 0.05, (before, after)
    log = step_records(out / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert all(np.isfinite(r["loss"]) and r["pairs_per_s"] > 0 for r in log)
    assert (out / "train_config.yaml").is_file()
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(["wing lift"]), encoder.encode(["wing lift"]), atol=1e-5)
    if options.get("learnable_temperature"):
        assert log[-1]["temperature"] != pytest.approx(0.05)


def test_a_packing_encoder_takes_each_group_whole_unless_caching(tiny_model_dir, tmp_path, monkeypatch):
    """Without caching the packed forward cuts its own slabs, so chunk_size only applies to padded models."""
    import contrastkit.train.trainer as trainer_module

    seen = record_chunk_sizes(monkeypatch, trainer_module)
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    Trainer(config(tmp_path, chunk_size=4), encoder, make_pairs()).compute_gradients(list(range(8)))
    Trainer(config(tmp_path, mini_batch_size=2), encoder, make_pairs()).compute_gradients(list(range(8)))
    encoder.packing = False
    Trainer(config(tmp_path, chunk_size=4), encoder, make_pairs()).compute_gradients(list(range(8)))
    assert seen == [None, None, 2, 2, 4, 4]


def test_refill_epochs_gives_the_steps_of_len_over_batch_size(tiny_model_dir, tmp_path):
    """Queries with several documents leave pairs no batch can take: refill_epochs tops the epoch up."""
    from contrastkit.data import Pair

    pairs = [Pair(anchor=f"query {q}", positive=f"document {q} {k}") for q in range(10) for k in range(4)]
    pairs += [Pair(anchor="query 0", positive=f"document 0 extra {k}") for k in range(12)]  # 52: at most 5 full batches
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    steps = {refill: Trainer(config(tmp_path, max_steps=None, epochs=2, refill_epochs=refill), encoder, pairs).total_steps
             for refill in (False, True)}
    assert steps[False] < steps[True] == 2 * (52 // 8)


def test_checkpoints_are_pruned_and_complete(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    (tmp_path / "run" / "checkpoints" / ".tmp-checkpoint-00000099-1").mkdir(parents=True)  # a killed write
    Trainer(config(tmp_path, checkpoint_every=3, keep_checkpoints=2), encoder, make_pairs()).train()
    checkpoints = tmp_path / "run" / "checkpoints"
    names = [p.name for p in list_checkpoints(checkpoints)]
    assert names == ["checkpoint-00000009", "checkpoint-00000012"]
    assert not list(checkpoints.glob(".tmp-*"))
    for name in names:  # each one whole: the weights, the optimizer and RNG states, and the state written last
        assert {"model/model.safetensors", "trainer.pt", "trainer_state.json"} <= {
            str(p.relative_to(checkpoints / name)) for p in (checkpoints / name).rglob("*")}
    (checkpoints / "checkpoint-00000013" / "model").mkdir(parents=True)  # a folder without its state: not one
    assert [p.name for p in list_checkpoints(checkpoints)] == names
    assert latest_checkpoint(checkpoints).name == "checkpoint-00000012"


def test_checkpoint_every_null_writes_none_and_still_saves_the_model(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    out = Trainer(config(tmp_path, max_steps=4, checkpoint_every=None), encoder, make_pairs()).train()
    assert list_checkpoints(out / "checkpoints") == []
    assert (out / "model.safetensors").is_file() and len(step_records(out / "metrics.jsonl")) == 4


@pytest.mark.parametrize("every, due", [(3, [3, 6, 7]), (7, [7]), (10, [7]), (None, [])])
def test_checkpoint_due_every_n_steps_and_after_the_last(every, due):
    assert [step for step in range(1, 8) if checkpoint_due(step, 7, every)] == due


def test_nonfinite_steps_are_skipped_then_training_stops(tiny_model_dir, tmp_path, monkeypatch):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, max_nonfinite_steps=3), encoder, make_pairs())
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    calls = {"n": 0}
    real = trainer.compute_gradients

    def sometimes_nan(batch):
        calls["n"] += 1
        loss = real(batch)
        return loss * float("nan") if calls["n"] in (2, 4, 5, 6) else loss
    monkeypatch.setattr(trainer, "compute_gradients", sometimes_nan)
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row"):
        trainer.train()
    log = step_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["skipped"] for r in log] == [False, True, False, True, True]
    assert log[-1]["nonfinite_total"] == 3
    assert any(not torch.equal(before[n], p) for n, p in encoder.named_parameters())


def test_too_few_negatives_is_refused_before_training(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    with pytest.raises(ConfigError, match="training pair 1 has 0 negatives but the triplet loss takes exactly "
                                          "num_hard_negatives = 1"):
        Trainer(config(tmp_path, loss="triplet", num_hard_negatives=1), encoder, make_pairs())
    with pytest.raises(ConfigError, match="num_hard_negatives = 2 but no training pair has negatives"):
        Trainer(config(tmp_path, num_hard_negatives=2), encoder, make_pairs())
    with pytest.raises(ConfigError, match="only 4 training pairs, fewer than batch_size 8"):
        Trainer(config(tmp_path), encoder, make_pairs(4))


def test_evaluation_hook_keeps_the_best_model(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    scores, seen = iter([0.2, 0.5, 0.3, 0.4]), []

    def evaluator(e):
        seen.append({k: v.detach().clone() for k, v in e.model.state_dict().items()})
        return {"ndcg@10": next(scores)}

    Trainer(config(tmp_path, eval_every=3), encoder, make_pairs(), evaluator=evaluator).train()
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"]["ndcg@10"] for r in log if "eval" in r] == [0.2, 0.5, 0.3, 0.4]
    best = Encoder.from_pretrained(tmp_path / "run" / "best").model.state_dict()
    assert len(seen) == 4 and best.keys() == seen[1].keys()
    assert all(torch.equal(best[k], seen[1][k]) for k in best)  # the weights that scored 0.5, at step 6
    assert any(not torch.equal(best[k], seen[3][k]) for k in best)  # not the last evaluated ones


def _train_cmd(model_dir, data, out, *extra):
    return [sys.executable, "-m", "contrastkit.cli", "train", "--model", str(model_dir), "--data", str(data),
            "--output", str(out), "--set", "batch_size=8", "--set", "max_steps=40", "--set", "checkpoint_every=4",
            "--set", "lr=1e-3", "--set", "show_progress=false", "--set", "max_seq_length=32", "--set",
            "mini_batch_size=4", "--set", "report=false", *extra]


def test_ctrl_c_stops_training_with_exit_code_130_and_says_so(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(64))
    # SIGINT as a terminal delivers it: a shell running the suite in the background (CI, nohup) starts
    # its children with SIGINT ignored, and a Python that inherits that never raises KeyboardInterrupt
    proc = subprocess.Popen(_train_cmd(tiny_model_dir, data, tmp_path / "run", "--set", "max_steps=100000"),
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "run" / "checkpoints" / "checkpoint-00000004").exists():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never left training 100,000 steps behind a failed test
    assert proc.returncode == 130, stderr[-2000:]  # a script sees the run did not finish
    assert "interrupted" in stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_kill_minus_9_then_resume_gives_the_same_weights(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(64))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tiny_model_dir, data, tmp_path / "straight"), check=True, env=env,
                   capture_output=True)

    proc = subprocess.Popen(_train_cmd(tiny_model_dir, data, tmp_path / "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints / "checkpoint-00000012").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(checkpoints)
    assert 12 <= int(killed_at.name.split("-")[1]) < 40
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    at_kill = load_file(killed_at / "model" / "model.safetensors")

    resumed = subprocess.run(_train_cmd(tiny_model_dir, data, tmp_path / "killed", "--resume"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(at_kill[n], b[n]) for n in b)  # training really went on after the resume
    assert_resumed_from(tmp_path / "killed" / "metrics.jsonl", int(killed_at.name.split("-")[1]), 40)


def test_cli_bad_config_fails_before_training(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(16))
    out = tmp_path / "run"
    result = subprocess.run(_train_cmd(tiny_model_dir, data, out, "--set", "mini_batch_size=16"),
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "batch_size (8) is smaller than mini_batch_size (16)" in result.stderr
    assert not out.exists()


def test_epochs_of_different_lengths_are_all_trained(tiny_model_dir, tmp_path):
    """With repeated anchors the no-duplicates sampler cuts a different number of batches each epoch."""
    pairs = [Pair(anchor=f"query {i % 7}", positive=f"document {i}") for i in range(40)]
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, max_steps=None, epochs=4, batch_size=5), encoder, pairs)
    lengths = [len(trainer._batches(e)) for e in range(4)]
    assert len(set(lengths)) > 1, lengths  # the case this test is about
    assert trainer.total_steps == sum(lengths)
    trainer.train()
    log = step_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [e for e, n in enumerate(lengths) for _ in range(n)]


def test_cli_evaluates_during_training_and_keeps_the_best(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", make_pairs(32))
    beir = make_beir(tmp_path / "beir")
    out = tmp_path / "run"
    result = subprocess.run(_train_cmd(tiny_model_dir, data, out, "--set", "max_steps=4", "--set", "eval_every=2",
                                       "--set", "checkpoint_every=2", "--set", f"eval_data={beir}"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    evals = [json.loads(x)["eval"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 2 and all("ndcg@10" in e for e in evals)
    # best/ holds the weights of the first evaluation with the highest nDCG@10 (checkpoints at the same steps)
    best_step = 2 * (1 + max(range(2), key=lambda i: (evals[i]["ndcg@10"], -i)))
    best = load_file(out / "best" / "model.safetensors")
    at_best = load_file(out / "checkpoints" / f"checkpoint-{best_step:08d}" / "model" / "model.safetensors")
    assert best.keys() == at_best.keys() and all(torch.equal(best[k], at_best[k]) for k in best)
    missing = subprocess.run(_train_cmd(tiny_model_dir, data, tmp_path / "r2", "--set", "eval_every=2"),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "eval_every is set but there is nothing to evaluate with" in missing.stderr


def test_the_python_trainer_evaluates_eval_data_as_the_cli_does(tiny_model_dir, tmp_path):
    beir = make_beir(tmp_path / "beir")
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    out = Trainer(config(tmp_path, max_steps=4, eval_every=2, checkpoint_every=None, eval_data=str(beir)),
                  encoder, make_pairs(32)).train()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [2, 4]
    assert set(json.loads((out / "retrieval.json").read_text())["systems"]) >= {"before", "after"}
    assert (out / "best" / "model.safetensors").is_file()
    with pytest.raises(DataError, match="queries.jsonl"):  # read before any training, not at the first evaluation
        Trainer(config(tmp_path, eval_data=str(tmp_path)), encoder, make_pairs(32))


def test_the_encoders_dtype_must_be_the_configs(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    with pytest.raises(ConfigError, match="weights are float32 but dtype is float64"):
        Trainer(config(tmp_path, dtype="float64"), encoder, make_pairs())
    with pytest.raises(ConfigError, match="weights are float64 but dtype is float32"):
        Trainer(config(tmp_path), encoder.double(), make_pairs())
    Trainer(config(tmp_path, dtype="float64"), encoder, make_pairs())  # matching: accepted


def test_a_fresh_run_in_an_old_folder_starts_clean(tiny_model_dir, tmp_path):
    Trainer(config(tmp_path, max_steps=12, checkpoint_every=6), Encoder.from_pretrained(tiny_model_dir), make_pairs()).train()
    Trainer(config(tmp_path, max_steps=4, checkpoint_every=2), Encoder.from_pretrained(tiny_model_dir), make_pairs()).train()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["checkpoint-00000002",
                                                                                   "checkpoint-00000004"]
    log = step_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_the_progress_bar_says_when_it_evaluates_and_its_speed_leaves_evaluations_out(tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    bars = []

    class Bar:  # stands in for tqdm: records what the bar says
        def __init__(self, *args, desc="", **kwargs):
            self.desc, self.postfix = desc, {}
            bars.append(self)

        def set_description_str(self, text, refresh=True):
            self.desc = text

        def set_postfix(self, **values):
            self.postfix = values

        def update(self, n=1):
            pass

        def unpause(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr("contrastkit.train.trainer.tqdm", Bar)
    said = []

    def slow_evaluator(encoder):
        said.append(bars[0].desc)
        time.sleep(0.5)  # an evaluation far longer than a tiny step
        return {"ndcg@10": 0.1}

    Trainer(config(tmp_path, max_steps=4, eval_every=2, checkpoint_every=None), Encoder.from_pretrained(tiny_model_dir),
            make_pairs(), evaluator=slow_evaluator).train()
    assert said == ["training (evaluating)"] * 2 and bars[0].desc == "training"
    steps = step_records(tmp_path / "run" / "metrics.jsonl")
    slowest_step = min(r["pairs_per_s"] for r in steps)
    assert float(bars[0].postfix["pairs_s"]) >= 0.9 * slowest_step  # not dragged down by the 1 s of evaluations


def test_the_progress_bars_clock_leaves_evaluations_out(tiny_model_dir, tmp_path, monkeypatch):
    """An evaluation before the first step read as a 42-second step: 16 minutes left, for one."""
    from tqdm.auto import tqdm

    bars = []

    class Kept(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr("contrastkit.train.trainer.tqdm", Kept)

    def slow_evaluator(encoder):
        time.sleep(0.7)
        return {"ndcg@10": 0.1}

    trainer = Trainer(config(tmp_path, max_steps=3, eval_every=1, checkpoint_every=None, show_progress=True),
                      Encoder.from_pretrained(tiny_model_dir), make_pairs(), evaluator=slow_evaluator)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    assert wall > 2.1  # three evaluations of 0.7 s
    assert bars[0].format_dict["elapsed"] < wall - 1.8


def test_an_old_report_does_not_survive_a_fresh_run_without_one(tiny_model_dir, tmp_path):
    Trainer(config(tmp_path, max_steps=2, checkpoint_every=None, report=True), Encoder.from_pretrained(tiny_model_dir),
            make_pairs()).train()
    assert (tmp_path / "run" / "report.html").is_file()
    Trainer(config(tmp_path, max_steps=2, checkpoint_every=None), Encoder.from_pretrained(tiny_model_dir),
            make_pairs()).train()
    assert not (tmp_path / "run" / "report.html").exists()  # it described the other run's model


def test_the_environment_record_says_fp64_for_a_float64_run(tiny_model_dir, tmp_path):
    Trainer(config(tmp_path, max_steps=1, checkpoint_every=None, dtype="float64"),
            Encoder.from_pretrained(tiny_model_dir, torch_dtype=torch.float64), make_pairs()).train()
    precision = json.loads((tmp_path / "run" / "environment.json").read_text())["precision"]
    assert precision.startswith("fp64") and "fused" not in precision


@pytest.mark.parametrize("batching", [dict(), dict(mini_batch_size=4), dict(cpu_streams=1)])
def test_a_float64_run_computes_its_loss_in_float64(tmp_path, batching):
    """"For exact checks": the embeddings and a learnable temperature stay float64 into the loss,
    whose value equals a float64 reference on the same embeddings to the last bits."""
    from _support import build_tiny_bert_folder
    from contrastkit.losses import info_nce
    model_dir = build_tiny_bert_folder(tmp_path / "model", dropout=0.0)  # the reference embeds the same values
    encoder = Encoder.from_pretrained(model_dir, torch_dtype=torch.float64, max_seq_length=32)
    trainer = Trainer(config(tmp_path, dtype="float64", learnable_temperature=True, **batching), encoder, make_pairs())
    assert trainer.loss_fn.log_scale.dtype == torch.float64
    batch = trainer._batches(0)[0]
    loss = trainer.compute_gradients(batch)
    with torch.no_grad():
        anchors = encoder.embed([trainer.examples[i].anchor for i in batch])
        positives = encoder.embed([trainer.examples[i].positive for i in batch])
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(info_nce(anchors, positives, temperature=0.05).item(), rel=1e-12)


def test_an_old_best_model_does_not_survive_a_fresh_run(tiny_model_dir, tmp_path):
    seen = iter([0.2, 0.5])
    Trainer(config(tmp_path, max_steps=4, eval_every=2), Encoder.from_pretrained(tiny_model_dir), make_pairs(),
            evaluator=lambda encoder: {"ndcg@10": next(seen)}).train()
    assert (tmp_path / "run" / "best").is_dir()
    Trainer(config(tmp_path, max_steps=4), Encoder.from_pretrained(tiny_model_dir), make_pairs()).train()
    assert not (tmp_path / "run" / "best").exists()  # it was the other run's


def test_a_resume_the_checkpoint_refuses_leaves_the_run_as_it_was(tiny_model_dir, tmp_path):
    Trainer(config(tmp_path, max_steps=4, checkpoint_every=2), Encoder.from_pretrained(tiny_model_dir),
            make_pairs()).train()
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("train_config.yaml", "environment.json", "metrics.jsonl")}
    with pytest.raises(ConfigError, match="the checkpoint was made for 4 steps, this run has 6"):
        Trainer(config(tmp_path, max_steps=6, checkpoint_every=2, lr=5e-4), Encoder.from_pretrained(tiny_model_dir),
                make_pairs()).train(resume=True)
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_beir_split_without_a_usable_judgement_is_refused_by_name(tmp_path):
    """Only grade-0 judgements: no pair. It read as "fewer than batch_size", after the model loaded."""
    from contrastkit.train import load_training_pairs

    folder = make_beir(tmp_path / "beir")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t0\nq2\td1\t0\n")
    with pytest.raises(DataError, match=r"qrels/test.tsv: no judgement with grade > 0 of a non-empty document"):
        load_training_pairs(folder, split="test")


def test_group_by_source_keeps_each_batch_to_one_data_set(tiny_model_dir, tmp_path):
    from contrastkit.train import load_training_pairs

    faq = write_pairs(tmp_path / "faq.jsonl", make_pairs(24)[:12])
    docs = make_pairs(24)[12:]
    for pair in docs[:4]:
        pair.source = "manual"  # an explicit source wins over the file's name
    other = write_pairs(tmp_path / "other.jsonl", docs)
    pairs = load_training_pairs([faq, other])
    assert [p.source for p in pairs] == [str(faq)] * 12 + ["manual"] * 4 + [str(other)] * 8
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    grouped = Trainer(config(tmp_path, max_steps=None, batch_size=4, group_by_source=True), encoder, pairs)
    mixed = Trainer(config(tmp_path, max_steps=None, batch_size=4), encoder, pairs)
    for epoch in range(3):
        assert all(len({pairs[i].source for i in b}) == 1 for b in grouped._batches(epoch))
        assert sorted(i for b in grouped._batches(epoch) for i in b) == list(range(24))
    assert any(len({pairs[i].source for i in b}) > 1 for b in mixed._batches(0))


def test_attention_dropout_setting_reaches_the_model_or_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    Trainer(config(tmp_path, attention_dropout=0.0), encoder, make_pairs(16))
    dropouts = {name: m.p for name, m in encoder.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert {p for n, p in dropouts.items() if n.endswith("attention.self.dropout")} == {0.0}
    assert {p for n, p in dropouts.items() if not n.endswith("attention.self.dropout")} == {0.1}
    monkeypatch.setattr(Encoder, "set_attention_dropout", lambda self, p: 0)  # a model without any
    with pytest.raises(ConfigError, match="no attention dropout was found in BertModel"):
        Trainer(config(tmp_path, attention_dropout=0.0), encoder, make_pairs(16))


@pytest.mark.parametrize("fast", [True, False])
def test_fast_dropout_setting_swaps_the_dropout_modules(tiny_model_dir, tmp_path, fast):
    from contrastkit.fast_dropout import FastDropout

    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    Trainer(config(tmp_path, fast_dropout=fast), encoder, make_pairs(16))
    kinds = {type(m) for m in encoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert kinds == ({FastDropout} if fast else {torch.nn.Dropout})


def test_health_steps_stay_a_small_share_of_training():
    from contrastkit.train.trainer import default_health_every

    assert default_health_every(1000, 64, 3, 128) == 100      # a long run: every tenth
    assert default_health_every(15, 32, 2, 128) == 27          # 32-pair steps: only step 0 and the end
    assert default_health_every(30, 64, 3, 128) == 9           # the demo: 0, 9, 18, 27 and 30
    for total, batch, texts, sample in [(15, 32, 2, 128), (30, 64, 3, 128), (200, 8, 2, 64)]:
        every = default_health_every(total, batch, texts, sample)
        assert (2 * sample) / every <= 0.05 * 3 * texts * batch + 1e-9  # health work per step ≤ 5 % of a step


def test_known_positive_mask_marks_the_other_positives_of_each_anchor():
    from contrastkit.train.trainer import known_positive_mask, positives_by_anchor

    pairs = [Pair(anchor="q1", positive="d1"), Pair(anchor="q1", positive="d2"), Pair(anchor="q2", positive="d2"),
             Pair(anchor="q3", positive="d3")]
    positives_of = positives_by_anchor(pairs)
    assert positives_of == {"q1": {"d1", "d2"}}  # q2 and q3 have one positive each: nothing to mask
    # candidates: the in-batch positives, then pooled hard negatives (d1 again, mined for q3)
    mask = known_positive_mask(["q1", "q2", "q3"], ["d1", "d2", "d3", "d1"], positives_of)
    assert mask.tolist() == [[True, True, False, True], [False] * 4, [False] * 4]  # (0, 0) is ignored by the loss
    assert known_positive_mask(["q2", "q3"], ["d2", "d3"], positives_of) is None


@pytest.mark.parametrize("mask_known", [True, False])
def test_trainer_masks_other_relevant_documents_of_a_query(tiny_model_dir, tmp_path, mask_known):
    # 16 queries, each relevant to its own document and the next one's: in a batch, (q_i, d_i) and
    # (q_i+1, d_i+1) make d_i+1 a false negative of q_i unless it is masked
    pairs = [Pair(anchor=f"question {i} about lift", positive=f"document {(i + s) % 16} on wings")
             for i in range(16) for s in (0, 1)]
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=16)
    out = Trainer(config(tmp_path, batch_size=8, max_steps=4, mask_known_positives=mask_known),
                  encoder, pairs).train()
    masked = [r["masked"] for r in step_records(out / "metrics.jsonl")]
    assert (sum(masked) > 0) == mask_known, masked


def test_the_packed_word_embedding_gradient_stays_allocated_across_steps(tiny_encoder, tmp_path):
    """The trainer keeps that gradient (zeroed in place) so the packed forward adds into it sparsely."""
    pairs = [Pair(f"query {i}", f"document number {i}") for i in range(16)]
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, max_steps=3, show_progress=False,
                         report=False, health_sample=0)
    trainer = Trainer(config, tiny_encoder, pairs)
    weight = tiny_encoder.model.embeddings.word_embeddings.weight
    assert tiny_encoder.packs and trainer._kept_grads == [weight]
    held, before = weight.grad, weight.detach().clone()
    trainer.train()
    assert weight.grad is held and not weight.grad.any()  # zeroed after the last step, not freed
    assert not torch.equal(weight.detach(), before)  # and the embeddings were trained


def test_a_metric_for_best_the_evaluator_does_not_report_warns_once(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, eval_every=3, metric_for_best="mine"), encoder, make_pairs(),
                      evaluator=lambda e: {"ndcg@10": 0.5})
    with pytest.warns(UserWarning, match="metric_for_best 'mine' is not among the evaluator's metrics") as caught:
        trainer.train()
    assert len([w for w in caught if "metric_for_best" in str(w.message)]) == 1
    assert not (tmp_path / "run" / "best").exists()


def test_resume_drops_the_log_records_after_its_checkpoint(tmp_path):
    from contrastkit.train.checkpoint import drop_log_records_after

    log = tmp_path / "metrics.jsonl"
    records = [{"step": 0, "eval": {"ndcg@10": 0.4}}, {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
               {"step": 2, "health": {"alignment": 0.3}}, {"step": 3, "loss": 1.2}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')  # killed mid-write
    drop_log_records_after(log, 2)
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:4]
    drop_log_records_after(tmp_path / "absent.jsonl", 2)  # nothing logged yet: nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


@pytest.mark.parametrize("kind, expected", [  # 10 steps, 2 of warm-up; worked out by hand
    ("linear", [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]),
    ("cosine", [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]),
    ("constant", [0.5, 1.0] + [1.0] * 8),
])
def test_lr_warms_up_then_follows_its_schedule(kind, expected):
    from contrastkit.train.trainer import lr_factor

    assert [lr_factor(step, 10, 2, kind) for step in range(10)] == pytest.approx(expected)


def test_the_trainer_warms_up_over_its_share_of_the_steps(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    Trainer(config(tmp_path, max_steps=8, warmup_ratio=0.25, checkpoint_every=None), encoder, make_pairs()).train()
    lrs = [r["lr"] for r in step_records(tmp_path / "run" / "metrics.jsonl")]
    # each step's record holds the rate that step used: 2 warm-up steps (1e-3 / 2, 1e-3), then linear to 0
    assert lrs == pytest.approx([1e-3 / 2, 1e-3, 1e-3, 1e-3 * 5 / 6, 1e-3 * 4 / 6, 1e-3 * 3 / 6, 1e-3 * 2 / 6,
                                 1e-3 / 6])


def test_the_config_reaches_the_loss():
    from contrastkit.train.trainer import build_loss

    loss = build_loss(TrainConfig(data="x", symmetric=True, mask_margin=0.1, similarity="dot", temperature=0.1))
    assert (loss.options["symmetric"], loss.options["mask_margin"], loss.options["similarity"]) == (True, 0.1, "dot")
    triplet = build_loss(TrainConfig(data="x", loss="triplet", margin=0.3, similarity="neg_euclidean"))
    assert (type(triplet).__name__, triplet.margin, triplet.distance) == ("TripletLoss", 0.3, "euclidean")


def test_weight_decay_falls_on_weight_matrices_and_embeddings_only(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, weight_decay=0.05), encoder, make_pairs())
    decay, no_decay = trainer.optimizer.param_groups
    names = {id(p): n for n, p in encoder.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(not n.endswith(".bias") and "LayerNorm" not in n for n in (names[id(p)] for p in decay["params"]))
    assert {names[id(p)] for p in no_decay["params"] if id(p) in names} == {
        n for n, _ in encoder.named_parameters() if n.endswith(".bias") or "LayerNorm" in n}
    assert any("word_embeddings" in names[id(p)] for p in decay["params"])


def test_the_first_k_negatives_of_each_pair_are_used_and_a_negative_that_is_a_positive_is_masked(
        tiny_model_dir, tmp_path):
    pairs = [Pair("a0", "p0", negatives=("p1", "x0")), Pair("a1", "p1", negatives=("n1", "y1"))] * 4
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, batch_size=2, num_hard_negatives=1, mask_known_positives=False), encoder, pairs)
    groups = trainer._groups([0, 1])
    assert groups == [["a0", "a1"], ["p0", "p1"], ["p1", "n1"]]
    embeddings = [torch.randn(len(g), 32, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)]
    trainer._loss_on(groups)(*embeddings)
    # row 0's hard negative "p1" is row 1's positive: masked for row 1 (by text id), and nothing else
    assert int(trainer._stats["masked"]) == 1


def test_the_first_step_moves_the_weights_at_the_warm_up_rate(tiny_model_dir, tmp_path):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, max_steps=4, warmup_ratio=0.5, weight_decay=0.0, max_grad_norm=None), encoder,
                      make_pairs())
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    trainer._optimizer_step(trainer.compute_gradients(trainer._batches(0)[0]))
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in encoder.named_parameters())
    # AdamW's first update is lr · g / (|g| + eps) for each weight: the rate itself where g is not tiny,
    # and the first of 2 warm-up steps runs at half of 1e-3
    assert moved == pytest.approx(1e-3 / 2, rel=1e-3)


def test_a_learnable_temperature_past_its_bound_is_put_back_after_each_step(tiny_model_dir, tmp_path):
    """The forward clamp passes no gradient past 1/τ = 100: a scale a step left there would be frozen."""
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, max_steps=1, learnable_temperature=True), encoder, make_pairs())
    with torch.no_grad():
        trainer.loss_fn.log_scale.fill_(math.log(150.0))
    trainer.train()
    assert trainer.loss_fn.log_scale.item() <= math.log(100.0) + 1e-7


@pytest.mark.parametrize("batching", [dict(), dict(mini_batch_size=4), dict(cpu_streams=1)])
def test_a_batch_without_any_hard_negative_trains_on_in_batch_negatives(tiny_model_dir, tmp_path, batching):
    """Pooled negatives let a pair bring none ("mine" leaves such pairs): a batch where no pair brings
    one crashed the step (an empty group); it is trained on in-batch negatives alone."""
    pairs = make_pairs(48, negatives=1)
    for i, pair in enumerate(pairs):
        pair.negatives = pair.negatives if i in (0, 1) else []
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    trainer = Trainer(config(tmp_path, num_hard_negatives=1, max_steps=6, **batching), encoder, pairs)
    groups = [trainer._groups(batch) for batch in trainer._batches(0)]
    assert {len(g) for g in groups} == {2, 3}  # batches with and without a negative
    out = trainer.train()
    assert [r["step"] for r in step_records(out / "metrics.jsonl")] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in step_records(out / "metrics.jsonl"))


def test_drop_last_false_says_how_many_batches_come_out_incomplete(tiny_model_dir, tmp_path):
    """A query with ten documents: its pairs cannot share a batch, so the end of each pass is cut
    into batches of one pair (no in-batch negative): said before training."""
    pairs = make_pairs(14) + [Pair(anchor="the one query", positive=f"document {k}") for k in range(10)]
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    with pytest.warns(UserWarning, match=r"drop_last false: \d+ of the first epoch's \d+ batches are incomplete "
                                         r"\(down to 1 pair\(s\)\)"):
        Trainer(config(tmp_path, drop_last=False, max_steps=None), encoder, pairs)
    distinct = make_pairs(40)  # no shared text: one short batch per source is no news
    for i, pair in enumerate(distinct):
        pair.source = "a" if i < 20 else "b"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(config(tmp_path, drop_last=False, max_steps=None, group_by_source=True), encoder, distinct)


@pytest.mark.parametrize("similarity, name", [("dot", "dot"), ("neg_euclidean", "euclidean")])
def test_the_saved_model_names_the_similarity_it_was_trained_with(tiny_model_dir, tmp_path, similarity, name):
    """It always said "cosine": sentence-transformers' model.similarity then ranked by another function."""
    from sentence_transformers import SentenceTransformer

    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32, normalize=False)
    out = Trainer(config(tmp_path, max_steps=1, similarity=similarity), encoder, make_pairs()).train()
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == name
    assert SentenceTransformer(str(out), device="cpu").similarity_fn_name == name
