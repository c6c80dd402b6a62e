"""The two-tower loop: CLIP-style training learns, caches both towers exactly, and gathers across ranks."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _image_support import tiny_clip_vision_config, tiny_vit_config, write_shapes_dataset
from _support import assert_resumed_from, make_pairs, record_chunk_sizes
from contrastkit.data.images import read_image_captions
from contrastkit.errors import ConfigError
from contrastkit.towers import DualEncoder, TextTower, VisionTower
from contrastkit.train import TrainConfig
from contrastkit.train.checkpoint import latest_checkpoint, list_checkpoints
from contrastkit.train.dual_trainer import DualTrainer, clip_loss, sides_from_image_captions, sides_from_pairs


def image_to_text_recall_at_1(model, records) -> float:
    images = model.encode_images([r.image for r in records])
    captions = model.encode_queries([r.caption for r in records])
    return float(np.mean((images @ captions.T).argmax(1) == np.arange(len(records))))


def test_clip_loss_is_the_mean_of_both_cross_entropies():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    d = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    logits = scale * q @ d.T
    labels = torch.arange(6)
    cross_entropy = torch.nn.functional.cross_entropy
    naive = (cross_entropy(logits, labels) + cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(clip_loss(q, d, scale), naive, atol=1e-12, rtol=0)


def test_clip_loss_masks_known_positives_in_both_directions():
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    d = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    scale = torch.tensor(20.0, dtype=torch.float64)
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[0, 2] = True  # document 2 is relevant to query 0 too
    logits = scale * q @ d.T
    masked = logits.masked_fill(known, float("-inf"))  # query 0 does not push document 2 away ...
    masked_t = logits.T.masked_fill(known.T, float("-inf"))  # ... nor document 2 query 0
    labels = torch.arange(4)
    cross_entropy = torch.nn.functional.cross_entropy
    naive = (cross_entropy(masked, labels) + cross_entropy(masked_t, labels)) / 2
    torch.testing.assert_close(clip_loss(q, d, scale, known), naive, atol=1e-12, rtol=0)
    assert clip_loss(q, d, scale) > clip_loss(q, d, scale, known)  # masking removes negatives


@pytest.mark.parametrize("mask_known", [True, False])
def test_two_tower_loop_masks_other_relevant_documents_of_a_query(tiny_encoder, tmp_path, mask_known):
    # each query is relevant to its own document and the next one's; the sampler never puts a text
    # twice in a batch, so q_i's other document can only come as another row's positive, where it
    # is a false negative of q_i unless masked
    pairs = [(f"question {i} about lift", f"document {(i + s) % 16} on wings") for i in range(16) for s in (0, 1)]
    queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
    model = DualEncoder.shared(tiny_encoder)
    trainer = DualTrainer(TrainConfig(output_dir=str(tmp_path), batch_size=8, max_steps=1, show_progress=False,
                                      mask_known_positives=mask_known), model, queries, documents)
    model.eval()  # no dropout: the trainer's loss and the one computed here see the same embeddings
    batch = trainer._batches(0)[0]
    relevant = {(q, d) for q, d in pairs}
    known = torch.tensor([[j != i and (queries[a], documents[b]) in relevant for j, b in enumerate(batch)]
                          for i, a in enumerate(batch)])
    assert known.any()  # the batch holds a false negative: the check has teeth
    with torch.no_grad():
        q = model.embed("query", [queries[i] for i in batch])
        d = model.embed("document", [documents[i] for i in batch])
        masked, unmasked = clip_loss(q, d, model.logit_scale, known), clip_loss(q, d, model.logit_scale)
    loss = trainer.compute_gradients(batch)
    torch.testing.assert_close(loss, masked if mask_known else unmasked, atol=1e-5, rtol=0)
    assert abs(float(masked) - float(unmasked)) > 1e-3


def test_clip_training_of_tiny_towers_learns_shapes_and_colours(tiny_model_dir, tmp_path):
    """Tiny random BERT + tiny random CLIP vision tower, 24 generated images: R@1 climbs far above chance."""
    records = read_image_captions(write_shapes_dataset(tmp_path / "data"))
    torch.manual_seed(0)
    model = DualEncoder(TextTower.from_pretrained(tiny_model_dir, max_seq_length=16),
                        VisionTower.from_config(tiny_clip_vision_config()), dim=16)
    chance, before = 1 / len(records), image_to_text_recall_at_1(model, records)
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=24, chunk_size=None, max_steps=24, lr=3e-3,
                         warmup_ratio=0.1, scheduler="constant", show_progress=False)
    out = DualTrainer(config, model, *sides_from_image_captions(records, model)).train()

    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    assert [r["lr"] for r in log] == pytest.approx([1.5e-3] + [3e-3] * 23)  # the rate each step used (2 warm-up)
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.6 * first, (first, last)
    assert log[0]["logit_scale"] != pytest.approx(1 / 0.07, rel=1e-4)  # the scale is learnt
    after = image_to_text_recall_at_1(model, records)
    assert before <= 3 * chance and after >= 10 * chance, (before, after)
    # the run's folder holds both towers and a complete checkpoint
    assert (out / "checkpoints" / "checkpoint-00000024" / "model" / "dual_encoder.json").is_file()
    assert image_to_text_recall_at_1(DualEncoder.load(out), records) == after


@pytest.fixture
def text_and_vit_float64(tiny_model_dir):
    """Both towers in float64 with dropout on, so gradients can be compared to 1e-8."""
    torch.manual_seed(0)
    vit_config = tiny_vit_config()
    vit_config.hidden_dropout_prob = vit_config.attention_probs_dropout_prob = 0.1
    return DualEncoder(TextTower.from_pretrained(tiny_model_dir, max_seq_length=16),
                       VisionTower.from_config(vit_config), dim=16).double()


@pytest.mark.parametrize("cached", [{"mini_batch_size": 3}, {"mini_batch_size": 12}])
def test_gradient_cache_over_both_towers_equals_the_uncached_step(text_and_vit_float64, tmp_path, cached):
    """Dropout on in both towers: the cached step's gradients (towers, projections, scale) equal the plain step's."""
    model = text_and_vit_float64
    # the same chunks in both steps, so both draw the same dropout masks: a packing text tower would take
    # the uncached group whole (tests/test_packing.py checks gradient caching through the packed forward)
    model.tower("query").encoder.packing = False
    records = read_image_captions(write_shapes_dataset(tmp_path / "data"))[:12]
    sides = sides_from_image_captions(records, model)

    def grads(seed: int = 7, **batching) -> dict[str, torch.Tensor]:
        config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=12, show_progress=False, **batching)
        trainer = DualTrainer(config, model, *sides)
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        trainer.compute_gradients(list(range(12)))
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = grads(chunk_size=cached["mini_batch_size"])
    with_cache = grads(**cached)
    assert full.keys() == with_cache.keys()
    assert {"log_logit_scale", "projections.query.weight", "projections.document.weight"} <= full.keys()
    assert any(n.startswith("towers.query.") for n in full) and any(n.startswith("towers.document.") for n in full)
    for name in full:
        torch.testing.assert_close(with_cache[name], full[name], atol=1e-8, rtol=0, msg=name)
    other_masks = grads(seed=8, **cached)  # dropout is on: other masks, another gradient (the check has teeth)
    assert any(not torch.allclose(other_masks[n], full[n], atol=1e-6) for n in full)


def test_text_pairs_train_through_a_shared_tower_with_prefixes(tiny_encoder, tmp_path):
    model = DualEncoder.shared(tiny_encoder)
    seen: list[str] = []
    embed = tiny_encoder.embed
    tiny_encoder.embed = lambda texts: seen.extend(texts) or embed(texts)
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, mini_batch_size=4, max_steps=2,
                         show_progress=False)
    DualTrainer(config, model, *sides_from_pairs(make_pairs(16))).train()
    assert seen and all(t.startswith(("query: what about", "passage: a study of")) for t in seen)
    # the trainer's default dropout kernel (fast_dropout) replaced every torch Dropout of the towers
    assert {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {"FastDropout"}
    assert DualEncoder.load(tmp_path / "run").prefixes == {"query": "query: ", "document": "passage: "}


def test_a_packing_text_tower_takes_each_group_whole_and_a_vision_tower_is_chunked(clip_tower_pair, tmp_path,
                                                                                     monkeypatch):
    import contrastkit.train.dual_trainer as dual_module

    model, sides = clip_tower_pair
    seen = record_chunk_sizes(monkeypatch, dual_module)
    for batching in ({"chunk_size": 4}, {"mini_batch_size": 3}):
        config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=12, show_progress=False, **batching)
        DualTrainer(config, model, *sides).compute_gradients(list(range(12)))
    assert seen == [None, 4, 3, 3]  # query side: the text tower; document side: the images


@pytest.fixture
def clip_tower_pair(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    model = DualEncoder(TextTower.from_pretrained(tiny_model_dir, max_seq_length=16),
                        VisionTower.from_config(tiny_clip_vision_config()), dim=16)
    records = read_image_captions(write_shapes_dataset(tmp_path / "data"))[:12]
    return model, sides_from_image_captions(records, model)


@pytest.mark.parametrize("setting", [{"temperature": 0.02}, {"bf16": True}, {"attention_dropout": 0.0},
                                     {"eval_every": 5, "eval_data": "some/beir"}, {"health_every": 3},
                                     {"health_sample": 8},
                                     {"cpu_streams": 2}, {"dtype": "float64"}, {"metric_for_best": "mrr@10"},
                                     {"eval_split": "dev"}])
def test_settings_the_loop_would_ignore_are_refused(tiny_encoder, tmp_path, setting):
    queries, documents = sides_from_pairs(make_pairs(16))
    config = TrainConfig(output_dir=str(tmp_path), batch_size=8, **setting)
    with pytest.raises(ConfigError, match="does not use these settings") as refused:
        DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents)
    assert all(name in str(refused.value) for name in setting)


def test_every_setting_is_used_by_the_loop_or_refused():
    """A TrainConfig field the two-tower loop neither reads nor lists in UNUSED_SETTINGS would be ignored."""
    import dataclasses
    import inspect

    from contrastkit.train import dual_trainer

    source = inspect.getsource(dual_trainer.DualTrainer)
    where_from = {"model", "data", "split"}  # what the command line loads; the trainers are handed the result
    ignored = [f.name for f in dataclasses.fields(TrainConfig)
               if f"config.{f.name}" not in source and f.name not in dual_trainer.UNUSED_SETTINGS
               and f.name not in where_from]
    assert ignored == []


def test_asking_for_what_the_loop_does_anyway_is_accepted(tiny_encoder, tmp_path):
    queries, documents = sides_from_pairs(make_pairs(16))
    config = TrainConfig(output_dir=str(tmp_path), batch_size=8, bf16=False, report=False, health_sample=0,
                         cpu_streams=1)
    DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents)


def test_bad_settings_stop_before_training(tiny_encoder, tmp_path):
    model = DualEncoder.shared(tiny_encoder)
    queries, documents = sides_from_pairs(make_pairs(16))
    with pytest.raises(ConfigError, match="num_hard_negatives = 0"):
        DualTrainer(TrainConfig(output_dir=str(tmp_path), batch_size=8, num_hard_negatives=1),
                    model, queries, documents)
    with pytest.raises(ConfigError, match="16 queries but 15 documents"):
        DualTrainer(TrainConfig(output_dir=str(tmp_path), batch_size=8), model, queries, documents[:-1])
    with pytest.raises(ConfigError, match="fewer than batch_size 32"):
        DualTrainer(TrainConfig(output_dir=str(tmp_path), batch_size=32), model, queries, documents)


def test_sides_a_tower_cannot_take_are_refused_before_training(clip_tower_pair, tmp_path):
    model, (queries, documents) = clip_tower_pair  # captions → text tower, image paths → vision tower
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, max_steps=1, show_progress=False)
    with pytest.raises(ConfigError, match=r"query 1 goes to a text tower but is PosixPath .*swapped"):
        DualTrainer(config, model, documents, queries)
    with pytest.raises(ConfigError, match=r"document 1 goes to a vision tower but is not an image file: "
                                          r"'a red circle' \(are the queries and documents swapped\?\)"):
        DualTrainer(config, model, queries, queries)
    long = ["a red circle on a plain grey background " * 10] * len(queries)  # longer than a file name may be
    with pytest.raises(ConfigError, match=r"document 1 goes to a vision tower but is not an image file"):
        DualTrainer(config, model, queries, long)  # was an OSError: File name too long
    with pytest.raises(ConfigError, match=r"document 1 goes to a vision tower as Tensor: the trainer takes image files"):
        DualTrainer(config, model, queries, [torch.zeros(3, 8, 8)] * len(queries))
    assert not (tmp_path / "run").exists()


def test_one_image_file_spelled_two_ways_is_one_image_to_the_sampler(clip_tower_pair, tmp_path):
    """"images/a.png" and its absolute path in one batch: the image was its own unmasked negative."""
    model, (queries, documents) = clip_tower_pair
    documents = [str(d) for d in documents]
    documents[1] = str(Path(documents[0]).resolve())  # the first image again, spelled otherwise
    documents[0] = os.path.relpath(documents[0])
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, max_steps=1, show_progress=False)
    trainer = DualTrainer(config, model, queries, documents)
    assert trainer._keys[0][1] == trainer._keys[1][1]
    assert not any({0, 1} <= set(batch) for batch in trainer._batches(0))


def _weights(out):
    return {**load_file(out / "dual_encoder.safetensors"), **load_file(out / "query" / "module.safetensors"),
            **{f"doc.{k}": v for k, v in load_file(out / "document" / "module.safetensors").items()}}


RANK_SCRIPT = textwrap.dedent("""
    import sys, threading, torch
    from torch import nn
    from contrastkit.towers import DualEncoder, ModuleTower
    from contrastkit.train import TrainConfig
    from contrastkit.train.dual_trainer import DualTrainer

    torch.manual_seed(0)
    queries = list(torch.randn(16, 5, dtype=torch.float64))
    documents = list(torch.randn(16, 7, dtype=torch.float64))
    model = DualEncoder(ModuleTower(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8)), 8),
                        ModuleTower(nn.Linear(7, 6), 6), dim=4).double()
    config = TrainConfig(output_dir=sys.argv[1], batch_size=8, mini_batch_size=2, max_steps=3, lr=1e-2,
                         warmup_ratio=0, show_progress=False)
    DualTrainer(config, model, queries, documents).train()
    # every rank leaves cleanly: gloo's threads left alive at exit can abort a finished process
    assert not torch.distributed.is_initialized()
    assert not any(t.name == "contrastkit-heartbeat" and t.is_alive() for t in threading.enumerate())
