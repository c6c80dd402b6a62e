"""The packed (unpadded) BERT forward against the model's own padded forward."""

from __future__ import annotations

import functools

import pytest
import torch
from _support import graph_nodes

import contrastkit.packing as packing_module
from contrastkit import fused_attention
from contrastkit.encoder import Encoder
from contrastkit.fast_dropout import FastDropout, drop_threshold, keep_mask, use_fast_dropout
from contrastkit.fast_linear import dense
from contrastkit.packing import (_HeadsToPacked, _PackedToHeads, _padded_block, can_pack, packed_hidden_states,
                                 plan_packing, written_out_attention)
from contrastkit.train.grad_cache import embed_in_chunks, grad_cache_backward, length_sorted_chunks

TEXTS = ["a", "shock waves in a supersonic nozzle with a long and winding description of the flow",
         "boundary layer", "heat transfer at hypersonic speeds over a blunt body", "x y", "lift",
         "panel flutter of thin plates in supersonic flow", "vortex sheet roll up"]


def both_paths(encoder: Encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed embeddings, padded embeddings) of the same texts with the same weights."""
    assert encoder.packs
    packed = encoder.embed(texts)
    encoder.packing = False
    try:
        padded = encoder.embed(texts)
    finally:
        encoder.packing = True
    return packed, padded


def test_the_tiny_bert_and_the_default_model_pack(tiny_encoder, default_encoder):
    assert can_pack(tiny_encoder.model) and tiny_encoder.packs
    assert can_pack(default_encoder.model) and default_encoder.packs
    tiny_encoder.packing = False
    assert not tiny_encoder.packs


def test_only_the_cpu_packs(tiny_encoder):
    """Off the CPU (a GPU, here the meta device that CI has) the padded forward runs: faster on a GPU."""
    assert tiny_encoder.packs
    tiny_encoder.to("meta")
    assert can_pack(tiny_encoder.model) and not tiny_encoder.packs


def test_other_models_keep_their_padded_forward():
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    assert not can_pack(DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                          hidden_dim=20)))
    tiny = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)
    assert not can_pack(BertModel(BertConfig(**tiny, is_decoder=True)))
    assert not can_pack(BertModel(BertConfig(**tiny, chunk_size_feed_forward=4)))
    model = BertModel(BertConfig(**tiny))
    assert can_pack(model)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert not can_pack(model)


@pytest.mark.parametrize("slab_tokens", [1, 16, 40, 10_000])
def test_plan_lays_every_token_once_longest_first(slab_tokens):
    ids = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    plan = plan_packing(ids, [[0] * len(x) for x in ids], slab_tokens=slab_tokens)
    assert plan.order.tolist() == [2, 0, 4, 3, 1]
    assert plan.input_ids.tolist() == [5, 6, 7, 8, 9, 1, 2, 3, 12, 13, 14, 10, 11, 4]
    assert plan.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 0, 1, 0]
    covered = []
    for slab in plan.slabs:
        b, width = len(slab.lengths), slab.width
        assert width == int(slab.lengths.max()) == int(slab.lengths[0])
        assert b * width <= slab_tokens or b == 1
        assert slab.last - slab.first == int(slab.lengths.sum()) == len(slab.slots)
        assert slab.key_mask.shape == (b, 1, 1, width) and int(slab.key_mask.sum()) == len(slab.slots)
        # slot of the j-th token of the i-th text is i * width + j
        expected = [i * width + j for i, n in enumerate(slab.lengths.tolist()) for j in range(n)]
        assert slab.slots.tolist() == expected
        covered.extend(range(slab.first, slab.last))
    assert covered == list(range(14))
    if slab_tokens == 10_000:
        assert len(plan.slabs) == 1
    if slab_tokens == 1:
        assert len(plan.slabs) == 5


def test_the_module_settings_take_effect_when_set_after_import(monkeypatch):
    """docs/training.md: `packing.DENSE_TOKENS = 1` restores the slab-by-slab order (and SLAB_TOKENS cuts)."""
    import contrastkit.packing as packing

    ids = [[1] * n for n in (5, 3, 3, 2, 1)]
    assert len(plan_packing(ids).groups) == 1 and len(plan_packing(ids).slabs) == 1
    monkeypatch.setattr(packing, "SLAB_TOKENS", 5)
    assert [len(slab.sizes) for slab in plan_packing(ids).slabs] == [1, 1, 1, 2]
    assert len(plan_packing(ids).groups) == 1
    monkeypatch.setattr(packing, "DENSE_TOKENS", 1)
    assert [len(group.slabs) for group in plan_packing(ids).groups] == [1, 1, 1, 1]


@pytest.mark.parametrize("dense_tokens", [1, 6, 8, 13, 10_000])
def test_groups_join_consecutive_slabs_up_to_the_dense_token_count(dense_tokens):
    ids = [[1] * n for n in (5, 3, 3, 2, 1)]  # slabs of 5 padded positions: (5), (3), (3), (2, 1)
    plan = plan_packing(ids, slab_tokens=5, dense_tokens=dense_tokens)
    assert [len(slab.sizes) for slab in plan.slabs] == [1, 1, 1, 2]
    assert [slab for group in plan.groups for slab in group.slabs] == plan.slabs  # each once, in order
    expected = {1: [[0], [1], [2], [3]], 6: [[0], [1, 2], [3]], 8: [[0, 1], [2, 3]], 13: [[0, 1, 2], [3]],
                10_000: [[0, 1, 2, 3]]}[dense_tokens]
    assert [[plan.slabs.index(slab) for slab in group.slabs] for group in plan.groups] == expected
    for group in plan.groups:
        assert (group.first, group.last) == (group.slabs[0].first, group.slabs[-1].last)
        assert group.last - group.first <= dense_tokens or len(group.slabs) == 1
        for slab, (starts, lengths, width) in zip(group.slabs, group.spans):
            # each text's first row counted from the group's first row
            assert starts.tolist() == [slab.first - group.first + int(a) for a in slab.starts]
            assert lengths is slab.lengths and width == slab.width


def test_plan_rejects_nothing_and_empty_texts():
    with pytest.raises(ValueError, match="no texts"):
        plan_packing([])
    with pytest.raises(ValueError, match="zero tokens"):
        plan_packing([[1], []])


def test_the_padded_block_zeroes_its_padding_rows_whatever_the_memory_held():
    rows, sizes = torch.randn(6, 8), (3, 2, 1)  # three texts end to end, longest first: T = 3
    for _ in range(20):  # freed NaN blocks of the same size: memory a fresh block may be given
        garbage = torch.full((9, 8), float("nan"))
        del garbage
        block = _padded_block(rows, sizes)
        slots = torch.tensor([0, 1, 2, 3, 4, 6])
        assert torch.equal(block[slots], rows)
        assert torch.equal(block[torch.tensor([5, 7, 8])], torch.zeros(3, 8))
    assert _padded_block(rows, (6,)).shape == (6, 8)  # one text: no padding


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("normalize", [True, False])
def test_packed_embeddings_equal_the_padded_forward(tiny_encoder, pooling, normalize):
    tiny_encoder.pooling, tiny_encoder.normalize = pooling, normalize
    tiny_encoder.eval()
    with torch.no_grad():
        packed, padded = both_paths(tiny_encoder, TEXTS)
    assert packed.shape == padded.shape == (len(TEXTS), tiny_encoder.embedding_dim)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["1", "0"], ids=["fused-kernel", "no-fused-kernel"])
def test_small_slabs_and_groups_change_nothing(tiny_encoder, monkeypatch, kernel):
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", kernel)
    tiny_encoder.eval()
    encoded = tiny_encoder.tokenizer(TEXTS, truncation=True, max_length=64)
    cuts = [(1, 1), (30, 1), (30, 10_000), (10_000, 10_000)]  # (slab_tokens, dense_tokens)
    with torch.no_grad():
        hidden = [packed_hidden_states(tiny_encoder.model, plan_packing(encoded["input_ids"], slab_tokens=s,
                                                                        dense_tokens=d)) for s, d in cuts]
    plan = plan_packing(encoded["input_ids"], slab_tokens=30, dense_tokens=10_000)
    assert len(plan.slabs) > 2 and len(plan.groups) == 1
    for other in hidden[:3]:
        torch.testing.assert_close(other, hidden[3], rtol=1e-5, atol=1e-6)


def test_the_default_model_packed_equals_padded(default_encoder):
    default_encoder.eval()
    with torch.no_grad():
        packed, padded = both_paths(default_encoder, TEXTS)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def training_without_dropout(model_dir, packing: bool) -> Encoder:
    """A fresh tiny encoder in training mode with every dropout at 0: its passes are deterministic."""
    encoder = Encoder.from_pretrained(model_dir, max_seq_length=64)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    encoder.packing = packing
    return encoder.train()


def test_packed_gradients_equal_padded_gradients(tiny_model_dir, monkeypatch):
    """No dropout: the loss's gradient reaches every parameter exactly as through the padded forward."""
    # torch's passes on both paths: the fp32 layer passes (where they run) sum in another order, and are
    # checked against float64 and against this composition in tests/test_fused_layer.py
    monkeypatch.setenv("CONTRASTKIT_FUSED_LAYER", "0")
    grads = []
    for packing in (True, False):
        encoder = training_without_dropout(tiny_model_dir, packing)
        anchors, positives = encoder.embed(TEXTS[:4]), encoder.embed(TEXTS[4:])
        torch.nn.functional.cross_entropy(anchors @ positives.T * 20, torch.arange(4)).backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert {"model.embeddings.word_embeddings.weight", "model.encoder.layer.1.output.dense.weight"} <= grads[0].keys()
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("kept", [False, True], ids=["no-grad-yet", "kept-grad"])
def test_the_word_embedding_gradient_is_added_sparsely_into_a_kept_gradient(tiny_model_dir, monkeypatch, kept):
    """With a dense .grad already there, the lookup's gradient comes as sparse rows added into it."""
    # the packed forward against the padded one, both with torch's attention and layer passes: the fused
    # kernels (where they run) round differently, and are checked against float64 in
    # tests/test_fused_attention.py and tests/test_fused_layer.py
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", "0")
    monkeypatch.setenv("CONTRASTKIT_FUSED_LAYER", "0")
    sparse_calls = []
    embedding = torch.nn.functional.embedding
    monkeypatch.setattr(torch.nn.functional, "embedding",
                        lambda *args, **kwargs: sparse_calls.append(kwargs.get("sparse", False)) or
                        embedding(*args, **kwargs))
    grads = []
    for packing in (True, False):
        encoder = training_without_dropout(tiny_model_dir, packing)
        weight = encoder.model.embeddings.word_embeddings.weight
        if packing and kept:
            weight.grad = torch.full_like(weight, 0.25)  # what is there is added to, as autograd always does
            held = weight.grad
        sparse_per_pass = []
        for _ in range(2):  # two backward passes accumulate, as the groups and chunks of a step do
            sparse_calls.clear()
            anchors, positives = encoder.embed(TEXTS[:4]), encoder.embed(TEXTS[4:])
            torch.nn.functional.cross_entropy(anchors @ positives.T * 20, torch.arange(4)).backward()
            sparse_per_pass.append(True in sparse_calls)
        if packing:
            # the first pass finds a .grad only when one was kept; the second always finds the first's
            assert sparse_per_pass == [kept, True]
            assert weight.grad.layout == torch.strided
            if kept:
                assert weight.grad is held
                weight.grad -= 0.25
        grads.append(weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_dropout_is_applied_in_training_and_replays_with_the_seed(tiny_encoder):
    tiny_encoder.eval()
    with torch.no_grad():
        clean = tiny_encoder.embed(TEXTS)
    tiny_encoder.train()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            runs.append(tiny_encoder.embed(TEXTS))
    assert not torch.allclose(runs[0], clean, atol=1e-3)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2], atol=1e-3)


