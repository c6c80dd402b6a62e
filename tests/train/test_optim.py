"""The shared optimizer step: fused AdamW is torch's AdamW update; one norm checks and clips."""

import math

import pytest
import torch

from contrastkit.train.optim import adamw, gradient_norm, step_if_finite


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((7, 5), (5,), (3, 4, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def test_fused_adamw_matches_the_default_update():
    fused, plain = _params(), _params()
    groups = lambda ps: [{"params": ps[:1], "weight_decay": 0.01}, {"params": ps[1:], "weight_decay": 0.0}]  # noqa: E731
    ours = adamw(groups(fused), lr=1e-2, device=torch.device("cpu"))
    reference = torch.optim.AdamW(groups(plain), lr=1e-2, foreach=False)
    assert ours.defaults["fused"]
    for _ in range(3):
        ours.step()
        reference.step()
    for a, b, start in zip(fused, plain, _params()):
        assert not torch.equal(a, start)  # the steps moved them
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_gradient_norm_is_the_norm_of_all_gradients_together():
    params = _params()
    params.append(torch.nn.Parameter(torch.ones(3)))  # no gradient: ignored
    flat = torch.cat([p.grad.flatten() for p in params[:3]]).double()
    assert float(gradient_norm(params)) == pytest.approx(float(flat.norm()), rel=1e-6)
    assert float(gradient_norm([torch.nn.Parameter(torch.ones(2))])) == 0.0


def test_step_clips_like_clip_grad_norm():
    ours, reference = _params(), _params()
    norm_before = float(torch.nn.utils.clip_grad_norm_(reference, 0.5))
    torch.optim.SGD(reference, lr=1.0).step()
    stepped, norm = step_if_finite(torch.optim.SGD(ours, lr=1.0), torch.tensor(1.0), max_grad_norm=0.5)
    assert stepped and norm == pytest.approx(norm_before, rel=1e-6) and norm > 0.5  # it did clip
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)


def test_no_clipping_without_a_limit():
    params, start = _params(), [p.detach().clone() for p in _params()]
    stepped, norm = step_if_finite(torch.optim.SGD(params, lr=1.0), torch.tensor(1.0), max_grad_norm=None)
    assert stepped and norm > 1.0
    for p, s in zip(params, start):
        torch.testing.assert_close(p.detach(), s - p.grad)  # the whole gradient, unclipped


@pytest.mark.parametrize("bad", ["loss", "inf grad", "nan grad"])
def test_a_non_finite_loss_or_gradient_skips_the_step(bad):
    params = _params()
    if bad == "inf grad":
        params[2].grad[1, 2, 0] = math.inf
    if bad == "nan grad":
        params[0].grad[3, 1] = math.nan
    start = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    loss = torch.tensor(math.nan if bad == "loss" else 1.0)
    stepped, _ = step_if_finite(torch.optim.SGD(params, lr=1.0), loss, max_grad_norm=1.0)
    assert not stepped
    for p, s, g in zip(params, start, grads):
        assert torch.equal(p.detach(), s)
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, equal_nan=True)  # not scaled by a nan clip factor
