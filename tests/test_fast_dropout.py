"""FastDropout must draw Bernoulli(1 - p) masks (each 16-bit lane, independently), scale to keep E[y] = x,
back-propagate through the same mask, replay under a restored RNG, and leave the model's weights alone."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from contrastkit.dropout_kernels import splitmix_words
from contrastkit.encoder import Encoder
from contrastkit.fast_dropout import (FastDropout, _KeepAndScale, drop_threshold, fast_dropout, keep_and_scale,
                                      keep_mask, use_fast_dropout)

N = 1 << 20


def within_sigmas(count: int, n: int, q: float, sigmas: float = 6.0) -> bool:
    return abs(count - n * q) <= sigmas * math.sqrt(n * q * (1 - q))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02, 0.9])
def test_each_lane_keeps_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask((N,), p)
    assert keep.dtype == torch.bool and keep.shape == (N,)
    _, q = drop_threshold(p)
    assert abs(q - (1 - p)) <= 2 ** -17
    # the four 16-bit lanes of each 64-bit word: a lane that read a sign bit would keep half or all
    for lane in range(4):
        assert within_sigmas(int(keep[lane::4].sum()), N // 4, q), lane
    # neighbours independent, within a word and across words: both kept with probability q^2
    for first, second in ((keep[0::2], keep[1::2]), (keep[1:-1:2], keep[2::2])):
        assert within_sigmas(int((first & second).sum()), len(first), q * q)
    # the words of one block (2,048 words, 8,192 elements) do not repeat in the next
    assert not torch.equal(keep[:8192], keep[8192:16384])


def test_the_generator_is_splitmix64():
    """The words are SplitMix64's (Steele, Lea & Flood 2014): its published first outputs from seed 0."""
    words = np.empty(3, dtype=np.uint64)
    splitmix_words(words, np.uint64(0), 0)
    assert [int(w) for w in words] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    # word w of a call is word w of the stream, whatever block it falls in
    later = np.empty(2, dtype=np.uint64)
    splitmix_words(later, np.uint64(0), 1)
    assert [int(w) for w in later] == [int(w) for w in words[1:]]
    # element i keeps where its 16-bit lane (little-endian within the word) >= round(p · 2^16)
    seed, threshold = 12345, drop_threshold(0.3)[0]
    stream = np.empty(5000, dtype=np.uint64)
    splitmix_words(stream, np.uint64(seed), 0)
    lanes = [(int(w) >> (16 * k)) & 0xFFFF for w in stream for k in range(4)]
    expected = torch.tensor([u >= threshold for u in lanes[:19_999]])
    assert torch.equal(keep_mask((19_999,), 0.3, seed=seed), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masks_do_not_depend_on_the_thread_count(dtype):
    """The loops share blocks of 8,192 elements among threads; each block draws its own stretch of the stream."""
    x = torch.randn(100_003, generator=torch.Generator().manual_seed(0)).to(dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((keep_mask(x.shape, 0.2, seed=7), keep_and_scale(x, 0.2, 7)))
    finally:
        torch.set_num_threads(threads)
    for mask, y in results[1:]:
        assert torch.equal(mask, results[0][0]) and torch.equal(y, results[0][1])
    assert torch.equal(results[0][1] != 0, results[0][0])  # the values follow that mask


def test_odd_shapes_and_the_threshold_edges():
    torch.manual_seed(1)
    assert keep_mask((3, 5, 7), 0.3).shape == (3, 5, 7)
    assert keep_mask((0,), 0.3).shape == (0,)
    assert drop_threshold(0.1) == (6554, 1 - 6554 / 65536)
    assert keep_mask((1000,), 1e-6).all()  # below half a level: nothing is dropped (p' = 0)


def test_output_is_zero_or_scaled_input_and_unbiased():
    torch.manual_seed(2)
    x = torch.rand(N) + 0.5
    y = fast_dropout(x, 0.1)
    _, q = drop_threshold(0.1)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / q)
    ones = fast_dropout(torch.ones(N, dtype=torch.float64), 0.1)
    assert abs(float(ones.mean()) - 1.0) < 6 * math.sqrt(0.1 / 0.9 / N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_fused_pass_equals_where_and_multiply_bit_for_bit(dtype):
    """One compiled pass gives what torch gives for where(keep, x, 0) · scale, rounding included."""
    torch.manual_seed(5)
    x = (torch.randn(3, 70_001) * 100).to(dtype)
    x[0, :7] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-30, -1e-30, 65504.0]).to(dtype)
    x = x.t()  # not contiguous
    _, q = drop_threshold(0.1)
    keep = keep_mask(x.shape, 0.1, seed=99)
    assert torch.equal(keep_and_scale(x, 0.1, 99), torch.where(keep, x, 0).mul_(1 / q))
    assert keep_and_scale(x, 0.1, 99).dtype == dtype


