"""The CPU step as parallel streams (contrastkit/train/streams.py): same gradients as one pass, repeatable."""

import json
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.data import Pair
from contrastkit.encoder import Encoder
from contrastkit.errors import ConfigError
from contrastkit.fast_dropout import draw_seed, seeds_from
from contrastkit.train import TrainConfig, Trainer
from contrastkit.train.streams import (Lookahead, StreamPool, balanced_cuts, coalesce_sparse_gradients,
                                       stream_backward, stream_count)
from contrastkit.train.trainer import own_memory

from _support import assert_resumed_from, build_tiny_bert_folder


def pairs(n=24):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [Pair(" ".join(words[: 1 + i % 5]) + f" query {i}",
                 " ".join(words[i % 7:]) + f" a longer document about item {i} " * (1 + i % 3)) for i in range(n)]


def trainer_for(model_dir, tmp_path, streams=None, **kw):
    """A trainer on the tiny BERT; `streams`: run that many whatever this machine's thread count."""
    encoder = Encoder.from_pretrained(model_dir, max_seq_length=48)
    config = TrainConfig(**{**dict(data="-", output_dir=str(tmp_path), batch_size=12, max_steps=3, lr=1e-3,
                                   warmup_ratio=0.0, show_progress=False, report=False, health_sample=0, seed=5),
                            **kw})
    trainer = Trainer(config, encoder, pairs())
    encoder.train()  # as train() sets it: dropout on
    if streams is not None:
        if streams > 1 and trainer.streams == 1:
            coalesce_sparse_gradients(trainer._kept_grads)  # as the trainer does when it streams
        trainer.streams = streams
    return trainer


def gradients(trainer):
    return {n: p.grad.clone() for n, p in trainer.encoder.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lengths,parts", [([5, 5, 5, 5], 2), ([1, 1, 1, 30], 2), ([30, 1, 1, 1], 2),
                                           ([3, 9, 4, 4, 8, 2, 7], 3), ([2, 2], 2), ([1] * 9, 4)])
def test_balanced_cuts_cover_every_item_in_non_empty_parts_of_about_equal_length(lengths, parts):
    cuts = balanced_cuts(lengths, parts)
    assert cuts[0] == 0 and cuts[-1] == len(lengths) and len(cuts) == parts + 1
    assert all(a < b for a, b in zip(cuts, cuts[1:]))
    sums = [sum(lengths[a:b]) for a, b in zip(cuts, cuts[1:])]
    # no cut can move by one item and bring the parts closer than one longest item
    assert max(sums) - min(sums) <= max(lengths)


def test_balanced_cuts_split_equal_lengths_evenly_and_refuse_too_few_items():
    assert balanced_cuts([4] * 8, 2) == [0, 4, 8]
    assert balanced_cuts([1, 1, 1, 1, 1, 1], 3) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="cannot cut 1 texts into 2"):
        balanced_cuts([3], 2)


def test_balanced_cuts_cut_at_the_nearest_boundary_and_even_out_carried_loads():
    # the half (17) falls inside the third item: it goes to the part that leaves the two closer to
    # equal (12 and 22), not always to the first (24 and 10)
    assert balanced_cuts([6, 6, 12, 10], 2) == [0, 2, 4]
    assert balanced_cuts([10, 10, 10, 10], 2, carried=[15, 0]) == [0, 1, 4]  # stream 0 already holds 15
    assert balanced_cuts([10, 10, 10, 10], 2, carried=[0, 25]) == [0, 3, 4]
    assert balanced_cuts([1, 1], 2, carried=[100, 0]) == [0, 1, 2]  # yet every part keeps one item


def test_a_streams_parts_hold_about_equal_token_counts_over_all_groups(tiny_model_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, tmp_path, 2)
    short = [f"q {i}" for i in range(9)]
    long = [" ".join(["word"] * (5 + 7 * (i % 4))) + f" {i}" for i in range(9)]
    lengths = [[len(ids) for ids in trainer.encoder.token_ids(g)[0]] for g in (short, long)]
    parts = trainer._stream_parts([short, long])
    loads = [len(plan.input_ids) for plan, _ in parts]
    assert sum(loads) == sum(map(sum, lengths)) and [len(c) for _, c in parts] == [2, 2]
    assert [sum(c[g] for _, c in parts) for g in (0, 1)] == [9, 9]
    assert abs(loads[0] - loads[1]) <= max(lengths[0])  # the short texts even out the long ones' cut


