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


import numpy as np
import torch
from torch import Tensor

from contrastkit.fast_dropout import _flat_numpy, _unsigned, compiled_loop, draw_seed, drop_threshold, fast_dropout


def _launch(name: str, tensors: tuple[Tensor, Tensor, Tensor], lengths: Tensor, alpha: float, p: float,
            seed: int) -> None:
    """softmax_kernels' loop `name` on (scores or gradient, probabilities, output), rows the last dimension,
    the rows of text i (the first dimension) valid up to lengths[i]."""
    threshold, keep_probability = drop_threshold(p)
    arrays = [_flat_numpy(t) for t in tensors]
    rows_per_text = tensors[0].numel() // (tensors[0].shape[-1] * len(lengths))
    compiled_loop("softmax_kernels", name)(*arrays, tensors[0].shape[-1], lengths.numpy(), rows_per_text,
                                           np.float32(alpha), _unsigned(seed), np.uint16(threshold),
                                           np.float32(1.0 / keep_probability))


class _SoftmaxDropout(torch.autograd.Function):
    """Y = dropout(softmax(alpha · S, -1) over each row's valid keys, p) for contiguous bf16 S on the CPU."""

    @staticmethod
    def forward(ctx, scores: Tensor, lengths: Tensor, alpha: float, p: float,  # type: ignore[override]
                seed: int) -> Tensor:
        probs = torch.empty_like(scores)
        # a p below half a level of the mask drops nothing (drop_threshold): the loop writes no copy then
        out = torch.empty_like(scores) if drop_threshold(p)[0] > 0 else probs
        _launch("softmax_dropout_bf16", (scores, probs, out), lengths, alpha, p, seed)
        ctx.save_for_backward(probs)
        ctx.lengths, ctx.alpha, ctx.p, ctx.seed = lengths, alpha, p, seed
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        grad_scores = torch.empty_like(probs)
        _launch("softmax_dropout_backward_bf16", (grad.contiguous(), probs, grad_scores), ctx.lengths, ctx.alpha,
                ctx.p, ctx.seed)
        return grad_scores, None, None, None, None


def key_padding(lengths: Tensor, width: int) -> Tensor:
    """[b] key counts → [b, width] mask, True at the padding keys (position ≥ the text's length)."""
    return torch.arange(width, device=lengths.device)[None, :] >= lengths.to(torch.long)[:, None]


def softmax_dropout(scores: Tensor, p: float = 0.0, training: bool = True, alpha: float = 1.0,
                    key_lengths: Tensor | None = None) -> Tensor:
    """fast_dropout(softmax(alpha · scores, dim=-1), p, training), in one pass for bf16 on the CPU.

    key_lengths [b] (scores [b, ..., width]): only the first key_lengths[i] entries of text i's rows
    take part, the rest are padding keys, probability 0 (softmax over scores with -inf there; every
    text needs one key). alpha > 0 scales the scores first (attention's 1/√d). Other dtypes and devices
    take exactly that composition.
    """
    if alpha <= 0.0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if key_lengths is not None and (scores.dim() < 2 or key_lengths.shape != (scores.shape[0],)):
        raise ValueError(f"key_lengths needs one count per text (the first dimension) of scores "
                         f"{tuple(scores.shape)}, got shape {tuple(key_lengths.shape)}")
    p = p if training else 0.0
    fused = scores.device.type == "cpu" and scores.dtype == torch.bfloat16 and scores.numel() > 0
    if not fused or not 0.0 <= p < 1.0 or drop_threshold(p)[1] == 0.0:
        if alpha != 1.0:
            scores = scores * alpha
        if key_lengths is not None:
            padding = key_padding(key_lengths.to(scores.device), scores.shape[-1])
            scores = scores.masked_fill(padding.view(len(key_lengths), *[1] * (scores.dim() - 2), -1), float("-inf"))
        return fast_dropout(torch.softmax(scores, dim=-1), p, training)
    if key_lengths is None:
        lengths = torch.full((1,), scores.shape[-1], dtype=torch.int64)
    else:
        lengths = key_lengths.detach().to("cpu", torch.int64).contiguous()
        if int(lengths.min()) < 1:
            raise ValueError(f"key_lengths needs a count >= 1 for every text, got {tuple(lengths.tolist())}")
    return _SoftmaxDropout.apply(scores.contiguous(), lengths, alpha, p, draw_seed() if p > 0.0 else 0)
