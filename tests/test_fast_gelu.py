"""linear_gelu must compute GELU(x W₁ᵀ + b₁) as the composition does under bf16 autocast (to bf16 rounding), with
the exact GELU's value and slope in both tails, its bias gradient summed in the same pass, and leave the rest alone."""

import pytest
import torch
from torch import nn

from contrastkit.fast_gelu import _BiasGelu, linear_gelu


def run(fn, x: torch.Tensor, layer: nn.Linear, grad: torch.Tensor, autocast: bool = True):
    """fn(x)'s output and the gradients of x, the weight and the bias."""
    layer.zero_grad()
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = fn(x)
    y.backward(grad)
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone(), y.grad_fn


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("act", [nn.GELU(), "transformers"])
def test_the_pass_is_the_composition_under_autocast(act):
    if act == "transformers":
        from transformers.activations import GELUActivation

        act = GELUActivation()
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(48, 200)
    with torch.no_grad():
        layer.bias.normal_(generator=generator)
    x = torch.randn(300, 48, generator=generator)  # 300 rows: several blocks of rows
    grad = torch.randn(300, 200, generator=generator).bfloat16()
    ours = run(lambda x: linear_gelu(x, layer, act), x, layer, grad)
    theirs = run(lambda x: act(layer(x)), x, layer, grad)
    assert type(ours[4]).__name__ == "_BiasGeluBackward" and ours[0].dtype == torch.bfloat16
    for mine, reference in zip(ours[:4], theirs[:4]):
        assert relative(mine, reference) < 0.01  # the composition rounds h + b to bf16 first; this pass does not
    # against fp64 on the same bf16 product: as close as the composition, or closer
    h = (x.bfloat16() @ layer.weight.bfloat16().T).double()
    exact = torch.nn.functional.gelu(h + layer.bias.double())
    assert relative(ours[0], exact) <= relative(theirs[0], exact) + 1e-4


def test_value_and_slope_in_both_tails():
    """Φ is computed without cancellation: in the lower tail GELU keeps its value (torch's bf16 GELU reads 0
    below z = -3), within bf16 rounding for |z| < 3 and a few % further out, where the A&S form's error
    (bounded in absolute terms for erf) grows relative to Φ; the slope within bf16 rounding throughout."""
    z = torch.linspace(-10, 10, 4001)
    h = z.bfloat16()[None, :].contiguous()
    bias = torch.zeros(h.shape[1])
    exact_z = h.double()[0]
    cdf = torch.special.log_ndtr(exact_z).exp()  # accurate in the lower tail, where ndtr itself reads 0
    exact_y = exact_z * cdf
    exact_slope = cdf + exact_z * torch.exp(-exact_z ** 2 / 2) / (2 * torch.pi) ** 0.5
    h_grad = h.clone().requires_grad_()
    y = _BiasGelu.apply(h_grad, bias)
    y.backward(torch.ones_like(y))
    value_error = ((y.double()[0] - exact_y).abs() / exact_y.abs().clamp_min(1e-300)).detach()
    slope_error = (h_grad.grad.double()[0] - exact_slope).abs() / exact_slope.abs().clamp_min(1e-300)
    inner, lower, far = exact_z.abs() < 3, (exact_z < -3) & (exact_z >= -6), exact_z < -6
    assert value_error[inner].max() <= 2.0 ** -8 and value_error[lower].max() < 0.01 and value_error[far].max() < 0.03
    assert slope_error.max() <= 2.0 ** -8
    assert (y[0, :1400] < 0).all()  # z < -3: small and negative, not 0
    torch_error = (torch.nn.functional.gelu(h).double()[0] - exact_y).abs() / exact_y.abs().clamp_min(1e-300)
    assert torch_error[far].min() > 0.5  # what the composition loses there


def test_the_bias_gradient_is_summed_over_every_row():
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(1000, 37, generator=generator).bfloat16()
    bias = torch.randn(37, generator=generator).requires_grad_()
    grad = torch.randn(1000, 37, generator=generator).bfloat16()
    h_grad = h.clone().requires_grad_()
    _BiasGelu.apply(h_grad, bias).backward(grad)
    z = h.double() + bias.detach().double()
    reference = (grad.double() * torch.autograd.functional.jacobian(
        lambda t: torch.nn.functional.gelu(t).sum(), z)).sum(0)  # dy · GELU'(z), summed over rows
    torch.testing.assert_close(bias.grad.double(), reference, rtol=1e-4, atol=1e-4)


def test_the_result_does_not_depend_on_the_thread_count():
    generator = torch.Generator().manual_seed(2)
    h = torch.randn(700, 1536, generator=generator).bfloat16()
    bias = torch.randn(1536, generator=generator)
    grad = torch.randn(700, 1536, generator=generator).bfloat16()
    threads, results = torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            h_grad, b_grad = h.clone().requires_grad_(), bias.clone().requires_grad_()
            y = _BiasGelu.apply(h_grad, b_grad)
            y.backward(grad)
            results.append((y, h_grad.grad, b_grad.grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, results[0]))


def test_what_the_pass_does_not_take_runs_the_composition(monkeypatch):
    # fp32 has a pass of its own where it runs (contrastkit/fused_layer.py, tests/test_fused_layer.py)
    monkeypatch.setenv("CONTRASTKIT_FUSED_LAYER", "0")
    generator = torch.Generator().manual_seed(3)
    layer = nn.Linear(16, 32)
    x = torch.randn(10, 16, generator=generator)
    grad = torch.randn(10, 32, generator=generator)
    hooked = nn.GELU()
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    cases = [(nn.GELU(), False),  # fp32: no autocast
             (nn.GELU(approximate="tanh"), True),  # another GELU
             (nn.ReLU(), True),
             (hooked, True)]  # a hook must still run
    for act, autocast in cases:
        ours = run(lambda x: linear_gelu(x, layer, act), x, layer, grad.to(torch.bfloat16 if autocast else x.dtype),
                   autocast)
        theirs = run(lambda x: act(layer(x)), x, layer, grad.to(torch.bfloat16 if autocast else x.dtype), autocast)
        assert type(ours[4]).__name__ != "_BiasGeluBackward"
        for mine, reference in zip(ours[:4], theirs[:4]):
            assert torch.equal(mine, reference)
