"""Linear layers through oneDNN's fp32 matrix multiply, on CPUs where torch's default one is slow.

On x86, torch multiplies fp32 matrices with Intel's MKL, and MKL runs its AVX2 kernels on AMD
processors. oneDNN, which torch also ships (its bf16 and fused-inference matmuls), picks kernels by
instruction set. On the 2-core AMD Zen 5 here (AVX-512; bench/linear_kernel.py) MiniLM's layer
shapes ran at 190-220 GFLOP/s through `F.linear` and at 430-490 (forward, input gradient) and
310-400 (weight gradient) through oneDNN.

The arithmetic is fp32 either way, IEEE products and sums in another order: outputs differ from
torch's in the last bits, as any two BLAS libraries' do (tests/test_fast_linear.py; no bf16 or
TF32 shortcut, which oneDNN only takes when asked). For y = x Wᵀ + b:

    forward:          y  = x Wᵀ + b            (oneDNN, W as stored)
    input gradient:   dx = dy W                (oneDNN, Wᵀ as a strided view)
    weight gradient:  dW = dyᵀ x, or (xᵀ dy)ᵀ   (oneDNN, strided views; it copies the transposed
                                               first operand into rows, so the narrower one goes first)
    bias gradient:    db = Σ_rows dy

`onednn_linear_enabled` decides where: a CPU whose vendor is AMD and which has AVX-512 (where it
was measured), torch built with oneDNN; the environment variable CONTRASTKIT_ONEDNN_LINEAR=1 or 0
overrides (the tests pin 0, so that they compute the same on every machine). `linear` falls back
to `F.linear` for anything else: other devices and dtypes, bf16 autocast (already oneDNN).
The packed forward (contrastkit/packing.py) calls it for every dense layer, training and encoding;
the trainers make the model's other `nn.Linear` layers FastLinear (`use_fast_linear`), for the
padded forward of models that do not pack.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.devices import cpu_flags, cpu_vendor

# oneDNN keeps a compiled primitive for every distinct shape it has multiplied, 1,024 of them by
# default, and the packed forward's row count differs from slab to slab: at that capacity 6 training
# steps of the default model peaked 0.3 GiB above torch's matmul (2.68 against 2.37 GiB at debian
# batch 64, bench/linear_kernel.py), encoding 0.2 GB above; at 64, 0.1 above (2.47) and as fast
# (step 1.22-1.24 s against 1.25-1.27; at 0, 4 % slower). oneDNN reads it at its first primitive,
# so it is set on import; a user's own setting wins.
PRIMITIVE_CACHE_CAPACITY = "64"
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE_CAPACITY)
# ideep, the layer between torch and oneDNN that bf16 products and oneDNN's fp32 linear go through,
# keeps its own cache of prepared products, also 1,024 shapes by default, each holding a few MB
# (about 2.4 MB at the packed forward's bf16 shapes): 120 no-grad forwards of 32 texts of distinct
# lengths grew live memory by 0.29 GB, and capping it took the peak of a gradient-cached bf16 step of
# batch 4,096 from 1.81 to 1.42-1.44 GB (bench/memory_vs_batch.py; docs/training.md). Shapes repeat
# within a forward (the six layers), hardly from slab to slab, so a small cache is as fast (a Cranfield
# step 0.59-0.63 s at capacities 16, 64 and 1,024, alternating, the machine's drift).
# Read at ideep's first product, so set on import too; a user's own setting wins.
IDEEP_CACHE_CAPACITY = "32"
os.environ.setdefault("LRU_CACHE_CAPACITY", IDEEP_CACHE_CAPACITY)


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x weightᵀ + bias by oneDNN; x [m, k] and weight [n, k] may be strided views."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b with the forward and both gradients multiplied by oneDNN (x is [m, k])."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t())
        if ctx.needs_input_grad[1]:
            # oneDNN copies a transposed input operand into rows: transpose the narrower of dy and x
            if weight.shape[0] > weight.shape[1]:
                grad_weight = _onednn(x.t(), grad.t()).t()  # (xᵀ dy)ᵀ
            else:
                grad_weight = _onednn(grad.t(), x.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


@functools.lru_cache(maxsize=1)
def onednn_linear_enabled() -> bool:
    """Whether `linear` multiplies fp32 on the CPU through oneDNN (see the module's docstring).

    Read once per process. CONTRASTKIT_ONEDNN_LINEAR=1 or 0 overrides the rule.
    """
    available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    override = os.environ.get("CONTRASTKIT_ONEDNN_LINEAR")
    if override is not None:
        return available and override.strip().lower() in ("1", "true", "yes")
    return available and cpu_vendor() == "AuthenticAMD" and "avx512f" in cpu_flags()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias), through oneDNN for fp32 on the CPU where `onednn_linear_enabled`."""
    if (x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" or x.numel() == 0
            or torch.is_autocast_enabled("cpu") or not onednn_linear_enabled()):
        return F.linear(x, weight, bias)
    if x.dim() == 2:
        return _OneDNNLinear.apply(x, weight, bias)
    shape = x.shape
    return _OneDNNLinear.apply(x.reshape(-1, shape[-1]), weight, bias).view(*shape[:-1], weight.shape[0])


class FastLinear(nn.Linear):
    """`nn.Linear` whose forward is `linear`: oneDNN for fp32 on the CPU where enabled, else F.linear."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def use_fast_linear(model: nn.Module) -> int:
    """Make every plain `nn.Linear` inside `model` a FastLinear; return how many.

    The module's class changes, nothing else: same parameters, state dict and saved model. Subclasses
    (adapters, projections with their own forward) are left alone. The trainers call it, so that
    models without the packed forward (contrastkit/packing.py) get the faster dense layers as well.
    """
    changed = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear
            changed += 1
    return changed


def dense(module: nn.Module, x: Tensor) -> Tensor:
    """module(x) for a plain `nn.Linear` by `linear`; any other module (adapters, hooks) as it is."""
    if type(module) is not nn.Linear or module._forward_hooks or module._forward_pre_hooks:
        return module(x)
    return linear(x, module.weight, module.bias)
