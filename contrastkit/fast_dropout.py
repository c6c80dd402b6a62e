"""Dropout for CPU training: Bernoulli masks like `nn.Dropout`, drawn and applied in one pass.

`torch.nn.functional.dropout` on a CPU tensor draws one 32-bit Mersenne-Twister number per element
and multiplies by a bool mask (a slow mixed-dtype multiply). In a MiniLM training step on the 2-core
CPU here dropout took 17 % of the step, 23 % with gradient caching (bench/profile_step.py).

Here every call draws one 64-bit seed from torch's default CPU generator; the element's uniform
number is then 16 bits of a counter-based generator, SplitMix64 (Steele, Lea & Flood 2014) of
seed + (w + 1)·γ for 64-bit word w = i // 4, and one compiled loop (numba) draws, compares and
scales:

    u ~ Uniform{0, ..., 65535}    keep = u >= round(p · 65536)    y = keep · x / (1 - p')

with p' = round(p · 65536) / 65536 the probability actually drawn (|p' - p| <= 2^-17), so that
E[y] = x exactly. The mask is never stored: the backward redraws it from the seed, so dropout keeps
no [B, H, T, T] bool tensor for the attention probabilities. On the 2-core CPU here
(bench/dropout_kernel.py, both threads) the forward runs 13-18x as fast as this module's previous
kernel (a mask from torch's generator, then `where` and `mul`), forward and backward 7-8.5x;
16-60x torch's.

`torch.manual_seed` makes runs repeat, and restoring the generator's state (the gradient cache's
second pass) redraws the same seeds, so the same masks. A thread can draw from a generator of its
own instead (`seeds_from`: the trainer's parallel streams, contrastkit/train/streams.py), so that
threads running at once do not take each other's seeds in an order that changes from run to run.
The loop runs on as many threads as torch (numba's OpenMP layer, where it loads); its result does
not depend on the number of threads.
bf16, fp32 and fp64 tensors take the compiled loop; other dtypes get the same mask applied by
torch. On other devices (CUDA's fused dropout is already fast) and outside training, `nn.Dropout`
runs as is.

@inproceedings{steele2014splitmix,
  title={Fast Splittable Pseudorandom Number Generators},
  author={Guy L. Steele Jr. and Doug Lea and Christine H. Flood},
  booktitle={OOPSLA}, year={2014}
}
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

_LEVELS = 1 << 16  # 16-bit uniform numbers: four per 64-bit word


def drop_threshold(p: float) -> tuple[int, float]:
    """(threshold t, keep probability 1 - t / 2^16) for dropout probability p, t = round(p · 2^16)."""
    threshold = round(p * _LEVELS)
    return threshold, 1.0 - threshold / _LEVELS


_this_thread = threading.local()


@contextlib.contextmanager
def seeds_from(seed: int) -> Iterator[None]:
    """Within the block, this thread's `draw_seed()` reads a generator of its own, seeded with `seed`.

    Other threads, and this one after the block, draw from torch's default generator as before.
    """
    previous = getattr(_this_thread, "generator", None)
    _this_thread.generator = torch.Generator().manual_seed(seed % (1 << 64))
    try:
        yield
    finally:
        _this_thread.generator = previous


def draw_seed(generator: torch.Generator | None = None) -> int:
    """One 64-bit seed from `generator` (when None: this thread's `seeds_from` generator, else torch's
    default CPU generator), as a signed int64.

    Signed, so that it passes wherever torch takes an int64 (torch.profiler records the arguments
    of autograd functions); the loops read its two's-complement bits as unsigned.
    """
    if generator is None:
        generator = getattr(_this_thread, "generator", None)
    return int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), None, generator=generator))


def _unsigned(seed: int) -> np.uint64:
    return np.uint64(seed % (1 << 64))


@functools.cache
def kernels(module: str = "dropout_kernels"):
    """contrastkit's compiled-loop module `module` (dropout_kernels, softmax_kernels, layer_norm_kernels,
    gelu_kernels, layout_kernels), imported on first use: numba loads only when a loop runs."""
    return importlib.import_module(f"contrastkit.{module}")


def compiled_loop(module: str, name: str):
    """The compiled loop `name` of kernel module `module` (see `kernels`), ready to call.

    The parallel loop on as many threads as torch's intra-op pool (`torch.set_num_threads`), or its
    serial twin where the parallel one may not run (no OpenMP layer for numba, or a forked child;
    `dropout_kernels.kernel`): there numba is not asked for threads, which would start its fallback
    thread pool for nothing, or stop the forked child.
    """
    import numba

    dropout_kernels = kernels()
    if dropout_kernels.parallel_ok():
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
    return dropout_kernels.kernel(kernels(module), name)


def _flat_numpy(t: Tensor) -> np.ndarray:
    """A contiguous CPU tensor's memory as a flat numpy array (bf16 as its uint16 bits)."""
    t = t.detach().reshape(-1)
    # through int16: torch.uint16 came in torch 2.3
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, seed: int | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """A bool mask of `shape`, each element True (kept) with probability 1 - p' (see drop_threshold).

    Element i (row-major) reads 16-bit lane i of the SplitMix64 stream from `seed` (drawn from
    `generator` when None): the very mask `fast_dropout` applies after drawing the same seed.
    """
    seed = draw_seed(generator) if seed is None else seed
    threshold, _ = drop_threshold(p)
    out = np.empty(math.prod(shape), dtype=np.uint8)
    compiled_loop("dropout_kernels", "keep_lanes")(out, _unsigned(seed), np.uint16(threshold))
    return torch.from_numpy(out).view(torch.bool).view(shape)