""")


def test_two_ranks_gather_negatives_and_equal_one_process(tmp_path):
    """2 gloo ranks, each embedding half of every global batch (gradient cache on), end with one process's weights."""
    script = tmp_path / "train_rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys() and "log_logit_scale" in a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert not math.isclose(float(a["log_logit_scale"]), math.log(1 / 0.07), rel_tol=1e-6)
    logs = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in logs] == [1, 2, 3]


class RecordingTokenizer:
    """Delegates to a tokenizer and remembers every text it was asked to tokenize."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, *args, **kwargs):
        self.texts.extend([texts] if isinstance(texts, str) else texts)
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.slow
def test_asymmetric_fine_tune_of_the_default_model_on_cranfield(shared_data, tmp_path):
    """Shared MiniLM with "query: " / "passage: ", a short fine-tune on Cranfield train pairs, then the
    evaluation issue's evaluate_retrieval on test queries (queries and documents through their own sides)."""
    from contrastkit.data import BeirDataset, load_beir, pairs_from_beir
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import evaluate_retrieval

    folder = shared_data / "cranfield"
    rng = np.random.default_rng(0)
    pairs, seen = [], set()
    for i in rng.permutation(len(train := pairs_from_beir(load_beir(folder, "train")))):
        if train[i].anchor not in seen and len(pairs) < 48:  # one pair per query: no false in-batch negatives
            seen.add(train[i].anchor)
            pairs.append(train[i])
    queries, documents = sides_from_pairs(pairs)
    encoder = Encoder.from_pretrained("default", max_seq_length=128)
    model = DualEncoder.shared(encoder, query_prefix="query: ", document_prefix="passage: ")

    def loss_on_the_pairs() -> float:
        q, d = model.encode_queries(queries), model.encode_documents(documents)
        return float(clip_loss(torch.from_numpy(q), torch.from_numpy(d), model.logit_scale.detach()))

    before = loss_on_the_pairs()
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=16, chunk_size=8, epochs=2, lr=5e-5,
                         max_seq_length=128, show_progress=False)
    DualTrainer(config, model, queries, documents).train()
    after = loss_on_the_pairs()
    assert after < before - 0.05, (before, after)

    # test split: 20 queries against their judged documents plus others (a 200-document corpus)
    test = load_beir(folder, "test")
    qrels = dict(list(test.qrels.items())[:20])
    judged = {d for docs in qrels.values() for d in docs}
    others = [d for d in rng.permutation(sorted(test.corpus)) if d not in judged][:200 - len(judged)]
    subset = BeirDataset(corpus={d: test.corpus[d] for d in sorted(judged) + others}, queries=test.queries,
                         qrels=qrels, split="test")
    recorder = encoder.tokenizer = RecordingTokenizer(encoder.tokenizer)
    result = evaluate_retrieval(model, subset, show_progress=False)
    metrics = result.metrics
    print({k: round(v, 3) for k, v in metrics.items() if k in ("ndcg@10", "recall@10", "mrr@10", "recall@100")},
          f"loss {before:.3f} -> {after:.3f}")
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["ndcg@10"] > 0.3 and metrics["recall@100"] > 0.8  # random ranking: nDCG@10 ≈ 0.05
    prefixed = [t for t in recorder.texts if t.startswith(("query: ", "passage: "))]
    assert len(prefixed) == len(recorder.texts) and {t.split(":")[0] for t in prefixed} == {"query", "passage"}