def test_attention_dropout_reaches_the_packed_attention(tiny_encoder):
    """Hidden-state dropout off: only the attention dropout can make two training passes differ."""
    for module in tiny_encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    tiny_encoder.train()
    with torch.no_grad():
        first, second = tiny_encoder.embed(TEXTS), tiny_encoder.embed(TEXTS)
        torch.testing.assert_close(first, second)
        assert tiny_encoder.set_attention_dropout(0.5) == 2
        third = tiny_encoder.embed(TEXTS)
    assert not torch.allclose(first, third, atol=1e-3)


def test_bf16_autocast_stays_close(tiny_encoder):
    tiny_encoder.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        packed, padded = both_paths(tiny_encoder, TEXTS)
    torch.testing.assert_close(packed.float(), padded.float(), rtol=0, atol=3e-2)


def test_bf16_takes_the_written_out_attention_and_fp32_without_dropout_the_fused_kernel(tiny_encoder, monkeypatch):
    """torch's fused CPU kernel ran 2-8x slower in bf16 (bench/attention_kernel.py): bf16 writes attention out."""
    calls = []
    monkeypatch.setattr(packing_module, "written_out_attention",
                        lambda *args: calls.append(args[0].dtype) or written_out_attention(*args))
    tiny_encoder.eval()
    with torch.no_grad():
        tiny_encoder.embed(TEXTS)
        assert calls == []  # fp32 without dropout: torch's kernel
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tiny_encoder.embed(TEXTS)
    assert calls == [torch.bfloat16] * 2  # the tiny model's two layers, one slab


