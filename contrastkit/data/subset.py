"""A fixed, seeded subset of a data set: the same rows on every run with the same seed."""

from __future__ import annotations

import numpy as np


def sample_indices(n: int, size: int, seed: int) -> list[int]:
    """A seeded choice of min(n, size) distinct indices out of range(n), in increasing order."""
    if size >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size, replace=False))


__all__ = ["sample_indices"]