def test_stream_count_runs_two_streams_only_where_they_can_run_and_repeat(tiny_encoder, monkeypatch):
    from contrastkit.fast_dropout import use_fast_dropout

    cpu, model = torch.device("cpu"), tiny_encoder.model
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    # the tiny BERT has torch's nn.Dropout (p = 0.1): its draws would interleave across the threads
    assert any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert stream_count(None, cpu, True, model) == 1
    use_fast_dropout(tiny_encoder)
    assert stream_count(None, cpu, True, model) == 2
    assert stream_count(1, cpu, True, model) == 1
    assert stream_count(4, cpu, True, model) == 2  # never more streams than threads
    assert stream_count(None, torch.device("cuda"), True, model) == 1
    assert stream_count(None, cpu, False, model) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert stream_count(None, cpu, True, model) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # unmeasured there: only when asked
    assert stream_count(None, cpu, True, model) == 1
    assert stream_count(4, cpu, True, model) == 4


def test_cpu_streams_below_one_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="cpu_streams must be at least 1"):
        TrainConfig(data="-", output_dir=str(tmp_path), cpu_streams=0).validate(check_files=False)


def test_the_trainer_streams_without_caching_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert trainer_for(tiny_model_dir, tmp_path).streams == 2
    assert trainer_for(tiny_model_dir, tmp_path, cpu_streams=1).streams == 1
    assert trainer_for(tiny_model_dir, tmp_path, mini_batch_size=4).streams == 1
    assert trainer_for(tiny_model_dir, tmp_path, fast_dropout=False).streams == 1


@pytest.mark.parametrize("bf16", [False, True])
def test_two_streams_give_the_gradients_of_one_pass(tmp_path, bf16):
    """Without dropout both ways compute the same function: the loss over the whole batch (every
    in-batch negative, across the streams) and every parameter's gradient."""
    model_dir = build_tiny_bert_folder(tmp_path / "bert", dropout=0.0, hidden_size=64)
    results = []
    for streams in (1, 2):
        trainer = trainer_for(model_dir, tmp_path / f"run{streams}", streams, cpu_streams=streams, bf16=bf16)
        loss = trainer.compute_gradients(trainer._batches(0)[0])
        results.append((float(loss), gradients(trainer), trainer))
    (loss1, grads1, _), (loss2, grads2, trainer2) = results
    assert trainer2._stream_pool is not None  # the streams did run
    # bf16: the dense layers' bias gradients are bf16 sums over the rows, which the streams group
    # otherwise (1.1-1.3 % apart in norm here); fp32 agrees to float rounding
    tol = 3e-2 if bf16 else 1e-5
    assert loss2 == pytest.approx(loss1, rel=1e-3 if bf16 else 1e-6)
    assert grads1.keys() == grads2.keys() and len(grads1) > 10
    for name in grads1:
        assert float((grads2[name] - grads1[name]).norm()) <= tol * float(grads1[name].norm()) + 1e-9, name


class _SerialPool:
    """StreamPool's interface, each item in turn on one extra thread: the order fixed (last first
    when `reverse`, as when the second stream runs ahead)."""

    streams = 2

    def __init__(self, reverse=False):
        self.reverse = reverse

    def map(self, fn, items):
        items = list(items)
        out = {}

        def run():
            torch.set_num_threads(1)
            for i in (reversed if self.reverse else iter)(range(len(items))):
                out[i] = fn(items[i])

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return [out[i] for i in range(len(items))]


def test_parallel_streams_repeat_the_serial_order_to_the_bit(tiny_model_dir, tmp_path):
    """With dropout on: each stream draws its own seeds, and two additions onto a gradient commute,
    so streams running at once, or one after the other in either order, give the same bits."""
    runs = []
    for pool in (_SerialPool(), _SerialPool(reverse=True), StreamPool(2), StreamPool(2)):
        trainer = trainer_for(tiny_model_dir, tmp_path / f"run{len(runs)}", 2)
        batch = trainer._batches(0)[0]
        groups = trainer._groups(batch)
        torch.manual_seed(11)
        loss = stream_backward(pool, trainer._stream_parts(groups), trainer._embed_parts, trainer._loss_on(groups))
        runs.append((float(loss.detach()), gradients(trainer)))
    (loss0, grads0), *others = runs
    for loss, grads in others:
        assert loss == loss0
        for name in grads0:
            assert torch.equal(grads[name], grads0[name]), name


def test_dropout_differs_between_streams_and_follows_the_seed(tiny_model_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, tmp_path, 2)
    texts = [p.anchor for p in pairs(8)]
    plan, counts = trainer._stream_parts([texts, texts])[0]  # stream 0's shares of both groups, one plan
    assert sum(counts) == len(plan.order) and len(counts) == 2

    def embed(seed):
        with seeds_from(seed):
            return trainer.encoder.embed_packed(plan).detach()

    assert torch.equal(embed(1), embed(1))
    assert not torch.allclose(embed(1), embed(2))