@pytest.mark.parametrize("slab_tokens", [None, 30])
def test_bf16_gradients_through_the_written_out_attention_stay_close_to_the_padded_forward(tiny_model_dir, slab_tokens,
                                                                                         monkeypatch):
    """bf16 autocast, no dropout: every parameter's gradient within 2 % of the padded forward's (0.7 % seen).

    The key biases' true gradient is 0 (softmax ignores a constant added to all of a query's scores):
    theirs is rounding, measured against the largest gradient instead. Slabs of 30 tokens: the
    batch's texts in several slabs, whose gradients meet at the layers' weights cast to bf16 once.
    """
    if slab_tokens:
        import contrastkit.encoder as encoder_module

        monkeypatch.setattr(encoder_module, "plan_packing", functools.partial(plan_packing, slab_tokens=slab_tokens))
    grads = []
    for packing in (True, False):
        encoder = training_without_dropout(tiny_model_dir, packing)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            anchors, positives = encoder.embed(TEXTS[:4]), encoder.embed(TEXTS[4:])
        torch.nn.functional.cross_entropy(anchors.float() @ positives.float().T * 20, torch.arange(4)).backward()
        grads.append({n: p.grad.float().clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    largest = max(g.norm() for g in grads[1].values())
    for name, theirs in grads[1].items():
        assert (grads[0][name] - theirs).norm() <= 0.02 * theirs.norm() + 1e-5 * largest, name


def attention_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v [3 texts, 2 heads, 5 positions, 4] in float64, the texts' lengths (5, 3, 1) and their key mask."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, 2, 5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
               for _ in range(3))
    lengths = torch.tensor([5, 3, 1])
    return q, k, v, lengths, (torch.arange(5)[None, :] < lengths[:, None])[:, None, None, :]


def test_attention_without_dropout_is_pytorchs_attention():
    q, k, v, lengths, key_mask = attention_inputs()
    ours = written_out_attention(q, k, v, lengths, FastDropout(0.3).eval(), 0.7)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=0.7)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_attention_dropout_drops_probabilities_with_the_fast_masks_and_their_gradient():
    """out = (softmax(masked s·qkᵀ) · keep / (1 - p')) v, keep drawn by keep_mask from the same seed."""
    q, k, v, lengths, key_mask = attention_inputs()
    torch.manual_seed(5)
    ours = written_out_attention(q, k, v, lengths, FastDropout(0.3).train(), 0.7)
    torch.manual_seed(5)
    keep = keep_mask((3, 2, 5, 5), 0.3)
    scores = (0.7 * q @ k.transpose(-2, -1)).masked_fill(~key_mask, float("-inf"))
    reference = (torch.softmax(scores, -1) * keep / drop_threshold(0.3)[1]) @ v
    assert 0.1 < 1 - keep.double().mean() < 0.5  # something was dropped, not everything
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(ours)
    ours_grads = torch.autograd.grad((ours * weights).sum(), (q, k, v))
    reference_grads = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for mine, theirs in zip(ours_grads, reference_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["1", "0"], ids=["fused-kernel", "no-fused-kernel"])
