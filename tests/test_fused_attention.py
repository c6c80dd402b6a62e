"""The fused attention kernel, bf16 and fp32 (contrastkit/fused_attention.py), against float64 attention with the
same mask."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from _support import build_tiny_bert_folder, graph_nodes, run_in_forked_child

from contrastkit import fused_attention
from contrastkit.devices import cpu_flags
from contrastkit.fast_dropout import FastDropout, draw_seed, drop_threshold, keep_mask, use_fast_dropout
from contrastkit.packing import (_HeadsToPacked, _PackedToHeads, packed_hidden_states, plan_packing,
                                 written_out_attention)

needs_kernel = pytest.mark.skipif(fused_attention.library() is None,
                                  reason="the kernel needs AVX-512 and a C++ compiler")
needs_bf16_kernel = pytest.mark.skipif(not fused_attention.computes_in(torch.bfloat16),
                                       reason="the bf16 kernel needs AVX-512 BF16 and a C++ compiler")
# each dtype the kernel computes in, skipped where this CPU cannot run it
DTYPES = [pytest.param(torch.bfloat16, marks=needs_bf16_kernel, id="bf16"),
          pytest.param(torch.float32, marks=needs_kernel, id="fp32")]
# the kernel's distance from float64 (relative): bf16's 8-bit mantissa against fp32's 24
TOLERANCE = {torch.bfloat16: (0.01, 0.02), torch.float32: (1e-6, 2e-6)}

# width 37: rows of the mask's padded block start at offsets that are not whole 64-bit words; lengths
# 1, odd, even, multiples of 16 and not
LENGTHS = [37, 30, 17, 16, 5, 1]


def slab_inputs(lengths: list[int], heads: int, head_size: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    plan = plan_packing([[1] * n for n in lengths], slab_tokens=100_000)
    assert len(plan.slabs) == 1
    slab = plan.slabs[0]
    generator = torch.Generator().manual_seed(seed)
    qkv = (2 * torch.randn(slab.last, 3 * heads * head_size, generator=generator)).to(dtype)
    grad = torch.randn(slab.last, heads * head_size, generator=generator).to(dtype)
    return slab, qkv, grad


def fused(qkv: torch.Tensor, grad: torch.Tensor, slab, heads: int, p: float, seed: int):
    """(context, gradient of qkv) from the kernel, its dropout drawn from `seed`."""
    x = qkv.clone().requires_grad_()
    torch.manual_seed(seed)
    out = fused_attention.packed_attention(x, [(slab.starts, slab.lengths, slab.width)], heads,
                                           (qkv.shape[1] // (3 * heads)) ** -0.5, FastDropout(p).train())
    out.backward(grad)
    return out.detach(), x.grad


def written_out(qkv: torch.Tensor, grad: torch.Tensor, slab, heads: int, p: float, seed: int):
    """The same through the packed forward's written-out attention (layout copies, bmm, softmax, dropout)."""
    x = qkv.clone().requires_grad_()
    head_size = qkv.shape[1] // (3 * heads)
    torch.manual_seed(seed)
    q, k, v = _PackedToHeads.apply(x, slab, 3, heads, head_size)
    out = _HeadsToPacked.apply(written_out_attention(q, k, v, slab.lengths, FastDropout(p).train(),
                                                     head_size ** -0.5), slab)
    out.backward(grad)
    return out.detach(), x.grad


