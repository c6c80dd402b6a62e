"""The optimizer step both trainers share: fused AdamW, and one gradient norm that both checks and clips.

A batch-64 training step of MiniLM on the 2-core CPU here spends 3-4 s in the encoder; the
optimizer step after it took another 0.2 s, now 43 ms (bench/optimizer_step.py):

- torch's default (foreach) AdamW makes a dozen passes over the 22.7 M parameters: 91-113 ms;
  the fused kernel makes one: 18 ms (Hugging Face's Trainer, so sentence-transformers, uses it too);
- checking each gradient for inf/nan on its own took 81-103 ms (a small reduction and a Python
  round trip per tensor). The global norm that clipping computes anyway is finite exactly when
  every gradient is (or when their squares overflow, which is as bad), so one norm does both;
- that norm by BLAS dot products (`gradient_norm`): 2.4 against 10-11 ms on the Xeon of 2026-11-29,
  where the whole step (AdamW 16 ms, zeroing the word embeddings' gradient 3 ms) went from 29-30 to
  19 ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor


def adamw(param_groups: Iterable[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel on CPU and CUDA (the same update, one pass over the parameters)."""
    return torch.optim.AdamW(param_groups, lr=lr, fused=device.type in ("cpu", "cuda"))


def gradient_norm(params: Iterable[torch.nn.Parameter]) -> Tensor:
    """The L2 norm of all gradients together (0 when there are none); inf or nan when any gradient is.

    Dense fp32 gradients on the CPU: √(Σ_tensors g · g), each g · g a BLAS dot product with fp32 sums,
    2.4-4.5 against 10-11 ms for MiniLM's 22.7 M gradients on the 2-core Xeon here (torch's norm sums
    fp32 in float64 on the CPU), within 4e-6 of it; inf or nan as torch's is (its fp32 squares overflow
    past a norm of about 1e19 as these do). Other gradients: torch's norm. No value is read on the host.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if all(g.device.type == "cpu" and g.dtype == torch.float32 and g.layout == torch.strided and g.is_contiguous()
           for g in grads):
        flat = [g.view(-1) for g in grads]
        return torch.stack([torch.dot(f, f) for f in flat]).sum().sqrt()
    return torch.nn.utils.get_total_norm(grads)


class StepResult(NamedTuple):
    """What `step_if_finite` did, as 0-dim tensors on the gradients' device (read them with `read_scalars`)."""

    skipped: Tensor  # bool: the loss or a gradient was not finite, so the parameters did not move
    grad_norm: Tensor  # the norm of all gradients before clipping


def step_if_finite(optimizer: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float | None) -> StepResult:
    """Clip (if `max_grad_norm`) and step when the loss and all gradients are finite.

    A step with a non-finite loss or gradient is skipped and its gradients left as they were for the
    caller to zero, as a mixed-precision loss scaler would; a step taken leaves them clipped. With a
    fused optimizer (`adamw`) the decision is taken on the device, as torch's GradScaler takes it: the
    kernel gets a `found_inf` flag and leaves parameters and state alone when it is set, so the host
    never waits for the GPU here. (On a GPU, a step of a small model waits on the host, not on the
    arithmetic; each wait for the device's answer costs the overlap of host and device work.) Other
    optimizers are asked on the host.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = gradient_norm(params)
    skipped = ~(torch.isfinite(loss.detach()).to(norm.device) & torch.isfinite(norm))
    # a skipped step's norm reads as 0 here: clip factor 1, the gradients are left as they were
    finite_norm = norm.masked_fill(skipped, 0.0)
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skipped.float()  # type: ignore[attr-defined]
        if max_grad_norm:
            # clipping inside the kernel, as it unscales a loss scaler's gradients (it divides each by
            # grad_scale and writes it back): clip_grad_norm_'s factor max / (norm + 1e-6), at most 1,
            # without a pass of its own over the gradients
            divisor = ((finite_norm + 1e-6) / max_grad_norm).clamp(min=1.0)
            optimizer.grad_scale = divisor.float()  # type: ignore[attr-defined]  # the kernel reads fp32
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
            optimizer.__dict__.pop("grad_scale", None)
    else:
        if max_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, finite_norm)
        if not bool(skipped):
            optimizer.step()
    return StepResult(skipped, norm)


def zero_grad_keeping(optimizer: torch.optim.Optimizer, kept: Iterable[Tensor]) -> None:
    """`optimizer.zero_grad(set_to_none=True)`, except that the gradients of `kept` stay allocated, zeroed.

    For parameters whose gradient arrives as sparse rows added into `.grad` (packing.embed_tokens):
    that needs a dense `.grad` to add into, and zeroing one in place costs no fresh allocation.
    """
    saved = [(p, p.grad) for p in kept if p.grad is not None]
    optimizer.zero_grad(set_to_none=True)
    for p, grad in saved:
        p.grad = grad.zero_()


def read_scalars(values: Mapping[str, Tensor | float]) -> dict[str, float]:
    """0-dim tensors (on any device) and numbers → floats, the tensors of each device read in one copy.

    Each `float(tensor)` of a GPU tensor makes the host wait until the device has run all it was
    given; reading a step's loss, norm and counts together waits once.
    """
    out = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
    by_device: dict[torch.device, dict[str, Tensor]] = {}
    for k, v in values.items():
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, {})[k] = v.detach().reshape(()).to(torch.float64)
    for tensors in by_device.values():
        out.update(zip(tensors, torch.stack(list(tensors.values())).tolist()))
    return {k: out[k] for k in values}