def test_the_trainers_dropout_takes_the_written_out_attention_and_torchs_the_fused_one(tiny_encoder, monkeypatch,
                                                                                      kernel):
    """torch's dropout: torch's attention. The trainer's FastDropout: contrastkit's fused kernel where it
    runs (fp32 on AVX-512 CPUs), else the written-out attention. Out of training: a fused kernel."""
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", kernel)
    runs = kernel == "1" and fused_attention.library() is not None
    calls, fused_calls = [], []
    monkeypatch.setattr(packing_module, "written_out_attention",
                        lambda *args: calls.append(1) or written_out_attention(*args))
    packed_attention = fused_attention.packed_attention
    monkeypatch.setattr(fused_attention, "packed_attention",
                        lambda *args, **kwargs: fused_calls.append(1) or packed_attention(*args, **kwargs))
    tiny_encoder.train()
    with torch.no_grad():
        tiny_encoder.embed(TEXTS)
        assert not calls and not fused_calls  # nn.Dropout: PyTorch's attention draws its own mask
        use_fast_dropout(tiny_encoder)
        tiny_encoder.embed(TEXTS)
        # the tiny model's two layers; eight short texts make one slab
        assert (len(fused_calls), len(calls)) == ((2, 0) if runs else (0, 2))
        tiny_encoder.eval()
        tiny_encoder.embed(TEXTS)
        # no dropout out of training: a fused kernel (contrastkit's where it runs, else PyTorch's)
        assert (len(fused_calls), len(calls)) == ((4, 0) if runs else (0, 2))


