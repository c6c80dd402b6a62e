"""Small numpy helpers for embedding matrices (no faiss, no torch: cheap to import anywhere)."""

from __future__ import annotations

import numpy as np


def non_finite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of `x` [n, d] that hold NaN or infinity (faiss drops such vectors silently,
    an exact search scores them nothing): for a caller to refuse, naming them."""
    return np.flatnonzero(~np.isfinite(x).all(axis=1))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), same dtype: then inner product = cosine."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
