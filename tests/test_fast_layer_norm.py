"""dropout_add_layer_norm must equal norm(fast_dropout(a) + x) in bf16 autocast's dtypes (same mask, fp32 to the
order of sums), back-propagate as that composition does, not depend on the thread count, and leave the rest alone."""

import pytest
import torch
from torch import nn

from contrastkit.fast_dropout import FastDropout
from contrastkit.fast_layer_norm import dropout_add_layer_norm


def inputs(rows: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    a = (torch.randn(rows, width, generator=generator) * 2).bfloat16()
    x = torch.randn(rows, width, generator=generator) * 3 + 1
    norm = nn.LayerNorm(width, eps=1e-12)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(width, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(width, generator=generator))
    return a, x, norm


def run(fn, a, x, norm, dropout, grad, seed):
    """fn's output and the gradients of a, x, the norm's weight and bias for an upstream gradient `grad`."""
    a, x = a.clone().requires_grad_(), x.clone().requires_grad_()
    norm.zero_grad()
    torch.manual_seed(seed)
    y = fn(a, x, norm, dropout)
    y.backward(grad)
    return y.detach(), a.grad, x.grad, norm.weight.grad.clone(), norm.bias.grad.clone(), y.grad_fn


def composition(a, x, norm, dropout):
    return norm(dropout(a) + x)


@pytest.mark.parametrize("rows,width", [(7, 384), (300, 384), (45, 37), (1, 1000)])  # 300 rows: 15 blocks
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_the_pass_is_the_composition_forward_and_backward(rows, width, p):
    a, x, norm = inputs(rows, width)
    grad = torch.randn(rows, width, generator=torch.Generator().manual_seed(9))
    dropout = FastDropout(p).train()
    ours = run(dropout_add_layer_norm, a, x, norm, dropout, grad, 4)
    theirs = run(composition, a, x, norm, dropout, grad, 4)
    assert type(ours[5]).__name__ == "_DropoutAddNormBackward"  # the compiled pass, not the composition
    assert ours[0].dtype == torch.float32 and ours[1].dtype == torch.bfloat16 and ours[2].dtype == torch.float32
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[1] == 0, theirs[1] == 0)  # the same mask on a's gradient
    # a's gradient is bf16, rounded twice (to a's dtype, then after dropout's scale): where the fp32 sums'
    # order moves ds across a rounding boundary the two may differ by two bf16 steps (2^-7 each)
    difference = (ours[1].float() - theirs[1].float()).abs()
    assert (difference <= theirs[1].float().abs() * 2.0 ** -6 + 1e-6).all() and (difference > 0).float().mean() < 0.02
    for mine, reference in zip(ours[2:5], theirs[2:5]):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4)
    if p > 0 and rows * width > 1000:
        dropped = (ours[1] == 0).float().mean()
        assert 0.5 * p < dropped < 2 * p


def test_inactive_dropouts_drop_nothing_and_draw_no_seed():
    a, x, norm = inputs(20, 64)
    grad = torch.randn(20, 64)
    reference = run(lambda a, x, n, d: n(a + x), a, x, norm, None, grad, 1)
    for dropout in (FastDropout(0.3).eval(), nn.Dropout(0.3).eval(), nn.Dropout(0.0).train(), nn.Identity()):
        torch.manual_seed(3)
        before = torch.get_rng_state()
        y = dropout_add_layer_norm(a, x, norm, dropout)
        assert torch.equal(torch.get_rng_state(), before)
        torch.testing.assert_close(y, reference[0], rtol=1e-5, atol=1e-5)
        assert type(y.grad_fn).__name__ == "_DropoutAddNormBackward"


def test_what_the_pass_does_not_take_runs_the_composition():
    a, x, norm = inputs(20, 64)
    grad = torch.randn(20, 64)
    cases = [(a.float(), x, FastDropout(0.2).train()),  # fp32 training: no bf16 sub-layer output
             (a, x.bfloat16(), FastDropout(0.2).train()),  # a bf16 model: no fp32 residual stream
             (a, x, nn.Dropout(0.2).train())]  # torch's own dropout mask
    for a_in, x_in, dropout in cases:
        ours = run(dropout_add_layer_norm, a_in, x_in, norm, dropout, grad.to(x_in.dtype), 6)
        theirs = run(composition, a_in, x_in, norm, dropout, grad.to(x_in.dtype), 6)
        assert type(ours[5]).__name__ != "_DropoutAddNormBackward"
        for mine, reference in zip(ours[:5], theirs[:5]):
            assert torch.equal(mine, reference)


def test_the_result_does_not_depend_on_the_thread_count():
    a, x, norm = inputs(500, 384, seed=2)
    grad = torch.randn(500, 384, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run(dropout_add_layer_norm, a, x, norm, FastDropout(0.2).train(), grad, 8)[:5])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(mine, first) for mine, first in zip(other, results[0]))


def test_the_layer_norm_matches_float64():
    """Against fp64 arithmetic on the same inputs (no dropout), as close as torch's fp32 composition."""
    a, x, norm = inputs(64, 384, seed=5)
    exact = nn.functional.layer_norm(a.double() + x.double(), (384,), norm.weight.double(), norm.bias.double(), 1e-12)
    ours = dropout_add_layer_norm(a, x, norm, nn.Identity()).double()
    theirs = composition(a, x, norm, nn.Identity()).double()
    assert (ours - exact).abs().max() < 2 * (theirs - exact).abs().max() + 1e-6