RESUME_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    from contrastkit.towers import DualEncoder, ModuleTower
    from contrastkit.train import TrainConfig
    from contrastkit.train.dual_trainer import DualTrainer

    torch.manual_seed(0)
    queries = list(torch.randn(64, 5, dtype=torch.float64))
    documents = list(torch.randn(64, 7, dtype=torch.float64))
    query_net = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 8))  # the RNG matters
    model = DualEncoder(ModuleTower(query_net, 8), ModuleTower(nn.Linear(7, 6), 6), dim=4).double()
    config = TrainConfig(output_dir=sys.argv[1], batch_size=8, max_steps=60, lr=1e-2, warmup_ratio=0.1,
                         checkpoint_every=1, keep_checkpoints=2, show_progress=False)
    trainer = DualTrainer(config, model, queries, documents)  # 8 batches an epoch: the resume crosses epochs
    if "--slow" in sys.argv:  # slow steps, so that the test can kill the run in the middle
        step = trainer.compute_gradients
        trainer.compute_gradients = lambda batch: (time.sleep(0.05), step(batch))[1]
    trainer.train(resume="--resume" in sys.argv)
""")


def test_kill_minus_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([sys.executable, str(script), str(tmp_path / "straight")], env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "--slow"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "checkpoint-00000015").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint(killed / "checkpoints")
    assert 15 <= int(killed_at.name.split("-")[1]) < 60 and not (killed / "dual_encoder.safetensors").exists()
    at_kill = _weights(killed_at / "model")

    resumed = subprocess.run([sys.executable, str(script), str(killed), "--resume"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    assert a.keys() == b.keys() and "log_logit_scale" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(at_kill[n], b[n]) for n in b)  # training really went on after the resume
    assert_resumed_from(killed / "metrics.jsonl", int(killed_at.name.split("-")[1]), 60)


def test_a_fresh_run_removes_old_checkpoints_and_resume_refuses_another_run(tmp_path, tiny_encoder):
    out = tmp_path / "run"
    queries, documents = sides_from_pairs(make_pairs(16))
    config = TrainConfig(output_dir=str(out), batch_size=8, max_steps=2, checkpoint_every=1, keep_checkpoints=5,
                         show_progress=False)
    DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents).train()
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-00000001", "checkpoint-00000002"]
    config.max_steps = 3
    with pytest.raises(ConfigError, match="made for 2 steps, this run has 3"):
        DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents).train(resume=True)
    (out / "checkpoints" / "checkpoint-00000099").mkdir()  # a stale folder of another run
    (out / "checkpoints" / "checkpoint-00000099" / "trainer_state.json").write_text("{}")
    DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents).train()
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"checkpoint-0000000{i}" for i in (1, 2, 3)]


def test_resume_refuses_a_checkpoint_made_on_other_data(tmp_path, tiny_encoder):
    out = tmp_path / "run"
    queries, documents = sides_from_pairs(make_pairs(16))
    config = TrainConfig(output_dir=str(out), batch_size=8, max_steps=2, checkpoint_every=1, show_progress=False)
    DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents).train()
    other = [d + " again" for d in documents]
    with pytest.raises(ConfigError, match="made on other training data"):
        DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, other).train(resume=True)
    DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents).train(resume=True)  # the same: resumes


def test_dual_trainer_checkpoint_every_null_writes_no_checkpoint(tmp_path, tiny_encoder):
    out = tmp_path / "run"
    queries, documents = sides_from_pairs(make_pairs(16))
    config = TrainConfig(output_dir=str(out), batch_size=8, max_steps=2, checkpoint_every=None, show_progress=False)
    DualTrainer(config, DualEncoder.shared(tiny_encoder), queries, documents).train()
    assert list_checkpoints(out / "checkpoints") == [] and (out / "metrics.jsonl").is_file()


def test_weight_decay_falls_on_weight_matrices_only(tiny_encoder, tmp_path):
    model = DualEncoder.shared(tiny_encoder, project=True)  # projections too: matrices without a bias
    config = TrainConfig(output_dir=str(tmp_path), batch_size=8, weight_decay=0.05, show_progress=False)
    trainer = DualTrainer(config, model, *sides_from_pairs(make_pairs(16)))
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: {name_of[id(p)] for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert set(groups) == {0.05, 0.0}
    no_decay = {n for n in name_of.values()
                if n.endswith(".bias") or ".LayerNorm." in n or n == "log_logit_scale"}
    assert "log_logit_scale" in no_decay and any(n.endswith("LayerNorm.weight") for n in no_decay)
    assert {"projections.query.weight", "projections.document.weight"} <= groups[0.05]
    assert any(n.endswith("word_embeddings.weight") for n in groups[0.05])
    assert groups[0.0] == no_decay
    assert groups[0.05] == set(name_of.values()) - no_decay


def test_the_logit_scale_past_its_bound_is_put_back_after_each_step(tiny_encoder, tmp_path):
    """As open_clip after each step: past log 100 the forward clamp gives the scale no gradient."""
    model = DualEncoder.shared(tiny_encoder)
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(150.0))
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=1, show_progress=False)
    DualTrainer(config, model, *sides_from_pairs(make_pairs(16))).train()
    assert model.log_logit_scale.item() <= math.log(100.0) + 1e-7