def test_seeds_from_gives_this_thread_its_own_generator_and_restores_the_shared_one():
    torch.manual_seed(0)
    shared = [draw_seed() for _ in range(3)]
    torch.manual_seed(0)
    with seeds_from(42):
        own = [draw_seed() for _ in range(3)]
        seen_elsewhere = []
        thread = threading.Thread(target=lambda: seen_elsewhere.append(draw_seed()))
        thread.start()
        thread.join()
    assert seen_elsewhere == shared[:1]  # another thread drew from the shared generator
    assert [draw_seed() for _ in range(2)] == shared[1:]  # and this one does again after the block
    with seeds_from(42):
        assert [draw_seed() for _ in range(3)] == own
    assert own != shared


def test_sparse_gradients_arrive_coalesced():
    weight = nn.Parameter(torch.randn(10, 4))
    weight.grad = torch.zeros_like(weight)
    ids = torch.tensor([3, 1, 3, 3, 7, 1])
    upstream = torch.randn(6, 4)
    handles = coalesce_sparse_gradients([weight])
    seen = []
    weight.register_hook(lambda g: seen.append(g))
    F.embedding(ids, weight, sparse=True).backward(upstream)
    assert seen[0].is_sparse and seen[0].is_coalesced() and seen[0]._nnz() == 3
    expected = torch.zeros(10, 4).index_add_(0, ids, upstream)
    torch.testing.assert_close(weight.grad, expected)
    for handle in handles:
        handle.remove()
    seen.clear()
    F.embedding(ids, weight, sparse=True).backward(upstream)
    assert not seen[0].is_coalesced()  # the hook was what coalesced it


def test_coalescing_hook_is_registered_once_per_parameter_and_again_after_removal():
    weight = nn.Parameter(torch.randn(10, 4))
    first = coalesce_sparse_gradients([weight])
    assert len(first) == 1 and coalesce_sparse_gradients([weight]) == []  # a second Trainer: no second hook
    assert len(weight._backward_hooks) == 1
    first[0].remove()
    assert len(weight._backward_hooks) == 0
    again = coalesce_sparse_gradients([weight])
    assert len(again) == 1 and len(weight._backward_hooks) == 1


def test_own_memory_copies_the_weights_the_values_unchanged(tiny_encoder):
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in tiny_encoder.model.named_parameters()}
    params = list(tiny_encoder.model.parameters())
    own_memory(tiny_encoder.model)
    assert list(tiny_encoder.model.parameters()) == params  # the same Parameter objects (the optimizer's)
    for name, p in tiny_encoder.model.named_parameters():
        assert p.data_ptr() != before[name][0] and torch.equal(p.detach(), before[name][1])


def test_a_run_with_streams_trains_and_closes_its_threads(tiny_model_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, tmp_path, 2)
    before = {n: p.detach().clone() for n, p in trainer.encoder.model.named_parameters()}
    trainer.train()
    assert json.loads((tmp_path / "environment.json").read_text())["cpu_streams"] == 2
    assert trainer._stream_pool is None
    assert not any(t.name.startswith("contrastkit-stream") for t in threading.enumerate())
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.encoder.model.named_parameters())


