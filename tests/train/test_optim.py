"""The shared optimizer step: fused AdamW is torch's AdamW update; one norm checks and clips."""

import math

import pytest
import torch

from contrastkit.train.optim import adamw, gradient_norm, read_scalars, step_if_finite, zero_grad_keeping


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


def _with_grads(*grads):
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    return params


def test_gradient_norm_of_large_fp32_gradients_is_the_float64_norm():
    generator = torch.Generator().manual_seed(3)
    grads = [torch.randn(n, generator=generator) * scale for n, scale in ((3_000_000, 1e-3), (384, 5.0), (1, 0.0))]
    expected = float(torch.cat([g.double() for g in grads]).norm())
    assert float(gradient_norm(_with_grads(*grads))) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", ["inf", "nan", "squares overflow", "not contiguous", "bf16"])
def test_gradient_norm_is_torchs_for_non_finite_overflowing_strided_and_bf16_gradients(case):
    grads = [torch.randn(64), torch.randn(8, 8)]
    if case == "inf":
        grads[1][2, 3] = float("inf")
    elif case == "nan":
        grads[0][5] = float("nan")
    elif case == "squares overflow":  # 1e20² is past fp32's range (torch's norm overflows as well)
        grads[0] = torch.full((64,), 1e20)
    elif case == "not contiguous":
        grads[1] = torch.randn(8, 8).t()
    else:
        grads = [g.bfloat16() for g in grads]
    expected = torch.nn.utils.get_total_norm(grads)
    norm = gradient_norm(_with_grads(*grads))
    if case in ("inf", "nan", "squares overflow"):
        assert not torch.isfinite(norm) and (torch.isnan(norm) if case == "nan" else torch.isinf(norm))
        assert torch.isnan(expected) if case == "nan" else torch.isinf(expected)
    else:
        assert torch.isfinite(norm) and float(norm) == pytest.approx(float(expected), rel=1e-6)


def test_step_clips_like_clip_grad_norm():
    ours, reference = _params(), _params()
    norm_before = float(torch.nn.utils.clip_grad_norm_(reference, 0.5))
    torch.optim.SGD(reference, lr=1.0).step()
    skipped, norm = step_if_finite(torch.optim.SGD(ours, lr=1.0), torch.tensor(1.0), max_grad_norm=0.5)
    assert not skipped and float(norm) == pytest.approx(norm_before, rel=1e-6) and norm > 0.5  # it did clip
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)


def test_the_fused_step_clips_inside_its_kernel_like_clip_grad_norm(monkeypatch):
    """Fused AdamW clips through its grad_scale input: the update (and the gradients it leaves) of
    clip_grad_norm_ then AdamW, with no clipping pass of its own over the gradients."""
    for limit in (0.5, 100.0):  # clipping, and a limit above the norm (factor 1)
        ours, reference = _params(), _params()
        norm_before = float(torch.nn.utils.clip_grad_norm_(reference, limit))
        clipped = [p.grad.clone() for p in reference]
        torch.optim.AdamW(reference, lr=1e-2, foreach=False).step()
        optimizer = adamw([{"params": ours}], lr=1e-2, device=torch.device("cpu"))
        with monkeypatch.context() as patch:
            patch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a, **k: pytest.fail("a separate pass"))
            skipped, norm = step_if_finite(optimizer, torch.tensor(1.0), max_grad_norm=limit)
        assert not skipped and float(norm) == pytest.approx(norm_before, rel=1e-6)
        assert (norm > limit) == (limit == 0.5)
        assert not hasattr(optimizer, "grad_scale")  # for that step only
        for a, b, g, c in zip(ours, reference, [p.grad for p in ours], clipped):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(g, c, rtol=1e-6, atol=1e-7)


def test_no_clipping_without_a_limit():
    params, start = _params(), [p.detach().clone() for p in _params()]
    skipped, norm = step_if_finite(torch.optim.SGD(params, lr=1.0), torch.tensor(1.0), max_grad_norm=None)
    assert not skipped and norm > 1.0
    for p, s in zip(params, start):
        torch.testing.assert_close(p.detach(), s - p.grad)  # the whole gradient, unclipped


