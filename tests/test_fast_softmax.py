"""softmax_dropout in bf16 must equal fast_dropout(torch.softmax(s)) (same mask, values to a bf16 rounding),
back-propagate as that composition does, not depend on the thread count, and leave other dtypes to torch."""

from pathlib import Path

import pytest
import torch

from _support import graph_nodes, other_loops, run_in_forked_child

from contrastkit.fast_dropout import FastDropout, fast_dropout
from contrastkit.fast_softmax import softmax_dropout
from contrastkit.packing import written_out_attention


def scores(shape: tuple[int, ...], padded_keys: int = 0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=generator) * 4).bfloat16()
    if padded_keys:
        s[..., -padded_keys:] = float("-inf")
    return s


def composition(s: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return fast_dropout(torch.softmax(s, dim=-1), p)


def fused(s: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return softmax_dropout(s, p)


def assert_bf16_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal, or one bf16 step apart (2^-8 of the value): the exponentials are not libm's to the last bit."""
    difference = (ours.float() - reference.float()).abs()
    assert (difference <= reference.float().abs() * 2.0 ** -7 + 1e-30).all(), difference.max()
    assert (ours != reference).float().mean() < 0.01  # and nearly always bit for bit


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (4, 12, 37, 37), (2, 12, 64, 64), (1, 2, 3, 128), (3, 1, 1, 1),
                                   (1, 1, 3, 9001)])  # a row longer than a block of the stream
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_forward_is_the_softmax_then_fast_dropouts_mask(shape, p):
    padded = min(2, shape[-1] - 1)
    s = scores(shape, padded_keys=padded)
    ours, reference = fused(s, p, 3), composition(s, p, 3)
    assert ours.dtype == torch.bfloat16 and ours.shape == s.shape
    assert ours.grad_fn is None  # no graph asked for
    torch.testing.assert_close(ours == 0, reference == 0, rtol=0, atol=0)  # the same mask (and -inf keys at 0)
    assert_bf16_close(ours, reference)
    assert (ours[..., shape[-1] - padded:] == 0).all()  # padding keys get nothing
    if p > 0 and s.numel() > 100:
        dropped = (reference[..., :shape[-1] - padded] == 0).float().mean()
        assert 0.5 * p < dropped < 2 * p  # something dropped, not everything


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_backward_is_the_compositions_gradient(p):
    s = scores((3, 4, 45, 45), padded_keys=7, seed=1)
    grad = torch.randn(s.shape, generator=torch.Generator().manual_seed(2)).bfloat16()
    ours_s, reference_s = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours = fused(ours_s, p, 4)
    assert type(ours.grad_fn).__name__ == "_SoftmaxDropoutBackward"  # the compiled pass, not torch's softmax
    ours.backward(grad)
    composition(reference_s, p, 4).backward(grad)
    ours_g, reference_g = ours_s.grad.float(), reference_s.grad.float()
    assert (ours_g[..., -7:] == 0).all()  # padding keys get no gradient
    assert ((ours_g - reference_g).norm() / reference_g.norm()) < 2e-3
    torch.testing.assert_close(ours_g, reference_g, rtol=0.02, atol=2e-3)


def test_gradient_matches_float64_softmax():
    """Against an fp64 reference, the bf16 pass's gradient is as close as torch's own bf16 softmax's."""
    s = scores((2, 3, 30, 30), padded_keys=3, seed=5)
    grad = torch.randn(s.shape, generator=torch.Generator().manual_seed(6)).bfloat16()
    exact_s = s.double().requires_grad_()
    torch.softmax(exact_s, -1).backward(grad.double())
    errors = {}
    for name, op in (("ours", lambda x: softmax_dropout(x, 0.0)), ("torch", lambda x: torch.softmax(x, -1))):
        x = s.clone().requires_grad_()
        op(x).backward(grad)
        errors[name] = float((x.grad.double() - exact_s.grad).norm() / exact_s.grad.norm())
    assert errors["ours"] < 1.5 * errors["torch"] + 1e-4, errors