@pytest.mark.parametrize("fast_dropout", [False, True], ids=["torch-dropout", "fast-dropout"])
def test_gradient_caching_through_the_packed_forward_equals_the_uncached_step(tiny_model_dir, fast_dropout):
    """float64, dropout on: the cached step replays each chunk's dropout masks in the packed forward.

    With fast_dropout the attention's probabilities too are dropped by FastDropout (written_out_attention).
    """
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=64).double()
    if fast_dropout:
        use_fast_dropout(encoder)
    encoder.train()
    groups = [TEXTS[:4], TEXTS[4:]]
    chunks = [length_sorted_chunks(encoder.token_lengths(g), 2) for g in groups]

    def loss(anchors, positives):
        return torch.nn.functional.cross_entropy(anchors @ positives.T * 20, torch.arange(4))

    def grads(cached: bool, seed: int = 3) -> dict[str, torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        if cached:
            grad_cache_backward(encoder.embed, groups, chunks, loss)
        else:
            loss(*(embed_in_chunks(encoder.embed, g, c) for g, c in zip(groups, chunks))).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain, cached = grads(False), grads(True)
    assert encoder.packs and plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-10, rtol=0, msg=name)
    other_masks = grads(True, seed=4)
    assert any(not torch.allclose(other_masks[n], plain[n], atol=1e-6) for n in plain)


def test_bf16_training_ends_each_sublayer_in_one_pass_with_the_compositions_masks(tiny_encoder, monkeypatch):
    """bf16 autocast with FastDropout: dropout + residual + layer norm as one pass (fast_layer_norm), drawing
    the seeds the composition draws, in the same order, so the same masks: the same embeddings and gradients."""
    use_fast_dropout(tiny_encoder)
    tiny_encoder.train()

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor], set[str]]:
        tiny_encoder.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeddings = tiny_encoder.embed(TEXTS)
        (embeddings.float() * torch.linspace(-1, 1, embeddings.shape[1])).sum().backward()
        return embeddings.detach().float(), {n: p.grad.float().clone() for n, p in tiny_encoder.named_parameters()
                                             if p.grad is not None}, graph_nodes(embeddings.grad_fn)

    fused, fused_grads, fused_nodes = run()
    monkeypatch.setattr(packing_module, "dense_dropout_add_layer_norm",
                        lambda h, layer, x, norm, dropout: norm(dropout(dense(layer, h)) + x))
    composed, composed_grads, composed_nodes = run()
    assert "_DropoutAddNormBackward" in fused_nodes and "_DropoutAddNormBackward" not in composed_nodes
    assert "_BiasGeluBackward" in fused_nodes  # the feed-forward's bias + GELU pass (fast_gelu) as well
    torch.testing.assert_close(fused, composed, rtol=0, atol=2e-2)
    largest = max(g.norm() for g in composed_grads.values())
    for name, theirs in composed_grads.items():
        assert (fused_grads[name] - theirs).norm() <= 0.02 * theirs.norm() + 1e-5 * largest, name
    torch.manual_seed(8)  # other seeds, other masks: the comparison above can tell masks apart
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert not torch.allclose(tiny_encoder.embed(TEXTS).float(), composed, atol=2e-2)