def exact(qkv: torch.Tensor, grad: torch.Tensor, slab, heads: int, p: float, seed: int):
    """float64 attention of each text over its own tokens, with FastDropout's mask for the slab's padded
    [b, heads, W, W] block (what `softmax_dropout` draws for that block and seed)."""
    x = qkv.double().requires_grad_()
    D = qkv.shape[1] // 3
    d, width = D // heads, slab.width
    torch.manual_seed(seed)
    mask_seed = draw_seed() if p > 0 else 0  # the draw both paths make first
    keep = (keep_mask((len(slab.sizes), heads, width, width), p, mask_seed).double() / drop_threshold(p)[1]
            if p > 0 else torch.ones(len(slab.sizes), heads, width, width, dtype=torch.float64))
    outs = []
    for t, (start, n) in enumerate(zip(slab.starts.tolist(), slab.sizes)):
        rows = x[start:start + n]
        q, k, v = (rows[:, i * D:(i + 1) * D].view(n, heads, d).transpose(0, 1) for i in range(3))
        probs = torch.softmax(d ** -0.5 * q @ k.transpose(1, 2), -1)
        outs.append(((probs * keep[t, :, :n, :n]) @ v).transpose(0, 1).reshape(n, D))
    out = torch.cat(outs)
    out.backward(grad.double())
    return out.detach(), x.grad


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_size", [32, 64])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_forward_and_backward_are_float64_attention_with_fast_dropouts_mask(dtype, head_size, p):
    """Within the dtype's rounding of the exact result, and about as close to it as the written-out path
    in the same dtype."""
    heads = 3
    slab, qkv, grad = slab_inputs(LENGTHS, heads, head_size, dtype=dtype)
    out, grad_qkv = fused(qkv, grad, slab, heads, p, seed=5)
    assert out.dtype == grad_qkv.dtype == dtype
    reference, reference_grad = exact(qkv, grad, slab, heads, p, seed=5)
    baseline, baseline_grad = written_out(qkv, grad, slab, heads, p, seed=5)
    D = heads * head_size
    output_tolerance, gradient_tolerance = TOLERANCE[dtype]
    assert relative_error(out, reference) < output_tolerance
    assert relative_error(out, reference) <= 1.5 * relative_error(baseline, reference) + output_tolerance / 10
    for part in range(3):  # q, k, v each against the exact gradient
        columns = slice(part * D, (part + 1) * D)
        ours_error = relative_error(grad_qkv[:, columns], reference_grad[:, columns])
        assert ours_error < gradient_tolerance, (part, ours_error)
        # fp32: the kernel sums dq and dk in another order than torch's products, up to twice their error
        limit = 1.5 if dtype == torch.bfloat16 else 2.0
        assert ours_error <= limit * relative_error(baseline_grad[:, columns], reference_grad[:, columns]) + \
            output_tolerance / 10


