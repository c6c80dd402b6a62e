"""Gradient caching must give the parameter gradients of the uncached step (float64, to 1e-8)."""

import numpy as np
import pytest
import torch

from contrastkit.encoder import Encoder
from contrastkit.fast_dropout import use_fast_dropout
from contrastkit.losses import info_nce
from contrastkit.train.grad_cache import (embed_in_chunks, forward_chunks, grad_cache_backward, length_sorted_chunks,
                                         texts_per_forward)

WORDS = "lift drag wing shock boundary layer flow heat transfer pressure nozzle jet flutter panel".split()


def make_texts(n, offset):
    return [" ".join(WORDS[(i * 7 + j + offset) % len(WORDS)] for j in range(1 + (i * 5 + offset) % 11))
            for i in range(n)]


@pytest.fixture(params=["torch dropout", "fast dropout"])
def encoder64(tiny_model_dir, request):
    enc = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    enc.model.double()
    if request.param == "fast dropout":  # the trainer's default on CPU: its masks must replay too
        assert use_fast_dropout(enc) > 0
    return enc


def param_grads(encoder):
    return {n: p.grad.detach().clone() for n, p in encoder.named_parameters() if p.grad is not None}


def batch_groups():
    anchors, positives = make_texts(32, 0), make_texts(32, 3)
    negatives = make_texts(32, 9)  # one hard negative per anchor, shared [M, D]
    return anchors, positives, negatives


def loss_fn(symmetric, with_negatives):
    def fn(a, p, n=None):
        return info_nce(a, p, n if with_negatives else None, temperature=0.05, symmetric=symmetric)
    return fn


def cached_grads(encoder, groups, loss, mini_batch, seed):
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    chunks = [length_sorted_chunks(encoder.token_lengths(g), mini_batch) for g in groups]
    grad_cache_backward(encoder.embed, groups, chunks, loss)
    return param_grads(encoder)


def uncached_grads(encoder, groups, loss, chunk_size, seed):
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    chunks = [length_sorted_chunks(encoder.token_lengths(g), chunk_size) for g in groups]
    loss(*[embed_in_chunks(encoder.embed, g, c) for g, c in zip(groups, chunks)]).backward()
    return param_grads(encoder)


def assert_same(a, b, atol=1e-8):
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("symmetric, with_negatives", [(False, True), (True, False)])
def test_dropout_on_grad_cache_equals_full_batch_step(encoder64, symmetric, with_negatives):
    """Dropout on: the second pass must replay the first pass's dropout masks exactly."""
    encoder64.train()
    groups = batch_groups() if with_negatives else batch_groups()[:2]
    loss = loss_fn(symmetric, with_negatives)
    cached = cached_grads(encoder64, groups, loss, mini_batch=4, seed=123)
    full = uncached_grads(encoder64, groups, loss, chunk_size=4, seed=123)
    assert_same(cached, full)


@pytest.mark.parametrize("symmetric, with_negatives", [(False, True), (True, False)])
def test_dropout_off_grad_cache_equals_one_padded_batch(encoder64, symmetric, with_negatives):
    """Without dropout, mini-batches of 4 equal one padded forward of all 32 (padding is masked)."""
    encoder64.eval()
    groups = batch_groups() if with_negatives else batch_groups()[:2]
    loss = loss_fn(symmetric, with_negatives)
    cached = cached_grads(encoder64, groups, loss, mini_batch=4, seed=0)
    encoder64.zero_grad(set_to_none=True)
    loss(*[encoder64.embed(list(g)) for g in groups]).backward()
    assert_same(cached, param_grads(encoder64))


def test_without_replayed_rng_the_gradients_differ(encoder64, monkeypatch):
    """The test above can fail: if the RNG were not restored, dropout masks differ and so do gradients."""
    from contrastkit.train import grad_cache

    monkeypatch.setattr(grad_cache.RandState, "restore", lambda self: None)
    encoder64.train()
    groups = batch_groups()[:2]
    loss = loss_fn(False, False)
    cached = cached_grads(encoder64, groups, loss, mini_batch=4, seed=123)
    full = uncached_grads(encoder64, groups, loss, chunk_size=4, seed=123)
    diffs = [float((cached[n] - full[n]).abs().max()) for n in cached]
    assert max(diffs) > 1e-6


@pytest.mark.parametrize("groups_used", [2, 3])  # 3: the negatives' group gets no gradient and is not replayed
def test_rng_after_step_matches_the_uncached_step(encoder64, groups_used):
    encoder64.train()
    groups = batch_groups()[:groups_used]
    loss = loss_fn(False, False)
    cached_grads(encoder64, groups, loss, mini_batch=4, seed=7)
    after_cached = torch.get_rng_state()
    uncached_grads(encoder64, groups, loss, chunk_size=4, seed=7)
    assert torch.equal(after_cached, torch.get_rng_state())