@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_the_head_layout_copies_each_texts_rows_and_zero_pads_and_back(dtype, path, monkeypatch):
    """_PackedToHeads / _HeadsToPacked against a loop over texts, heads and positions, forward and backward,
    with NaN left in the memory they allocate: none of it may reach a result. Both paths: the compiled
    copies (the CPU), and torch's (other devices; here forced by finding no word size for the kernels)."""
    if path == "torch":
        monkeypatch.setattr(packing_module, "_unit", lambda *args: 0)
    sizes, heads, d = [7, 5, 5, 2, 1], 3, 4
    plan = plan_packing([[1] * n for n in sizes], slab_tokens=1000)
    (slab,) = plan.slabs
    n, width = sum(sizes), sizes[0]
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(n, 3 * heads * d, generator=generator).to(dtype).requires_grad_()
    torch.empty(10_000, dtype=dtype).fill_(float("nan"))  # freed memory full of NaN, for new_empty to reuse
    q, k, v = _PackedToHeads.apply(rows, slab, 3, heads, d)
    for part, ours in enumerate((q, k, v)):
        expected = torch.zeros(len(sizes), heads, width, d, dtype=dtype)
        start = 0
        for i, size in enumerate(sizes):
            for j in range(heads):
                columns = slice((part * heads + j) * d, (part * heads + j + 1) * d)
                expected[i, j, :size] = rows.detach()[start:start + size, columns]
            start += size
        assert ours.shape == expected.shape and torch.equal(ours, expected), part
    grads = [torch.randn(q.shape, generator=generator).to(dtype) for _ in range(3)]
    (q * grads[0]).sum().add_((k * grads[1]).sum()).add_((v * grads[2]).sum()).backward()
    reference = rows.detach().clone().requires_grad_()
    theirs = [_padded_block(reference[:, p * heads * d:(p + 1) * heads * d], slab.sizes).view(
        len(sizes), width, heads, d).transpose(1, 2) for p in range(3)]
    sum((t * g).sum() for t, g in zip(theirs, grads)).backward()
    assert torch.equal(rows.grad, reference.grad)  # the gradient gathers each part's real positions back
    only_q = rows.detach().clone().requires_grad_()
    (_PackedToHeads.apply(only_q, slab, 3, heads, d)[0] * grads[0]).sum().backward()
    assert torch.equal(only_q.grad[:, heads * d:], torch.zeros(n, 2 * heads * d, dtype=dtype))  # k, v unused: 0
    assert torch.equal(only_q.grad[:, :heads * d], reference.grad[:, :heads * d])
    only_v = rows.detach().clone().requires_grad_()
    (_PackedToHeads.apply(only_v, slab, 3, heads, d)[2] * grads[2]).sum().backward()  # q's gradient None
    assert torch.equal(only_v.grad[:, 2 * heads * d:], reference.grad[:, 2 * heads * d:])
    assert not only_v.grad[:, :2 * heads * d].any()
    blocks = q.detach().clone().requires_grad_()
    packed = _HeadsToPacked.apply(blocks, slab)
    assert torch.equal(packed, rows.detach()[:, :heads * d])  # back to the packed rows: the inverse
    weights = torch.randn(packed.shape, generator=generator).to(dtype)
    (packed * weights).sum().backward()
    assert torch.equal(blocks.grad, _PackedToHeads.apply(weights, slab, 1, heads, d)[0])