@needs_kernel
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_the_fp32_kernel_adds_the_projections_bias_and_sums_its_gradient(p):
    """qkv without its bias + bias in the kernel = qkv with the bias added first, over two slabs of one
    call; the bias's gradient is the column sums of qkv's."""
    heads, head_size = 2, 32
    plan = plan_packing([[1] * n for n in (37, 30, 17, 16, 5, 1)], slab_tokens=64, dense_tokens=10_000)
    (group,) = plan.groups
    assert len(group.slabs) > 1
    generator = torch.Generator().manual_seed(4)
    product = torch.randn(group.last, 3 * heads * head_size, generator=generator)
    bias = torch.randn(3 * heads * head_size, generator=generator)
    grad = torch.randn(group.last, heads * head_size, generator=generator)
    dropout = FastDropout(p).train()

    def run(with_bias_in_kernel: bool):
        x, b = product.clone().requires_grad_(), bias.clone().requires_grad_()
        torch.manual_seed(8)
        if with_bias_in_kernel:
            out = fused_attention.packed_attention(x, group.spans, heads, head_size ** -0.5, dropout, bias=b)
        else:
            out = fused_attention.packed_attention(x + b, group.spans, heads, head_size ** -0.5, dropout)
        out.backward(grad)
        return out.detach(), x.grad, b.grad

    for ours, theirs in zip(run(True), run(False)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    out, _, grad_bias = run(True)
    torch.manual_seed(8)
    without = fused_attention.packed_attention(product, group.spans, heads, head_size ** -0.5, dropout)
    assert grad_bias.abs().sum() > 0 and (out - without).abs().max() > 0.1  # the bias mattered
    with pytest.raises(ValueError, match="bias must be fp32"):
        fused_attention.packed_attention(product, group.spans, heads, 0.2, dropout, bias=bias[:-1])
    with pytest.raises(ValueError, match="bias must be fp32"):
        fused_attention.packed_attention(product, group.spans, heads, 0.2, dropout, bias=bias.double())


@needs_kernel
def test_the_kernels_mask_is_fast_dropouts():
    for shape, p, seed in (((2, 3, 37, 37), 0.1, 7), ((1, 12, 5, 5), 0.5, -3), ((3, 2, 16, 16), 0.3, 2**62)):
        assert torch.equal(fused_attention.keep_mask(shape, p, seed), keep_mask(shape, p, seed))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_follows_the_seed_and_p_zero_drops_nothing(dtype):
    slab, qkv, grad = slab_inputs(LENGTHS, 2, 32, dtype=dtype)
    first, second, other = (fused(qkv, grad, slab, 2, 0.1, seed)[0] for seed in (1, 1, 2))
    assert torch.equal(first, second) and not torch.equal(first, other)
    no_dropout = fused(qkv, grad, slab, 2, 0.0, 1)[0]
    assert relative_error(no_dropout, exact(qkv, grad, slab, 2, 0.0, 1)[0]) < TOLERANCE[dtype][0]
    assert relative_error(first, no_dropout.double()) > 0.05  # the mask changed the output


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_result_does_not_depend_on_the_thread_count(dtype):
    slab, qkv, grad = slab_inputs(LENGTHS * 3, 4, 32, dtype=dtype)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(fused(qkv, grad, slab, 4, 0.1, seed=3))
    finally:
        torch.set_num_threads(threads)
    for out, grad_qkv in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad_qkv, results[0][1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_forked_child_runs_the_tasks_in_one_thread(tmp_path, dtype):
    """GNU OpenMP's pool does not survive fork(): a child runs the kernel without OpenMP, same results."""
    slab, qkv, grad = slab_inputs(LENGTHS, 2, 32, dtype=dtype)
    parent = fused(qkv, grad, slab, 2, 0.1, seed=4)  # the parent's OpenMP pool is up
    run_in_forked_child(lambda: fused(qkv, grad, slab, 2, 0.1, seed=4), tmp_path / "child.pt")
    child = torch.load(tmp_path / "child.pt", weights_only=True)
    assert torch.equal(child[0], parent[0]) and torch.equal(child[1], parent[1])


def tiny_bert(head_size: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=2 * head_size, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).train()
    use_fast_dropout(model)
    return model


def packed_step(model, plan, seed: int, dtype: torch.dtype):
    """The packed forward in `dtype` (bf16: under autocast) and a backward: (hidden, gradients, grad_fn)."""
    model.zero_grad()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        hidden = packed_hidden_states(model, plan)
    # a fixed random direction (a layer-normed output's squares would sum to a constant: no gradient)
    direction = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
    (hidden.float() * direction).sum().backward()
    return hidden.detach().float(), {name: p.grad.clone() for name, p in model.named_parameters()}, hidden.grad_fn


@pytest.mark.parametrize("dtype, head_size", [pytest.param(torch.bfloat16, 32, marks=needs_bf16_kernel, id="bf16"),
                                              pytest.param(torch.float32, 16, marks=needs_kernel, id="fp32-16"),
                                              pytest.param(torch.float32, 32, marks=needs_kernel, id="fp32-32")])
def test_the_packed_forward_takes_the_kernel_with_the_written_out_attentions_masks(monkeypatch, dtype, head_size):
    """Training with FastDropout, under bf16 autocast or in fp32: the kernel stands in for layout copies + the
    attention's products, softmax and dropout, with the same masks, so the same outputs and gradients to the
    dtype's rounding."""
    # outputs, gradients; a key bias's gradient (0 but for rounding: softmax ignores a shift shared by every
    # key of a row) against the query bias's
    hidden_tolerance, gradient_tolerance, key_bias = {torch.bfloat16: (0.02, 0.02, 0.01),
                                                      torch.float32: (1e-5, 1e-4, 1e-4)}[dtype]
    model = tiny_bert(head_size)
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(1, 100, (n,), generator=generator).tolist() for n in (40, 33, 21, 9, 2)]
    plan = plan_packing(ids, slab_tokens=64)
    assert len(plan.slabs) > 1
    hidden, grads, node = packed_step(model, plan, 8, dtype)
    assert "_PackedAttentionBackward" in graph_nodes(node)
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", "0")
    other_hidden, other_grads, other_node = packed_step(model, plan, 8, dtype)
    assert "_PackedAttentionBackward" not in graph_nodes(other_node)
    if dtype == torch.bfloat16:
        assert "_SoftmaxDropoutBackward" in graph_nodes(other_node)
    assert relative_error(hidden, other_hidden.double()) < hidden_tolerance
    for name, grad in grads.items():
        if name.endswith("key.bias"):
            query_bias = grads[name.replace("key", "query")].norm()
            assert grad.norm() < key_bias * query_bias and other_grads[name].norm() < key_bias * query_bias
        else:
            assert relative_error(grad, other_grads[name].double()) < gradient_tolerance, name
    # another seed draws other masks: the agreement above is the masks', not dropout's absence
    assert relative_error(packed_step(model, plan, 9, dtype)[0], other_hidden.double()) > 0.05


def test_the_trainer_says_when_its_steps_take_the_kernel(monkeypatch):
    from types import SimpleNamespace

    from contrastkit.train.trainer import Trainer

    def precision(model, bf16=True):
        trainer = SimpleNamespace(bf16=bf16, device=torch.device("cpu"), config=SimpleNamespace(dtype="float32"),
                                  encoder=SimpleNamespace(packs=True, model=model))
        return Trainer.precision.fget(trainer)

    monkeypatch.setenv("CONTRASTKIT_ONEDNN_LINEAR", "0")
    model = tiny_bert(32)
    bf16 = fused_attention.computes_in(torch.bfloat16)
    fp32 = fused_attention.library() is not None
    assert fused_attention.runs_in(model) is bf16 and fused_attention.runs_in(model, torch.float32) is fp32
    assert precision(model) == ("bf16 autocast, attention by the fused CPU kernel" if bf16 else "bf16 autocast")
    assert precision(model, bf16=False) == ("fp32, attention by the fused CPU kernel" if fp32 else "fp32")
    # heads of 16: the written-out attention in bf16, the kernel in fp32
    assert not fused_attention.runs_in(tiny_bert(16)) and fused_attention.runs_in(tiny_bert(16), torch.float32) is fp32
    assert not fused_attention.runs_in(model, torch.float64)
    model.encoder.layer[1].attention.self.dropout = torch.nn.Dropout(0.1)  # torch's mask: not the kernel's
    assert not fused_attention.runs_in(model) and precision(model) == "bf16 autocast"
    assert not fused_attention.runs_in(model, torch.float32) and precision(model, bf16=False) == "fp32"
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", "0")
    assert not fused_attention.runs_in(tiny_bert(32)) and not fused_attention.runs_in(tiny_bert(32), torch.float32)


@needs_bf16_kernel
def test_the_gradient_cache_replays_the_kernels_masks(tmp_path):
    """bf16 training with the kernel (heads of 32): the cached step's no-graph pass draws the same seeds as
    its replay, so its gradients are the uncached step's up to bf16 rounding (autocast's weight copies
    sum the chunks' gradients in bf16 in one backward, in fp32 across the replays' backwards)."""
    from contrastkit.encoder import Encoder
    from contrastkit.train.grad_cache import embed_in_chunks, grad_cache_backward, length_sorted_chunks

    encoder = Encoder.from_pretrained(build_tiny_bert_folder(tmp_path / "bert", hidden_size=64), max_seq_length=64)
    use_fast_dropout(encoder)
    encoder.train()
    assert fused_attention.runs_in(encoder.model)
    texts = ["shock waves in a supersonic nozzle", "boundary layer", "heat transfer at hypersonic speeds", "lift",
             "panel flutter of thin plates in supersonic flow", "x y", "vortex sheet roll up", "a"]
    groups = [texts[:4], texts[4:]]
    chunks = [length_sorted_chunks(encoder.token_lengths(g), 2) for g in groups]

    def loss(anchors, positives):
        return torch.nn.functional.cross_entropy(anchors.float() @ positives.float().T * 20, torch.arange(4))

    def grads(cached: bool, seed: int = 3) -> dict[str, torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if cached:
                grad_cache_backward(encoder.embed, groups, chunks, loss)
            else:
                loss(*(embed_in_chunks(encoder.embed, g, c) for g, c in zip(groups, chunks))).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain, cached, other_masks = grads(False), grads(True), grads(True, seed=4)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        if not name.endswith("key.bias"):  # exactly 0 (softmax ignores a shift shared by a row's keys)
            assert relative_error(cached[name], plain[name].double()) < 0.01, name
    other = [relative_error(other_masks[n], plain[n].double()) for n in plain if not n.endswith("key.bias")]
    assert min(other) > 0.02, min(other)  # other masks move every gradient by far more


def test_where_the_kernel_applies(monkeypatch):
    qkv = torch.zeros(10, 3 * 2 * 32, dtype=torch.bfloat16)
    kept = FastDropout(0.1).train()
    bf16 = fused_attention.computes_in(torch.bfloat16)
    fp32 = fused_attention.library() is not None
    assert bf16 <= fp32  # the bf16 kernel needs all that the fp32 one needs
    assert fused_attention.applies(qkv, 2, 10, kept) is bf16
    assert fused_attention.applies(qkv, 2, 10, torch.nn.Dropout(0.1).eval()) is bf16  # drops nothing
    assert fused_attention.applies(qkv.float(), 2, 10, kept) is fp32
    assert not fused_attention.applies(qkv.double(), 2, 10, kept)  # float64: the written-out attention
    assert not fused_attention.applies(qkv, 2, 10, torch.nn.Dropout(0.1).train())  # torch's own mask
    assert not fused_attention.applies(qkv.float(), 2, 10, torch.nn.Dropout(0.1).train())
    heads_of_16 = torch.zeros(10, 3 * 4 * 16)
    assert not fused_attention.applies(heads_of_16.bfloat16(), 4, 10, kept)  # bf16 takes heads of 32, 64, ...
    assert fused_attention.applies(heads_of_16, 4, 10, kept) is fp32
    assert not fused_attention.applies(torch.zeros(10, 3 * 4 * 8), 4, 10, kept)  # fp32 takes 16, 32, ...
    assert not fused_attention.applies(qkv, 2, fused_attention.MAX_WIDTH + 1, kept)
    assert not fused_attention.applies(qkv.float(), 2, fused_attention.MAX_WIDTH + 1, kept)
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", "0")
    assert not fused_attention.applies(qkv, 2, 10, kept) and not fused_attention.applies(qkv.float(), 2, 10, kept)


@pytest.mark.parametrize("dtype", DTYPES)
def test_texts_outside_the_rows_or_the_width_are_refused_before_the_kernel_runs(dtype):
    slab, qkv, _ = slab_inputs([5, 3], 2, 32, dtype=dtype)
    kept = FastDropout(0.1).train()

    def run(starts, lengths, width, heads=2, more=()):
        return fused_attention.packed_attention(qkv, [(starts, lengths, width), *more], heads=heads, scale=0.2,
                                                dropout=kept)

    assert run(slab.starts, slab.lengths, width=5).shape == (8, 64)
    with pytest.raises(ValueError, match="1 to width = 4"):
        run(slab.starts, slab.lengths, width=4)  # a text longer than the width
    with pytest.raises(ValueError, match="inside the 8 rows"):
        run(torch.tensor([0, 6]), slab.lengths, width=5)  # past the last row
    with pytest.raises(ValueError, match="1 to width"):
        run(slab.starts, torch.tensor([5, 0]), width=5)
    with pytest.raises(ValueError, match="one entry per text"):
        run(slab.starts[:1], slab.lengths, width=5)
    with pytest.raises(ValueError, match="does not apply"):
        run(slab.starts, slab.lengths, width=5, heads=8)  # heads of 8
    with pytest.raises(ValueError, match="inside the 8 rows"):  # a later slab is checked as well
        run(slab.starts[:1], slab.lengths[:1], width=5, more=[(torch.tensor([7]), torch.tensor([3]), 3)])
    with pytest.raises(ValueError, match="does not apply"):
        fused_attention.packed_attention(qkv, [], heads=2, scale=0.2, dropout=kept)


@pytest.mark.skipif(fused_attention.library() is None, reason="needs a C++ compiler")
def test_a_build_is_kept_and_reused_by_the_hash_of_its_source_and_headers(tmp_path, monkeypatch):
    target = fused_attention.build(folder=tmp_path)
    assert target.parent == tmp_path and target.stat().st_size > 0
    stamp = target.stat().st_mtime_ns
    assert fused_attention.build(folder=tmp_path) == target and target.stat().st_mtime_ns == stamp
    changed = tmp_path / "attention_kernel.cpp"
    changed.write_text(fused_attention.SOURCE.read_text() + "\n// changed\n")
    rebuilt = fused_attention.build(changed, folder=tmp_path)
    assert rebuilt != target and rebuilt.exists()
    assert not target.exists()  # the build of the earlier version is removed
    assert not list(tmp_path.glob("*.partial"))  # written under a temporary name, renamed into place
    header = tmp_path / "headers" / "kernel_common.h"  # an included header changed: built again, with it
    header.parent.mkdir()
    header.write_text(fused_attention.HEADERS[0].read_text() + "\n// changed\n")
    monkeypatch.setattr(fused_attention, "HEADERS", (header,))
    again = fused_attention.build(changed, folder=tmp_path)
    assert again != rebuilt and again.exists() and not rebuilt.exists()


@pytest.mark.skipif(not fused_attention.CPU_FLAGS <= cpu_flags(), reason="the kernel needs AVX-512")
def test_a_damaged_cached_build_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path))
    target = fused_attention.build()
    target.write_bytes(b"not a shared library")  # damaged on disk
    library = fused_attention.load(fused_attention.SOURCE, fused_attention._declare, "the written-out attention")
    assert library is not None and target.stat().st_size > 1000


