"""Small helpers shared by the losses: reductions and input checks (private)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Reduction = Literal["mean", "sum", "none"]


def reduce_losses(losses: Tensor, reduction: Reduction) -> Tensor:
    """Reduce per-item losses [N] to a scalar (``"mean"``, ``"sum"``) or keep them (``"none"``)."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` where ``keep`` is true; 0 (still in the graph) where nothing is kept."""
    kept = values.where(keep, values.new_zeros(()))
    return kept.sum() / keep.sum().clamp(min=1)


def check_embeddings(name: str, x: Tensor, ndim: int = 2) -> None:
    """Raise a ValueError unless ``x`` is a floating tensor with ``ndim`` dimensions."""
    if x.dim() != ndim or not x.is_floating_point():
        want = "[B, D]" if ndim == 2 else "[B, K, D]"
        raise ValueError(f"{name} must be a floating tensor of shape {want}; got {x.dtype} {tuple(x.shape)}")


def check_same_shape(**tensors: Tensor) -> None:
    """Raise a ValueError unless every tensor has the same shape, naming them all."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {listed}")


def check_labels(name: str, labels: Tensor, n: int) -> None:
    """Raise a ValueError unless ``labels`` has exactly one entry per row, shape [n]."""
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one per row); got {tuple(labels.shape)}")