def keep_and_scale(x: Tensor, p: float, seed: int) -> Tensor:
    """where(keep_mask(x.shape, p, seed), x, 0) · 1 / (1 - p'), in one pass; no graph (see fast_dropout)."""
    threshold, keep_probability = drop_threshold(p)
    scale = 1.0 / keep_probability
    # the scale in x's precision (bf16: fp32, the precision torch multiplies bf16 in)
    name, scalar = {torch.float64: ("keep_and_scale_float", np.float64),
                    torch.float32: ("keep_and_scale_float", np.float32),
                    torch.bfloat16: ("keep_and_scale_bf16", np.float32)}.get(x.dtype, (None, None))
    if name is None:  # float16 and others: the same mask, applied by torch
        return torch.where(keep_mask(x.shape, p, seed), x, 0).mul_(scale)
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    compiled_loop("dropout_kernels", name)(_flat_numpy(x), _flat_numpy(out), _unsigned(seed), np.uint16(threshold),
                                           scalar(scale))
    return out


class _KeepAndScale(torch.autograd.Function):
    """y = keep_and_scale(x, p, seed); the gradient is the same map of the output's gradient (mask redrawn)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:  # type: ignore[override]
        ctx.p, ctx.seed = p, seed
        return keep_and_scale(x, p, seed)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # the map is linear and its own adjoint: applied as itself, so a second derivative goes through it too
        return _KeepAndScale.apply(grad, ctx.p, ctx.seed), None, None


def draws_from_torch(module: nn.Module) -> bool:
    """Whether `module` is a dropout that draws its masks from torch's generator when training: an
    nn.Dropout other than FastDropout with p > 0 (whatever its mode now)."""
    return isinstance(module, nn.Dropout) and not isinstance(module, FastDropout) and module.p > 0


def fused_dropout_p(dropout: nn.Module) -> float | None:
    """The probability a fused pass that draws FastDropout's masks drops with in place of `dropout`: its p
    for a FastDropout in training, 0 for a dropout that drops nothing (nn.Dropout out of training or at
    p = 0, nn.Identity), None where the pass cannot stand in (torch's own mask, p that drops everything)."""
    if not isinstance(dropout, nn.Dropout) or not dropout.training or dropout.p == 0.0:
        return 0.0 if isinstance(dropout, (nn.Dropout, nn.Identity)) else None
    if not isinstance(dropout, FastDropout) or not 0.0 < dropout.p < 1.0 or drop_threshold(dropout.p)[1] == 0.0:
        return None
    return dropout.p


def fast_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout of x with probability p (inverted: kept elements scaled by 1 / (1 - p')).

    The CPU path of this module; on any other device, `torch.nn.functional.dropout`.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return nn.functional.dropout(x, p, training)
    _, keep_probability = drop_threshold(p)
    if keep_probability == 0.0:  # p within 2^-17 of 1: everything dropped
        return x * 0.0
    return _KeepAndScale.apply(x, p, draw_seed())


class FastDropout(nn.Dropout):
    """`nn.Dropout` with CPU masks drawn by `keep_mask`; keeps `p`, so code that reads `.p` still works.

    Always out of place: `inplace=True` is accepted and ignored (the result is the same tensor values).
    """

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every `nn.Dropout` inside `model` by a FastDropout of the same p; return how many.

    Dropout modules hold no weights, so the model's state dict, and what it saves, do not change.
    The compiled loops load here (compiled on a first run), not in the first training step.
    """
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p).train(child.training))
                replaced += 1
    if replaced:
        kernels()
    return replaced