def test_a_failing_compiler_is_an_error_that_names_it_and_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(RuntimeError, match="/bin/false failed on broken.cpp"):
        fused_attention.build(source, folder=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


@pytest.mark.skipif(fused_attention.library() is None, reason="needs a C++ compiler")
def test_a_library_anyone_else_could_have_written_is_never_loaded(tmp_path, monkeypatch):
    """Without a home folder the cache is /tmp/contrastkit-cache-<uid>, a name anyone can make first,
    and the library's name is a hash anyone can compute: a planted one ran in this process."""
    import warnings

    from contrastkit import cache

    fresh = tmp_path / "new" / "kernels"
    assert fused_attention.build(folder=fresh).parent == fresh and (fresh.stat().st_mode & 0o777) == 0o700
    target = fused_attention.build(folder=fresh)
    target.chmod(0o666)  # a library others may write: built again, not loaded
    stamp = target.stat().st_mtime_ns
    rebuilt = fused_attention.build(folder=fresh)
    assert rebuilt == target and rebuilt.stat().st_mtime_ns != stamp and not rebuilt.stat().st_mode & 0o022
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o775)  # this user's, made under umask 002 by an earlier version: made private, kept
    assert fused_attention.build(folder=loose).parent == loose and (loose.stat().st_mode & 0o777) == 0o700
    if os.getuid() != 0:
        return  # handing a folder to another user needs root
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)  # another user made it first (a guessable /tmp name)
    inside = theirs / "kernels"
    inside.mkdir()  # even a folder of ours inside theirs: they could swap it
    monkeypatch.setattr(cache, "_private_fallback", None)
    with pytest.warns(UserWarning, match="is not this user's alone"):
        elsewhere = fused_attention.build(folder=theirs)
    assert elsewhere.parent != theirs and not list(theirs.glob("*.so"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one private folder a process, said once
        assert cache.private_folder(inside) == elsewhere.parent


def test_without_a_home_numba_caches_in_a_private_folder_not_a_literal_tilde(tmp_path):
    code = ("import pathlib\n"
            "def no_home(): raise RuntimeError('no home')\n"
            "pathlib.Path.home = staticmethod(no_home)\n"
            "import numba, contrastkit.dropout_kernels\n"
            "print(numba.config.CACHE_DIR)")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "NUMBA_CACHE_DIR")}
    env["CONTRASTKIT_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path / "cache" / "numba")
    assert ((tmp_path / "cache" / "numba").stat().st_mode & 0o777) == 0o700
