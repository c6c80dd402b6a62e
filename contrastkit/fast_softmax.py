"""Attention probabilities in bf16 on the CPU: softmax and their dropout in one compiled pass.

torch's bf16 softmax on the CPU is slow on rows whose length is not a multiple of 32 (its vectorised
loop leaves the rest of a row to scalar code: rows of 60 took 1.81 ms against 0.43 ms in fp32), and
the packed forward's slabs are as wide as their longest text. Dropout on the probabilities is then
a second pass over the [b, h, T, T] block, forward and backward. Here one loop per row
(contrastkit/softmax_kernels.py) takes the max, the exponentials and their sum in fp32, and writes
the probabilities in bf16 and their dropped-out copy:

    P = softmax(S)  (by rows, the last dimension)      Y = keep · P / (1 - p')

with the mask `fast_dropout` draws for the same seed (Y equals `fast_dropout(torch.softmax(S, -1))`
up to the last bit of an exponential, tests/test_fast_softmax.py). The backward is one loop too:

    G = keep · dY / (1 - p')      dS = P · (G - Σ_row G · P)

(softmax's gradient, as torch computes it). P is kept for the backward, the mask is redrawn from
the seed. The loops share the rows among numba's OpenMP threads, as many as torch's.

@inproceedings{bridle1990softmax,
  title={Training Stochastic Model Recognition Algorithms as Networks can Lead to Maximum Mutual
         Information Estimation of Parameters},
  author={John S. Bridle}, booktitle={NeurIPS}, year={1990}
}
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from contrastkit.fast_dropout import _flat_numpy, _unsigned, compiled_loop, draw_seed, drop_threshold, fast_dropout


@functools.cache
def _kernels():
    """contrastkit.softmax_kernels, imported on first use (numba loads only when this runs)."""
    from contrastkit import softmax_kernels

    return softmax_kernels


def _launch(name: str, tensors: tuple[Tensor, Tensor, Tensor], p: float, seed: int) -> None:
    """softmax_kernels' loop `name` on (scores or gradient, probabilities, output), rows the last dimension."""
    threshold, keep_probability = drop_threshold(p)
    arrays = [_flat_numpy(t) for t in tensors]
    compiled_loop(_kernels(), name)(*arrays, tensors[0].shape[-1], _unsigned(seed), np.uint16(threshold),
                                    np.float32(1.0 / keep_probability))


class _SoftmaxDropout(torch.autograd.Function):
    """Y = dropout(softmax(S, -1), p) for contiguous bf16 S on the CPU (p = 0: Y = softmax(S, -1))."""

    @staticmethod
    def forward(ctx, scores: Tensor, p: float, seed: int) -> Tensor:  # type: ignore[override]
        probs = torch.empty_like(scores)
        # a p below half a level of the mask drops nothing (drop_threshold): the loop writes no copy then
        out = torch.empty_like(scores) if drop_threshold(p)[0] > 0 else probs
        _launch("softmax_dropout_bf16", (scores, probs, out), p, seed)
        ctx.save_for_backward(probs)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        grad_scores = torch.empty_like(probs)
        _launch("softmax_dropout_backward_bf16", (grad.contiguous(), probs, grad_scores), ctx.p, ctx.seed)
        return grad_scores, None, None


def softmax_dropout(scores: Tensor, p: float = 0.0, training: bool = True) -> Tensor:
    """fast_dropout(torch.softmax(scores, dim=-1), p, training), in one pass for bf16 on the CPU.

    Other dtypes and devices take exactly that composition.
    """
    p = p if training else 0.0
    fused = scores.device.type == "cpu" and scores.dtype == torch.bfloat16 and scores.numel() > 0
    if not fused or not 0.0 <= p < 1.0 or drop_threshold(p)[1] == 0.0:
        return fast_dropout(torch.softmax(scores, dim=-1), p, training)
    return _SoftmaxDropout.apply(scores.contiguous(), p, draw_seed() if p > 0.0 else 0)