def test_gradient_goes_through_the_same_mask():
    torch.manual_seed(3)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _KeepAndScale.apply(t, 0.4, 777), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _KeepAndScale.apply(t, 0.4, 777) ** 2, (x,))
    x = torch.rand(4096, requires_grad=True)
    y = fast_dropout(x + 1.0, 0.25)
    assert y.grad_fn.saved_tensors == ()  # no mask kept: the backward redraws it from the seed
    grad = torch.randn(4096)
    y.backward(grad)
    _, q = drop_threshold(0.25)
    torch.testing.assert_close(x.grad, torch.where(y != 0, grad / q, 0.0))
    # bf16: the backward redraws the forward's mask
    x = torch.rand(4096, requires_grad=True)
    y = fast_dropout((x + 1.0).bfloat16(), 0.25)
    y.backward(grad.bfloat16())
    torch.testing.assert_close(x.grad, torch.where(y != 0, grad.bfloat16() / q, 0.0).float())


def test_runs_under_the_profiler_recording_shapes():
    """The seed is an int64: torch.profiler(record_shapes=True) records every autograd function's arguments."""
    torch.manual_seed(6)
    x = torch.randn(64, requires_grad=True)
    with torch.profiler.profile(record_shapes=True):
        for _ in range(8):  # about half the seeds are negative
            fast_dropout(x, 0.1).sum().backward()
    assert keep_mask((10,), 0.1, seed=-1).shape == (10,)


def test_same_seed_same_mask_and_a_restored_state_replays():
    torch.manual_seed(4)
    first = keep_mask((999,), 0.1)
    state = torch.get_rng_state()
    second = keep_mask((999,), 0.1)
    torch.set_rng_state(state)
    assert torch.equal(second, keep_mask((999,), 0.1))
    assert not torch.equal(first, second)
    torch.manual_seed(4)
    assert torch.equal(first, keep_mask((999,), 0.1))


def test_identity_outside_training_or_at_p_zero():
    x = torch.randn(10)
    assert fast_dropout(x, 0.5, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros(10))
    module = FastDropout(0.5).eval()
    assert module(x) is x


def test_the_model_keeps_its_weights_and_p_and_eval_outputs(tiny_model_dir):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    before = {n: m.p for n, m in encoder.named_modules() if type(m) is nn.Dropout}
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    texts = ["lift and drag of a wing", "heat transfer in a nozzle"]
    encoder.eval()
    reference = encoder.embed(texts)
    assert use_fast_dropout(encoder) == len(before) > 0
    after = {n: m.p for n, m in encoder.named_modules() if isinstance(m, nn.Dropout)}
    assert after == before and all(type(m) is not nn.Dropout for m in encoder.modules())
    assert encoder.state_dict().keys() == state.keys()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(encoder.embed(texts), reference, atol=0, rtol=0)
    encoder.train()
    torch.manual_seed(0)
    assert not torch.allclose(encoder.embed(texts), reference)  # dropout is really on in training
    assert use_fast_dropout(encoder) == 0  # nothing left to replace


def test_the_kernels_leave_torchs_thread_count_as_the_user_set_it():
    """numba's OpenMP pool set the process's thread count to every core when a kernel module loaded:
    OMP_NUM_THREADS=1 (torchrun sets it per rank) read 2 after `import contrastkit.encoder`."""
    code = ("import torch; before = torch.get_num_threads()\n"
            "import contrastkit.encoder, contrastkit.gelu_kernels, contrastkit.softmax_kernels\n"
            "from contrastkit.fast_dropout import keep_and_scale\n"
            "keep_and_scale(torch.randn(512, 512), 0.1, 5)\n"
            "print(before, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"]