def test_lookahead_gives_back_what_was_submitted_for_a_key_once_at_the_lowest_priority():
    import os
    import sys

    ahead = Lookahead()
    try:
        def job(x):
            return x * 2, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), torch.get_num_threads()

        ahead.submit("step 3", job, 21)
        ahead.submit("step 4", job, 5)  # the trainer submits the next step before it takes this one
        assert ahead.take("step 2") is None
        value, nice, threads = ahead.take("step 3")
        assert value == 42 and threads == 1 and ahead.take("step 4")[0] == 10
        if sys.platform.startswith("linux"):
            assert nice == 19 and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19  # this thread not
        assert ahead.take("step 3") is None  # taken once
        for step in (5, 6, 7):
            ahead.submit(f"step {step}", job, step)
        assert ahead.take("step 5") is None and ahead.take("step 7")[0] == 14  # two kept: the oldest dropped
        ahead.submit("step 8", lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            ahead.take("step 8")
    finally:
        ahead.close()
    assert not any(t.name.startswith("contrastkit-lookahead") for t in threading.enumerate())


def test_steps_take_the_parts_tokenized_ahead_and_train_the_same_bits(tiny_model_dir, tmp_path, monkeypatch):
    import contrastkit.train.trainer as trainer_module

    runs = []
    for ahead in (True, False):
        trainer = trainer_for(tiny_model_dir, tmp_path / f"ahead{ahead}", 2, max_steps=4)
        calls = []
        real_parts = trainer._stream_parts
        monkeypatch.setattr(trainer, "_stream_parts", lambda groups, tokenizer=None, real=real_parts, calls=calls: (
            calls.append((threading.current_thread().name, tokenizer)) or real(groups, tokenizer)))
        if not ahead:
            monkeypatch.setattr(trainer, "_look_ahead", lambda step: None)
        trainer.train()
        if ahead:
            # step 1 on the main thread with the encoder's tokenizer, steps 2-4 ahead with a copy of it
            assert len(calls) == 4 and calls.count(("MainThread", None)) == 1
            assert all(name.startswith("contrastkit-lookahead") and tokenizer is not None
                       and tokenizer is not trainer.encoder.tokenizer for name, tokenizer in calls
                       if name != "MainThread")
            assert trainer._lookahead is None
            assert not any(t.name.startswith("contrastkit-lookahead") for t in threading.enumerate())
        else:
            assert [name for name, _ in calls] == ["MainThread"] * 4
        runs.append({n: p.detach().clone() for n, p in trainer.encoder.model.named_parameters()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert trainer_module.Lookahead is Lookahead


def test_a_crashed_streamed_run_resumes_to_the_weights_of_an_uninterrupted_one(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    settings = dict(max_steps=6, checkpoint_every=2)
    trainer_for(tiny_model_dir, tmp_path / "straight", 2, **settings).train()

    crashing = trainer_for(tiny_model_dir, tmp_path / "crashed", 2, **settings)
    real_step = Trainer._optimizer_step

    def crash_at_the_fourth_step(self, loss):
        if self.step == 3:
            raise RuntimeError("killed")
        return real_step(self, loss)

    monkeypatch.setattr(Trainer, "_optimizer_step", crash_at_the_fourth_step)
    with pytest.raises(RuntimeError, match="killed"):
        crashing.train()
    monkeypatch.setattr(Trainer, "_optimizer_step", real_step)
    trainer_for(tiny_model_dir, tmp_path / "crashed", 2, **settings).train(resume=True)

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert_resumed_from(tmp_path / "crashed" / "metrics.jsonl", 2, 6)  # from the checkpoint at step 2


def test_one_stream_leaving_autocast_does_not_change_the_others_gradients(tiny_model_dir, tmp_path, monkeypatch):
    """torch's autocast keeps one cache of weight casts for all threads and empties it when a thread
    leaves its autocast region: a stream still embedding would then cast its weights again and get
    their gradients in two parts, rounded otherwise. Here every stream packs its texts into several
    groups of slabs, each of which runs every layer, and stream 1 starts its second group only after
    stream 0 has left autocast; its gradients must be those of the streams run one after the other."""
    import functools

    import contrastkit.packing as packing_module
    import contrastkit.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "plan_packing",
                        functools.partial(packing_module.plan_packing, slab_tokens=24, dense_tokens=24))
    real_layer = packing_module._layer
    runs = []
    for interleave in (False, True):
        trainer = trainer_for(tiny_model_dir, tmp_path / f"run{interleave}", 2, bf16=True)
        groups = trainer._groups(trainer._batches(0)[0])
        parts = trainer._stream_parts(groups)
        assert all(len(plan.groups) >= 2 for plan, _ in parts)
        stream0_done, on_stream1 = threading.Event(), threading.local()
        real_embed_parts = trainer._embed_parts

        def layer(module, qkv_weights, h, group, parts=parts, done=stream0_done, here=on_stream1):
            if getattr(here, "active", False) and group is not parts[1][0].groups[0]:
                assert done.wait(timeout=60)  # stream 1's later groups wait for stream 0 to leave autocast
            return real_layer(module, qkv_weights, h, group)

        def embed_parts(part, real=real_embed_parts, parts=parts, done=stream0_done, here=on_stream1):
            here.active = part is parts[1]
            out = real(part)
            here.active = False
            if part is parts[0]:
                done.set()
            return out

        monkeypatch.setattr(packing_module, "_layer", layer)
        torch.manual_seed(11)
        pool = StreamPool(2) if interleave else _SerialPool()
        loss = stream_backward(pool, parts, embed_parts, trainer._loss_on(groups))
        runs.append((float(loss.detach()), gradients(trainer)))
    (loss0, grads0), (loss1, grads1) = runs
    assert loss1 == loss0
    for name in grads0:
        assert torch.equal(grads1[name], grads0[name]), name


def test_each_stream_draws_under_a_seed_of_its_own():
    first_draws = []

    def embed(part):
        first_draws.append(draw_seed())  # the first draw of this stream's own generator
        return [torch.ones(1, 2, requires_grad=True) * part]

    torch.manual_seed(3)
    stream_backward(_SerialPool(), [1.0, 2.0], embed, lambda embeddings: embeddings.sum())
    assert len(first_draws) == 2 and first_draws[0] != first_draws[1]
