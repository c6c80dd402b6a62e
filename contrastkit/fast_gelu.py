"""BERT's feed-forward entry, GELU(x W₁ᵀ + b₁), with the bias and the activation in one compiled pass.

Under bf16 autocast on the CPU, torch's `addmm` first copies the bias broadcast over the whole
[tokens, 4D] output and then accumulates the product onto it; GELU reads that block and writes
another; its backward reads two and writes one (torch's bf16 `gelu_backward` took 660 µs on
[2,048 × 1,536] here, twice its forward; this pass's backward 490), and `addmm`'s backward sums the
rows once more for the bias gradient. Here the product runs without the bias and one loop per block of rows
(contrastkit/gelu_kernels.py) adds the bias in fp32 and applies the exact GELU; the backward loop
computes GELU' at the same points and sums the bias gradient as it goes. Same math as the
composition up to bf16 rounding (the composition rounds h + b to bf16 before the GELU; this pass
does not): tests/test_fast_gelu.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit import fused_layer
from contrastkit.fast_dropout import _flat_numpy, compiled_loop, kernels
from contrastkit.fast_linear import FastLinear, dense, linear


class _BiasGelu(torch.autograd.Function):
    """y = GELU(h + b) for contiguous bf16 h [n, C] and an fp32 bias [C] on the CPU."""

    @staticmethod
    def forward(ctx, h: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        y = torch.empty_like(h)
        compiled_loop("gelu_kernels", "bias_gelu_bf16")(_flat_numpy(h), _flat_numpy(bias), _flat_numpy(y), h.shape[1])
        ctx.save_for_backward(h, bias)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        h, bias = ctx.saved_tensors
        grad = grad.to(torch.bfloat16).contiguous()
        grad_h = torch.empty_like(h)
        partial = bias.new_empty(kernels("gelu_kernels").blocks(*h.shape), h.shape[1])
        compiled_loop("gelu_kernels", "bias_gelu_backward_bf16")(
            _flat_numpy(grad), _flat_numpy(h), _flat_numpy(bias), _flat_numpy(grad_h), partial.numpy(), h.shape[1])
        return grad_h, partial.sum(0)


def _exact_gelu(act: nn.Module) -> bool:
    """Whether `act` is the exact (erf) GELU as a plain module: torch's nn.GELU, or Hugging Face's GELUActivation."""
    if act._forward_hooks or act._forward_pre_hooks:
        return False
    if type(act) is nn.GELU:
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def linear_gelu(x: Tensor, layer: nn.Module, act: nn.Module) -> Tensor:
    """act(layer(x)): the bias and an exact GELU in one compiled pass under bf16 autocast on the CPU.

    Taken for a plain nn.Linear (or the trainers' FastLinear, the same layer) with an fp32 bias whose
    product comes out bf16 [n, C] (autocast); any other case runs `act(dense(layer, x))` as it is.
    In fp32 on the CPU the bias and GELU are one C++ pass instead (contrastkit/fused_layer.py).
    """
    if fused_layer.gelu_applies(x, layer, _exact_gelu(act)):
        return fused_layer.linear_gelu(x, layer)
    fused = (x.device.type == "cpu" and x.dim() == 2 and torch.is_autocast_enabled("cpu")
             and torch.get_autocast_dtype("cpu") == torch.bfloat16 and type(layer) in (nn.Linear, FastLinear)
             and not layer._forward_hooks and not layer._forward_pre_hooks and layer.bias is not None
             and layer.bias.dtype == torch.float32 and _exact_gelu(act))
    if not fused:
        return act(dense(layer, x))
    h = linear(x, layer.weight)
    if h.dtype != torch.bfloat16:
        return act(h + layer.bias)
    return _BiasGelu.apply(h.contiguous(), layer.bias)