def test_embed_in_chunks_restores_order(encoder64):
    encoder64.eval()
    texts = make_texts(10, 1)
    chunks = length_sorted_chunks(encoder64.token_lengths(texts), 3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    lengths = encoder64.token_lengths(texts)
    assert [lengths[i] for c in chunks for i in c] == sorted(lengths, reverse=True)
    with torch.no_grad():
        torch.testing.assert_close(embed_in_chunks(encoder64.embed, texts, chunks), encoder64.embed(texts))


def test_texts_per_forward_chunks_only_a_padded_forward_on_the_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU
    assert texts_per_forward(32, 16, packs=True, device=cpu) == 32       # caching: the mini-batch, always
    assert texts_per_forward(32, 16, packs=False, device=gpu) == 32
    assert texts_per_forward(None, 16, packs=False, device=cpu) == 16    # padded on the CPU: chunks
    assert texts_per_forward(None, None, packs=False, device=cpu) is None
    assert texts_per_forward(None, 16, packs=True, device=cpu) is None   # packed: the encoder's own slabs
    assert texts_per_forward(None, 16, packs=False, device=gpu) is None  # a GPU: one call per group


def test_forward_chunks_tokenizes_only_when_it_cuts_chunks():
    """One call for the whole group: in order, and no tokenizer pass for lengths (a GPU step is host-bound)."""
    asked = []

    def lengths():
        asked.append(True)
        return [3, 9, 5, 9, 1]

    for per_forward in (None, 5, 8):
        chunks = forward_chunks(5, per_forward, lengths)
        assert len(chunks) == 1 and chunks[0].tolist() == [0, 1, 2, 3, 4]
    assert not asked
    assert [c.tolist() for c in forward_chunks(5, 2, lengths)] == [[1, 3], [2, 0], [4]]  # longest first, stable
    assert len(asked) == 1
    # an empty group is one empty chunk: the embed function gives the [0, D] embeddings of nothing
    assert [c.tolist() for c in forward_chunks(0, None, lengths)] == [[]]
    assert [c.tolist() for c in forward_chunks(0, 2, lambda: [])] == [[]]


def test_embed_in_chunks_in_order_is_one_plain_call():
    calls = []

    def embed(items):
        calls.append(list(items))
        return torch.tensor([[float(x)] for x in items])

    items = [4, 7, 1]
    out = embed_in_chunks(embed, items, forward_chunks(3, None, lambda: [1, 1, 1]))
    assert calls == [[4, 7, 1]] and out.flatten().tolist() == [4.0, 7.0, 1.0]
    calls.clear()
    out = embed_in_chunks(embed, items, [np.array([2, 0]), np.array([1])])  # chunks put back in place
    assert calls == [[1, 4], [7]] and out.flatten().tolist() == [4.0, 7.0, 1.0]


@pytest.mark.parametrize("chunks_per_group", [2, 16])
def test_the_heap_is_trimmed_between_phases_of_big_steps_never_per_mini_batch(monkeypatch, chunks_per_group):
    """Free heap pages go back to the system after the first pass and between the groups of the
    second (contrastkit/heap.py; bench/memory_vs_batch.py measures what it saves) once a step has
    HEAP_TRIM_MIN_CHUNKS chunks, never per mini-batch (27 % slower at batch 4,096), and not in small
    steps, where faulting the pages in again costs more than the holes."""
    import contrastkit.train.grad_cache as grad_cache

    events = []
    monkeypatch.setattr(grad_cache, "release_free_memory", lambda: events.append("trim"))
    monkeypatch.setattr(grad_cache, "HEAP_TRIM_MIN_CHUNKS", 32)
    weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def embed(items):
        events.append("embed" if torch.is_grad_enabled() else "no-grad")
        return torch.stack([torch.full((4,), float(len(i)), dtype=torch.float64) for i in items]) @ weight

    def loss(a, p):
        events.append("loss")
        return (a * p).sum()

    n = chunks_per_group
    groups = [[c * (i + 1) for i in range(2 * n)] for c in "ab"]
    chunks = [[np.array([2 * k, 2 * k + 1]) for k in range(n)]] * 2
    grad_cache_backward(embed, groups, chunks, loss)
    trim = ["trim"] if 2 * n >= 32 else []
    assert events == ["no-grad"] * 2 * n + trim + ["loss"] + ["embed"] * n + trim + ["embed"] * n
