"""The fp32 layer passes (contrastkit/fused_layer.py): a block's exit and the feed-forward's entry against
float64 and against torch's fp32 compositions, with FastDropout's masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _support import graph_nodes
from torch import nn

from contrastkit import fused_layer
from contrastkit.fast_dropout import FastDropout, draw_seed, keep_mask, seeds_from, use_fast_dropout
from contrastkit.fast_gelu import linear_gelu
from contrastkit.fast_layer_norm import dense_dropout_add_layer_norm
from contrastkit.packing import packed_hidden_states, plan_packing

needs_kernel = pytest.mark.skipif(fused_layer.library() is None, reason="the passes need AVX-512 and a C++ compiler")
pytestmark = needs_kernel


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.double() - reference).norm() / reference.norm()).item()


def exit_inputs(rows: int, width: int, inner: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer, norm = nn.Linear(inner, width), nn.LayerNorm(width, eps=1e-12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.1)
    h = torch.randn(rows, inner, generator=generator).requires_grad_()
    x = torch.randn(rows, width, generator=generator).requires_grad_()
    grad = torch.randn(rows, width, generator=generator)
    return layer, norm, h, x, grad


def gradients(output: torch.Tensor, grad: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(output, tensors, grad))


# rows: 301 spans 15 blocks of 21 rows at width 384 (the last one short); width 40 leaves a 16-lane tail
@pytest.mark.parametrize("width, inner", [(384, 1536), (40, 24)])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_the_exit_is_float64_layer_norm_of_the_dropped_projection_with_fast_dropouts_mask(width, inner, p):
    layer, norm, h, x, grad = exit_inputs(301, width, inner)
    dropout = FastDropout(p).train()
    with seeds_from(5):
        y = dense_dropout_add_layer_norm(h, layer, x, norm, dropout)
    assert type(y.grad_fn).__name__ == "_BiasDropoutAddNormF32Backward"
    with seeds_from(5):  # the seed the pass drew, drawn again, and FastDropout's mask for it
        keep = keep_mask((301, width), p, draw_seed()) if p > 0 else torch.ones(301, width, dtype=torch.bool)
    params = [h, layer.weight, layer.bias, x, norm.weight, norm.bias]
    wide = [t.detach().double().requires_grad_() for t in params]
    keep_probability = 1 - round(p * 65536) / 65536
    z = torch.where(keep, (wide[0] @ wide[1].T + wide[2]) / keep_probability, 0.0) + wide[3]
    reference = F.layer_norm(z, (width,), wide[4], wide[5], 1e-12)
    assert relative_error(y, reference) < 1e-6
    ours, theirs = gradients(y, grad, params), gradients(reference, grad.double(), wide)
    for name, mine, exact in zip(["h", "weight", "bias", "x", "gamma", "beta"], ours, theirs):
        assert relative_error(mine, exact) < 1e-5, name


@pytest.mark.parametrize("width, inner", [(1536, 384), (24, 40)])
def test_the_entry_is_float64_exact_gelu_of_the_projection(width, inner):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    layer = nn.Linear(inner, width)
    x = (3 * torch.randn(203, inner, generator=generator)).requires_grad_()
    grad = torch.randn(203, width, generator=generator)
    y = linear_gelu(x, layer, nn.GELU())
    assert type(y.grad_fn).__name__ == "_BiasGeluF32Backward"
    params = [x, layer.weight, layer.bias]
    wide = [t.detach().double().requires_grad_() for t in params]
    reference = F.gelu(wide[0] @ wide[1].T + wide[2])
    assert relative_error(y, reference) < 1e-6
    for name, mine, exact in zip(["x", "weight", "bias"], gradients(y, grad, params),
                                 gradients(reference, grad.double(), wide)):
        assert relative_error(mine, exact) < 1e-5, name
    # the tails too, where a GELU of a large negative input is tiny but not to be flushed wrongly
    far = torch.tensor([[-12.0, -5.5, -1.0, 0.0, 0.5, 3.0, 9.0] + [0.0] * (width - 7)]) if width >= 7 else None
    if far is not None:
        plain = nn.Linear(width, width)
        with torch.no_grad():
            plain.weight.copy_(torch.eye(width))
            plain.bias.zero_()
        torch.testing.assert_close(linear_gelu(far, plain, nn.GELU()).detach(), F.gelu(far.double()).float(),
                                   rtol=1e-5, atol=1e-7)


def test_the_passes_equal_torchs_fp32_compositions_with_the_same_masks(monkeypatch):
    layer, norm, h, x, grad = exit_inputs(97, 48, 64, seed=2)
    dropout = FastDropout(0.1).train()

    def exit_(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with seeds_from(seed):
            y = dense_dropout_add_layer_norm(h, layer, x, norm, dropout)
        return y.detach(), gradients(y, grad, [h, layer.weight, layer.bias, x, norm.weight, norm.bias])

    fused, fused_grads = exit_(3)
    monkeypatch.setenv("CONTRASTKIT_FUSED_LAYER", "0")
    composed, composed_grads = exit_(3)
    torch.testing.assert_close(fused, composed, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(fused_grads, composed_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(exit_(4)[0], composed, atol=1e-2)  # another seed, another mask


def test_the_result_does_not_depend_on_the_thread_count():
    layer, norm, h, x, grad = exit_inputs(500, 384, 96, seed=3)
    gelu_layer = nn.Linear(384, 1536)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with seeds_from(6):
                y = dense_dropout_add_layer_norm(h, layer, x, norm, FastDropout(0.1).train())
                z = linear_gelu(y, gelu_layer, nn.GELU())
            results.append([z.detach(), *gradients(z, torch.ones_like(z), [h, layer.bias, x, norm.weight,
                                                                            gelu_layer.bias])])
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_where_the_passes_apply(monkeypatch):
    layer, norm, h, x, _ = exit_inputs(8, 16, 12)
    dropout = FastDropout(0.1).train()
    assert fused_layer.exit_applies(h, layer, x, norm, dropout)
    assert fused_layer.gelu_applies(h, nn.Linear(12, 20), exact_gelu=True)
    assert not fused_layer.gelu_applies(h, nn.Linear(12, 20), exact_gelu=False)  # tanh GELU, ReLU, ...
    assert not fused_layer.exit_applies(h, layer, x, norm, nn.Dropout(0.1).train())  # torch's own mask
    assert fused_layer.exit_applies(h, layer, x, norm, nn.Dropout(0.1).eval())  # drops nothing
    assert not fused_layer.exit_applies(h.double(), layer.double(), x.double(), norm.double(), dropout)
    assert not fused_layer.exit_applies(h, layer, x, nn.LayerNorm(16, elementwise_affine=False), dropout)
    hooked = nn.Linear(12, 16)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert not fused_layer.exit_applies(h, hooked, x, norm, dropout)  # a hook must still run
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_layer.exit_applies(h, layer, x, norm, dropout)  # bf16 has passes of its own
    monkeypatch.setenv("CONTRASTKIT_FUSED_LAYER", "0")
    assert not fused_layer.exit_applies(h, layer, x, norm, dropout)
    assert not fused_layer.gelu_applies(h, nn.Linear(12, 20), exact_gelu=True)


def test_a_packed_training_step_takes_the_passes_with_the_compositions_masks(monkeypatch):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=40, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=56, max_position_embeddings=64, attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).train()
    use_fast_dropout(model)
    generator = torch.Generator().manual_seed(1)
    plan = plan_packing([torch.randint(1, 100, (n,), generator=generator).tolist() for n in (40, 21, 9, 2)],
                        slab_tokens=64)
    direction = torch.randn(72, 40, generator=torch.Generator().manual_seed(0))

    def step(seed: int):
        model.zero_grad()
        torch.manual_seed(seed)
        hidden = packed_hidden_states(model, plan)
        (hidden * direction).sum().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, graph_nodes(hidden.grad_fn)

    hidden, grads, nodes = step(8)
    assert {"_BiasDropoutAddNormF32Backward", "_BiasGeluF32Backward"} <= nodes
    monkeypatch.setenv("CONTRASTKIT_FUSED_LAYER", "0")
    other_hidden, other_grads, other_nodes = step(8)
    assert not {"_BiasDropoutAddNormF32Backward", "_BiasGeluF32Backward"} & other_nodes
    assert relative_error(hidden, other_hidden.double()) < 1e-5
    for name, grad in grads.items():
        if name.endswith("key.bias"):  # 0 but for rounding: softmax ignores a shift every key of a row shares
            continue
        assert relative_error(grad, other_grads[name].double()) < 1e-4, name
    assert relative_error(step(9)[0], other_hidden.double()) > 0.05  # other masks: the agreement is the masks'