def test_the_result_does_not_depend_on_the_thread_count():
    s = scores((8, 12, 50, 50), padded_keys=3)
    grad = torch.randn(s.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            x = s.clone().requires_grad_()
            y = fused(x, 0.2, 9)
            y.backward(grad)
            results.append((y, x.grad))
    finally:
        torch.set_num_threads(threads)
    for y, g in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(g, results[0][1])


def masked_composition(s: torch.Tensor, lengths: list[int], alpha: float, p: float, seed: int) -> torch.Tensor:
    padding = torch.arange(s.shape[-1])[None, :] >= torch.tensor(lengths)[:, None]
    masked = (s * alpha).masked_fill(padding.view(len(lengths), *[1] * (s.dim() - 2), -1), float("-inf"))
    return composition(masked, p, seed)


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_key_lengths_and_alpha_are_the_masked_scaled_softmax(p):
    """softmax(alpha · s) over each text's first key_lengths keys: what was -inf padding, without the pass
    that writes it; the padding's own scores (here large, as a product of padded rows need not be 0) count
    for nothing, forward and backward."""
    lengths = [40, 17, 1, 33]
    s = scores((4, 3, 40, 40), seed=7)
    s[1, :, :, 17:], s[2, :, :, 1:] = 1e4, -3.0  # garbage in the padding keys
    grad = torch.randn(s.shape, generator=torch.Generator().manual_seed(8)).bfloat16()
    ours_s, reference_s = s.clone().requires_grad_(), s.clone().requires_grad_()
    torch.manual_seed(5)
    ours = softmax_dropout(ours_s, p, alpha=0.5, key_lengths=torch.tensor(lengths))
    reference = masked_composition(reference_s, lengths, 0.5, p, 5)  # alpha 0.5: exact in bf16 too
    torch.testing.assert_close(ours == 0, reference == 0, rtol=0, atol=0)
    assert_bf16_close(ours.detach(), reference.detach())
    assert (ours[1, ..., 17:] == 0).all() and (ours[2, ..., 1:] == 0).all()
    assert p > 0 or torch.allclose(ours[2, ..., 0].float(), torch.ones(3, 40))  # one key: all of the weight
    ours.backward(grad)
    reference.backward(grad)
    ours_g, reference_g = ours_s.grad.float(), reference_s.grad.float()
    assert (ours_g[1, ..., 17:] == 0).all() and (ours_g[2] == 0).all()  # a lone key's softmax has no gradient
    assert ((ours_g - reference_g).norm() / reference_g.norm()) < 2e-3
    # any alpha: against fp64, as close as the bf16 composition (which rounds alpha · s to bf16 first)
    alpha = 32 ** -0.5
    exact = masked_composition(s.double(), lengths, alpha, 0.0, 0)
    errors = [float((y.double() - exact).norm() / exact.norm()) for y in
              (softmax_dropout(s, 0.0, alpha=alpha, key_lengths=torch.tensor(lengths)),
               masked_composition(s, lengths, alpha, 0.0, 0))]
    assert errors[0] < 1.5 * errors[1] + 1e-4, errors


def test_key_lengths_must_give_each_text_a_key():
    s = scores((2, 3, 5, 5))
    for lengths in ([5], [5, 0], [5, 3, 2]):
        with pytest.raises(ValueError, match="key_lengths"):
            softmax_dropout(s, 0.1, key_lengths=torch.tensor(lengths))
    with pytest.raises(ValueError, match="alpha"):
        softmax_dropout(s, 0.1, alpha=0.0)


def test_a_p_below_the_masks_resolution_drops_nothing():
    """p < 2^-17 rounds to a threshold of 0 (drop_threshold): the softmax itself, forward and backward."""
    s = scores((2, 3, 9, 9), padded_keys=2).requires_grad_()
    y = softmax_dropout(s, 1e-6)
    assert_bf16_close(y.detach(), torch.softmax(s.detach(), -1))
    y.sum().backward()
    assert s.grad.float().abs().max() < 0.02  # rows of a softmax sum to 1: their gradient is ~0


def test_other_dtypes_and_eval_take_the_composition():
    s = scores((2, 3, 9, 9), padded_keys=2).float()
    assert torch.equal(fused(s, 0.3, 1), composition(s, 0.3, 1))  # fp32: torch's softmax, the same mask
    b = scores((2, 3, 9, 9))
    assert torch.equal(softmax_dropout(b, 0.3, training=False), softmax_dropout(b, 0.0))
    assert_bf16_close(softmax_dropout(b, 0.3, training=False), torch.softmax(b, -1))


def test_the_written_out_attention_draws_its_bf16_mask_in_the_softmax_pass():
    """bf16 attention with FastDropout: the same output as the fp32-path composition on the same scores."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=generator).bfloat16().requires_grad_() for _ in range(3))
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    torch.manual_seed(11)
    ours = written_out_attention(q, k, v, torch.tensor([6, 4]), FastDropout(0.3).train(), 0.5)
    assert "_SoftmaxDropoutBackward" in graph_nodes(ours.grad_fn)  # the compiled pass fed the product
    bias = torch.zeros(key_mask.shape).masked_fill(~key_mask, float("-inf")).bfloat16()
    s = torch.baddbmm(bias.expand(2, 3, 1, 6).reshape(6, 1, 6), q.reshape(6, 6, 4),
                      k.reshape(6, 6, 4).transpose(1, 2), alpha=0.5).view(2, 3, 6, 6)
    torch.manual_seed(11)
    reference = fast_dropout(torch.softmax(s, -1), 0.3) @ v
    torch.testing.assert_close(ours.float(), reference.float(), rtol=0.02, atol=0.02)
    assert torch.equal(ours == 0, reference == 0)


SERIAL_CHILD = """
import sys, torch
from contrastkit import dropout_kernels
from contrastkit.fast_dropout import keep_and_scale
from contrastkit.fast_softmax import softmax_dropout
assert not dropout_kernels.PARALLEL
s = torch.load(sys.argv[1], weights_only=True).requires_grad_()
torch.manual_seed(3)
y = softmax_dropout(s, 0.2)
y.backward(torch.ones_like(y))
from _support import other_loops
torch.save({"y": y.detach(), "grad": s.grad, "kept": keep_and_scale(s.detach(), 0.3, 5), "other": other_loops()},
           sys.argv[2])
"""


def test_without_openmp_the_serial_loops_give_the_same_bits(tmp_path):
    """numba without an OpenMP layer (here: another layer asked for) runs the loops serially: same results."""
    import os
    import subprocess
    import sys

    s = scores((4, 12, 40, 40), padded_keys=5, seed=8)
    torch.save(s, tmp_path / "s.pt")
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])  # _support
    subprocess.run([sys.executable, "-c", SERIAL_CHILD, str(tmp_path / "s.pt"), str(tmp_path / "out.pt")],
                   env=env, check=True, capture_output=True, timeout=300)
    child = torch.load(tmp_path / "out.pt", weights_only=True)
    x = s.clone().requires_grad_()
    torch.manual_seed(3)
    y = softmax_dropout(x, 0.2)
    y.backward(torch.ones_like(y))
    from contrastkit.fast_dropout import keep_and_scale

    assert torch.equal(child["y"], y.detach()) and torch.equal(child["grad"], x.grad)
    assert torch.equal(child["kept"], keep_and_scale(s, 0.3, 5))
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(child["other"], other_loops(), strict=True))


def test_a_forked_child_runs_the_serial_twins(tmp_path):
    """GNU OpenMP does not survive fork(): numba stops a forked child that starts a parallel loop after its
    parent ran one. The child takes the serial loops instead, with the same results. (torch's own
    OpenMP work hangs in such a child too, so the child here only runs torch ops below torch's
    parallel grain, 32,768 elements.)"""
    from contrastkit.fast_dropout import keep_and_scale

    s = scores((2, 12, 20, 20), padded_keys=4, seed=9)  # 9,600 elements
    s32 = s.float()
    torch.manual_seed(1)
    parent = (softmax_dropout(s, 0.2), keep_and_scale(s, 0.3, 5), keep_and_scale(s32, 0.3, 5), *other_loops())

    def child_work():
        from contrastkit import dropout_kernels

        torch.manual_seed(1)
        child = (softmax_dropout(s, 0.2), keep_and_scale(s, 0.3, 5), keep_and_scale(s32, 0.3, 5), *other_loops())
        return {"parallel": dropout_kernels.parallel_ok(), "results": child}

    run_in_forked_child(child_work, tmp_path / "child.pt")  # not stopped by numba, not hung
    child = torch.load(tmp_path / "child.pt", weights_only=True)
    assert child["parallel"] is False
    for ours, theirs in zip(child["results"], parent, strict=True):
        assert torch.equal(ours, theirs)
