"""A BERT sub-layer's exit in one compiled pass: dropout, the residual add and the layer norm.

Every BERT layer ends its attention block and its feed-forward block the same way (Devlin et al.
2019; post-norm as in Vaswani et al. 2017):

    y = LayerNorm(dropout(a) + x)        a: the block's output projection, x: the residual stream

Under bf16 autocast on the CPU, a is bf16 and x is fp32 (layer norm runs in fp32), and PyTorch takes
four passes over the rows for it, each reading and writing a [tokens, D] tensor: dropout, the widening
of its bf16 result, the add, the layer norm; backward as many again. Here one loop per block of rows
(contrastkit/layer_norm_kernels.py) does all of it, forward and backward, with FastDropout's mask for
the same seed (the mask is redrawn in the backward, not stored) and the same roundings as that
composition; the result equals `norm(fast_dropout(a) + x)` up to the order of fp32 sums
(tests/test_fast_layer_norm.py).

@article{ba2016layernorm,
  title={Layer Normalization}, author={Jimmy Lei Ba and Jamie Ryan Kiros and Geoffrey E. Hinton},
  journal={arXiv:1607.06450}, year={2016}
}
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from contrastkit import fused_layer
from contrastkit.fast_dropout import (_flat_numpy, _unsigned, compiled_loop, draw_seed, drop_threshold, fused_dropout_p,
                                      kernels)
from contrastkit.fast_linear import dense


class _DropoutAddNorm(torch.autograd.Function):
    """y = layer_norm(dropout(a, p) + x) for contiguous bf16 a, fp32 x [n, D] on the CPU."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, gamma: Tensor, beta: Tensor, eps: float,  # type: ignore[override]
                p: float, seed: int) -> Tensor:
        rows, width = x.shape
        s, y = torch.empty_like(x), torch.empty_like(x)
        means, rstds = x.new_empty(rows), x.new_empty(rows)
        threshold, keep_probability = drop_threshold(p)
        compiled_loop("layer_norm_kernels", "dropout_add_norm_bf16")(
            _flat_numpy(a), _flat_numpy(x), _flat_numpy(gamma), _flat_numpy(beta), np.float32(eps), _flat_numpy(s),
            _flat_numpy(y), means.numpy(), rstds.numpy(), width, _unsigned(seed), np.uint16(threshold),
            np.float32(1.0 / keep_probability))
        ctx.save_for_backward(s, gamma, means, rstds)
        ctx.p, ctx.seed = p, seed
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        s, gamma, means, rstds = ctx.saved_tensors
        rows, width = s.shape
        grad = grad.to(torch.float32).contiguous()
        grad_x, grad_a = torch.empty_like(s), torch.empty(s.shape, dtype=torch.bfloat16)
        blocks = kernels("layer_norm_kernels").blocks(rows, width)
        partial_gamma, partial_beta = s.new_empty(blocks, width), s.new_empty(blocks, width)
        threshold, keep_probability = drop_threshold(ctx.p)
        compiled_loop("layer_norm_kernels", "dropout_add_norm_backward_bf16")(
            _flat_numpy(grad), _flat_numpy(s), _flat_numpy(gamma), means.numpy(), rstds.numpy(), _flat_numpy(grad_x),
            _flat_numpy(grad_a), partial_gamma.numpy(), partial_beta.numpy(), width, _unsigned(ctx.seed),
            np.uint16(threshold), np.float32(1.0 / keep_probability))
        return grad_a, grad_x, partial_gamma.sum(0), partial_beta.sum(0), None, None, None


def dropout_add_layer_norm(a: Tensor, x: Tensor, norm: nn.LayerNorm, dropout: nn.Module) -> Tensor:
    """norm(dropout(a) + x), in one compiled pass where it applies (see the module's docstring).

    The pass takes: a bf16 and x fp32, both [n, D] on the CPU (bf16 autocast's sub-layer output and
    residual stream), an affine fp32 layer norm over D, and a FastDropout in training (or a dropout
    that drops nothing: nn.Dropout out of training or at p = 0, nn.Identity). Anything else runs the
    composition as written.
    """
    p = fused_dropout_p(dropout)
    fused = (p is not None and a.dtype == torch.bfloat16 and x.dtype == torch.float32 and a.device.type == "cpu"
             and x.device.type == "cpu" and a.dim() == 2 and a.shape == x.shape and x.numel() > 0
             and isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (x.shape[1],)
             and norm.weight is not None and norm.bias is not None
             and norm.weight.dtype == torch.float32 and norm.bias.dtype == torch.float32
             and norm.weight.device.type == "cpu")
    if not fused:
        return norm(dropout(a) + x)
    return _DropoutAddNorm.apply(a.contiguous(), x.contiguous(), norm.weight, norm.bias, float(norm.eps), p,
                                 draw_seed() if p > 0.0 else 0)


def dense_dropout_add_layer_norm(h_in: Tensor, layer: nn.Module, x: Tensor, norm: nn.LayerNorm,
                                 dropout: nn.Module) -> Tensor:
    """norm(dropout(layer(h_in)) + x): a BERT block's output projection and exit.

    In fp32 on the CPU the projection runs without its bias and the bias, dropout, residual add and
    layer norm are one C++ pass (contrastkit/fused_layer.py); otherwise `dropout_add_layer_norm` of
    the projection (one compiled pass under bf16 autocast, the composition elsewhere).
    """
    if fused_layer.exit_applies(h_in, layer, x, norm, dropout):
        return fused_layer.dense_exit(h_in, layer, x, norm, dropout)
    return dropout_add_layer_norm(dense(layer, h_in), x, norm, dropout)