@pytest.mark.parametrize("fused", [False, True], ids=["asked on the host (SGD)", "decided on the device (fused AdamW)"])
@pytest.mark.parametrize("bad", ["loss", "inf grad", "nan grad"])
def test_a_non_finite_loss_or_gradient_skips_the_step(bad, fused):
    params = _params()
    if bad == "inf grad":
        params[2].grad[1, 2, 0] = math.inf
    if bad == "nan grad":
        params[0].grad[3, 1] = math.nan
    start = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    loss = torch.tensor(math.nan if bad == "loss" else 1.0)
    optimizer = adamw([{"params": params}], lr=1.0, device=torch.device("cpu")) if fused else torch.optim.SGD(params, lr=1.0)
    skipped, _ = step_if_finite(optimizer, loss, max_grad_norm=1.0)
    assert skipped.dtype == torch.bool and bool(skipped)
    assert not hasattr(optimizer, "found_inf")  # the flag is for that step only
    for p, s, g in zip(params, start, grads):
        assert torch.equal(p.detach(), s)
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, equal_nan=True)  # not scaled by a nan clip factor
    if fused:  # no step counted, moments untouched: the next good step is the first step
        assert all(float(state["step"]) == 0 and not state["exp_avg"].any() for state in optimizer.state.values())


def test_a_skipped_fused_step_leaves_the_next_one_as_if_it_never_happened():
    """Bad step then good step (fused, flag on the device) = the good step alone, clipped alike."""
    skipping, reference = _params(), _params()
    for p in skipping:
        p.grad = p.grad.clone()
    good = [p.grad.clone() for p in skipping]
    skipping[1].grad[0] = math.nan
    opt = adamw([{"params": skipping, "weight_decay": 0.01}], lr=1e-2, device=torch.device("cpu"))
    ref = adamw([{"params": reference, "weight_decay": 0.01}], lr=1e-2, device=torch.device("cpu"))
    assert bool(step_if_finite(opt, torch.tensor(1.0), max_grad_norm=0.5).skipped)
    for p, g in zip(skipping, good):
        p.grad = g.clone()
    for optimizer in (opt, ref):
        assert not bool(step_if_finite(optimizer, torch.tensor(1.0), max_grad_norm=0.5).skipped)
    for a, b, start in zip(skipping, reference, _params()):
        assert not torch.equal(a, start)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_read_scalars_reads_tensors_and_numbers_in_the_order_given():
    values = {"loss": torch.tensor(0.25), "count": torch.tensor(7), "skipped": torch.tensor(True),
              "lr": 1e-3, "norm": torch.tensor([2.5])}
    assert read_scalars(values) == {"loss": 0.25, "count": 7.0, "skipped": 1.0, "lr": 1e-3, "norm": 2.5}
    assert list(read_scalars(values)) == list(values)
    assert read_scalars({"lr": 2}) == {"lr": 2.0}


def test_the_fused_step_never_reads_a_tensor_on_the_host(monkeypatch):
    """On a GPU each such read waits for the device: the fused path decides on the device alone."""
    params = _params()
    optimizer = adamw([{"params": params}], lr=1e-2, device=torch.device("cpu"))
    start = [p.detach().clone() for p in params]

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    step_if_finite(optimizer, torch.tensor(1.0), max_grad_norm=0.5)
    monkeypatch.undo()
    assert all(not torch.equal(p, s) for p, s in zip(params, start))


def test_zero_grad_keeping_zeroes_the_kept_gradients_in_place_and_frees_the_others():
    kept, other = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([kept, other], lr=0.1)
    (kept.sum() * 2 + other.sum()).backward()
    held = kept.grad
    zero_grad_keeping(optimizer, [kept])
    assert kept.grad is held and torch.equal(kept.grad, torch.zeros(3)) and other.grad is None


def test_a_skipped_step_reports_the_gradients_real_norm():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, math.inf, 0.0])
    optimizer = adamw([{"params": [p]}], lr=0.1, device=torch.device("cpu"))
    result = step_if_finite(optimizer, torch.tensor(1.0), max_grad_norm=1.0)
    assert bool(result.skipped) and math.isinf(float(result.grad_norm))  # not the 0 used for its clip factor
    assert torch.equal(p.detach(), torch.ones(3))
