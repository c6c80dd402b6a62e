"""A BERT layer's fp32 element-wise work around its dense products, one compiled C++ pass each.

In fp32 on the CPU (the trainer's default where the CPU has no bf16 arithmetic) PyTorch runs a
BERT layer's feed-forward entry and each block's exit as several passes over [tokens, width] blocks:

    entry:  addmm copies the bias over the whole output, then multiplies onto it; GELU reads and writes
            the block again; the backward reads two blocks, writes one, and sums the rows for the bias
    exit:   the same bias copy, dropout, the residual add, the layer norm (Ba et al. 2016); backward
            as many passes again, and the bias's row sums

Each of the exit's passes is bound by memory (a core streams a block through its cache at a few bytes a
cycle), so their count sets their time; GELU's by its erf and exponential. Here the product runs
without its bias (MKL's `mm`) and one AVX-512 loop per block of rows (contrastkit/layer_kernel.cpp)
does the rest:

    entry:  y = GELU(h + b)                                  exact (erf) GELU, as torch's fp32 one
    exit:   s = keep · (h + b) / (1 - p') + x,  y = LayerNorm(s)

with FastDropout's mask for the same seed (redrawn in the backward, not stored), and the bias,
gamma and beta gradients summed per block as the backward goes. Same math as the compositions up
to the order of fp32 sums (tests/test_fused_layer.py). On the 2-core Xeon, one thread, [2,350 × 384]
exit forward + backward 1.48 ms against 2.30 for torch's composition; [2,350 × 1,536] entry 4.35 ms
against 4.72 plus addmm's bias copy; whole Cranfield batch-32 runs +1.6 % (docs/benchmarks.md).

Built on first use like the attention kernel (contrastkit.fused_attention.build: the system's C++
compiler, a cache folder, ctypes). Where there is no compiler, no AVX-512, or
`CONTRASTKIT_FUSED_LAYER=0` is set, the compositions run as written.

@article{ba2016layernorm,
  title={Layer Normalization}, author={Jimmy Lei Ba and Jamie Ryan Kiros and Geoffrey E. Hinton},
  journal={arXiv:1607.06450}, year={2016}
}
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastkit.fast_dropout import _unsigned, draw_seed, drop_threshold, fused_dropout_p
from contrastkit.fast_linear import FastLinear, linear
from contrastkit.fused_attention import _address, _threads, load, switched_on

SOURCE = Path(__file__).with_name("layer_kernel.cpp")


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, i64, i32, f32, u64, u16 = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float,
                                        ctypes.c_uint64, ctypes.c_uint16)
    library.layer_blocks.argtypes = [i64, i64]
    library.layer_blocks.restype = i64
    library.exit_forward_f32.argtypes = [pointer, pointer, pointer, pointer, pointer, f32, i64, i64, u64, u16, f32,
                                         i32, pointer, pointer, pointer]
    library.exit_backward_f32.argtypes = [pointer, pointer, pointer, pointer, i64, i64, u64, u16, f32, i32, pointer,
                                          pointer, pointer]
    library.gelu_forward_f32.argtypes = [pointer, pointer, i64, i64, i32, pointer]
    library.gelu_backward_f32.argtypes = [pointer, pointer, pointer, i64, i64, i32, pointer, pointer]
    for function in (library.exit_forward_f32, library.exit_backward_f32, library.gelu_forward_f32,
                     library.gelu_backward_f32):
        function.restype = None
    return library


def enabled() -> bool:
    """False where CONTRASTKIT_FUSED_LAYER is 0 / false / no (read at every call)."""
    return switched_on("CONTRASTKIT_FUSED_LAYER")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled passes, or None where this CPU lacks AVX-512 or they do not build; built once."""
    return load(SOURCE, _declare, "torch's passes")


class _BiasGeluF32(torch.autograd.Function):
    """y = GELU(h + b) for contiguous fp32 h [n, C] and b [C] on the CPU."""

    @staticmethod
    def forward(ctx, h: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        rows, width = h.shape
        y = torch.empty_like(h)
        library().gelu_forward_f32(_address(h), _address(bias), rows, width, _threads(), _address(y))
        ctx.save_for_backward(h, bias)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        h, bias = ctx.saved_tensors
        rows, width = h.shape
        grad = grad.to(torch.float32).contiguous()
        grad_h = torch.empty_like(h)
        partial = h.new_empty(library().layer_blocks(rows, width), width)
        library().gelu_backward_f32(_address(grad), _address(h), _address(bias), rows, width, _threads(),
                                    _address(grad_h), _address(partial))
        return grad_h, partial.sum(0)


class _BiasDropoutAddNormF32(torch.autograd.Function):
    """y = layer_norm(dropout(h + b, p) + x) for contiguous fp32 h, x [n, D] and b, gamma, beta [D] on the CPU."""

    @staticmethod
    def forward(ctx, h: Tensor, bias: Tensor, x: Tensor, gamma: Tensor, beta: Tensor,  # type: ignore[override]
                eps: float, p: float, seed: int) -> Tensor:
        rows, width = x.shape
        s, y, stats = torch.empty_like(x), torch.empty_like(x), x.new_empty(rows, 2)
        threshold, keep_probability = drop_threshold(p)
        library().exit_forward_f32(_address(h), _address(bias), _address(x), _address(gamma), _address(beta), eps,
                                   rows, width, _unsigned(seed), threshold, 1.0 / keep_probability, _threads(),
                                   _address(s), _address(y), _address(stats))
        ctx.save_for_backward(s, gamma, stats)
        ctx.p, ctx.seed = p, seed
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        s, gamma, stats = ctx.saved_tensors
        rows, width = s.shape
        grad = grad.to(torch.float32).contiguous()
        grad_x, grad_h = torch.empty_like(s), torch.empty_like(s)
        partial = s.new_empty(library().layer_blocks(rows, width), 3, width)
        threshold, keep_probability = drop_threshold(ctx.p)
        library().exit_backward_f32(_address(grad), _address(s), _address(gamma), _address(stats), rows, width,
                                    _unsigned(ctx.seed), threshold, 1.0 / keep_probability, _threads(),
                                    _address(grad_x), _address(grad_h), _address(partial))
        sums = partial.sum(0)
        return grad_h, sums[2], grad_x, sums[0], sums[1], None, None, None


def _plain_fp32_linear(layer: nn.Module, x: Tensor) -> bool:
    """A plain linear layer (no hooks) with an fp32 weight and bias, applied to fp32 rows x [n, in] on the CPU,
    outside autocast."""
    return (type(layer) in (nn.Linear, FastLinear) and not layer._forward_hooks and not layer._forward_pre_hooks
            and layer.bias is not None and layer.weight.dtype == torch.float32 and layer.bias.dtype == torch.float32
            and x.dtype == torch.float32 and x.device.type == "cpu" and layer.weight.device.type == "cpu"
            and x.dim() == 2 and x.shape[0] > 0 and not torch.is_autocast_enabled("cpu"))


def gelu_applies(x: Tensor, layer: nn.Module, exact_gelu: bool) -> bool:
    """Whether `linear_gelu` may run GELU(layer(x)) here: a plain fp32 linear layer on the CPU, the exact GELU."""
    return exact_gelu and _plain_fp32_linear(layer, x) and enabled() and library() is not None


def linear_gelu(x: Tensor, layer: nn.Module) -> Tensor:
    """GELU(x Wᵀ + b): the product by `fast_linear.linear` without the bias, then one pass (check `gelu_applies`)."""
    return _BiasGeluF32.apply(linear(x, layer.weight).contiguous(), layer.bias.contiguous())


def exit_applies(h_in: Tensor, layer: nn.Module, x: Tensor, norm: nn.Module, dropout: nn.Module) -> bool:
    """Whether `dense_exit` may run norm(dropout(layer(h_in)) + x) here: a plain fp32 linear layer on the CPU, an
    affine fp32 layer norm over x's last dimension, a dropout the pass draws (`fused_dropout_p`)."""
    return (_plain_fp32_linear(layer, h_in) and isinstance(norm, nn.LayerNorm) and norm.weight is not None
            and norm.bias is not None and norm.weight.dtype == torch.float32 and norm.bias.dtype == torch.float32
            and x.dtype == torch.float32 and x.dim() == 2 and x.shape == (h_in.shape[0], layer.out_features)
            and tuple(norm.normalized_shape) == (x.shape[1],) and fused_dropout_p(dropout) is not None
            and enabled() and library() is not None)


def dense_exit(h_in: Tensor, layer: nn.Module, x: Tensor, norm: nn.LayerNorm, dropout: nn.Module) -> Tensor:
    """norm(dropout(layer(h_in)) + x): the product without the bias, then one pass (check `exit_applies`)."""
    p = fused_dropout_p(dropout)
    seed = draw_seed() if p > 0.0 else 0  # one draw, as the dropout module's own
    h = linear(h_in, layer.weight).contiguous()
    return _BiasDropoutAddNormF32.apply(h, layer.bias.contiguous(), x.contiguous(), norm.weight.contiguous(),
                                        norm.bias.contiguous(), float(norm.eps), p, seed)
