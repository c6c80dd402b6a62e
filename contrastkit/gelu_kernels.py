"""The compiled loops behind `contrastkit.fast_gelu` (numba; compiled once, then loaded from its disk cache).

Rows of `width` columns laid end to end, bf16 as its uint16 bits (contrastkit/softmax_kernels.py).
The feed-forward layer's product h (bf16) gets its fp32 bias b, then the exact GELU (Hendrycks &
Gimpel 2016), in fp32:

    z = h + b      y = z · Φ(z)      dz = dy · (Φ(z) + z · φ(z))      db = Σ_rows dz

Φ(z) = (1 + erf(z / √2)) / 2 by Abramowitz & Stegun 7.1.26 (erf to 1.5e-7), written so that neither
tail cancels: with q = (a1 t + … + a5 t⁵) e^(−z²/2), t = 1 / (1 + p |z| / √2), Φ(z) = 1 − q / 2 for
z ≥ 0 and q / 2 below; φ(z) = e^(−z²/2) / √(2π) shares the exponential, written out for LLVM to
vectorise as in softmax_kernels (2ⁿ times a degree-6 polynomial). Blocks of whole rows are shared out
by `prange`; each block writes its own partial bias sums, so the result does not depend on the
number of threads. Serial twins for forked children (`dropout_kernels.kernel`).

@article{hendrycks2016gelu,
  title={Gaussian Error Linear Units (GELUs)}, author={Dan Hendrycks and Kevin Gimpel},
  journal={arXiv:1606.08415}, year={2016}
}
"""

from __future__ import annotations

import numba
import numpy as np

from contrastkit.dropout_kernels import PARALLEL
from contrastkit.softmax_kernels import _round, _rows_per_block, _widen, exp_fp32, row_blocks

_FLAGS = dict(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc", "nsz", "arcp", "contract"},
              error_model="numpy")
_FORWARD = "void(uint16[::1], float32[::1], uint16[::1], int64)"
_BACKWARD = "void(uint16[::1], uint16[::1], float32[::1], uint16[::1], float32[:, ::1], int64)"

P, A1, A2, A3, A4, A5 = (np.float32(0.3275911), np.float32(0.254829592), np.float32(-0.284496736),
                         np.float32(1.421413741), np.float32(-1.453152027), np.float32(1.061405429))
INV_SQRT2, INV_SQRT_2PI = np.float32(0.7071067811865476), np.float32(0.3989422804014327)


@numba.njit(**_FLAGS)
def _phi_and_density(z):
    """(Φ(z), φ(z)) in fp32 (see the module's docstring)."""
    a = abs(z) * INV_SQRT2
    e = exp_fp32(-a * a)
    s = np.float32(1.0) / (np.float32(1.0) + P * a)
    half_q = np.float32(0.5) * (s * (A1 + s * (A2 + s * (A3 + s * (A4 + s * A5))))) * e
    return (np.float32(1.0) - half_q if z >= np.float32(0.0) else half_q), e * INV_SQRT_2PI


@numba.njit(**_FLAGS)
def _forward_block(h, bias, y, width, r0, r1):
    for r in range(r0, r1):
        base = r * width
        hr, yr = h[base:base + width], y[base:base + width]
        for j in range(width):
            z = _widen(hr[j]) + bias[j]
            phi, _ = _phi_and_density(z)
            yr[j] = _round(z * phi)


@numba.njit(**_FLAGS)
def _backward_block(dy, h, bias, dh, dbias, width, r0, r1):
    for j in range(width):
        dbias[j] = np.float32(0.0)
    for r in range(r0, r1):
        base = r * width
        gr, hr, dr = dy[base:base + width], h[base:base + width], dh[base:base + width]
        for j in range(width):
            z = _widen(hr[j]) + bias[j]
            phi, density = _phi_and_density(z)
            d = _widen(gr[j]) * (phi + z * density)
            dr[j] = _round(d)
            dbias[j] += d


@numba.njit(_FORWARD, parallel=PARALLEL, **_FLAGS)
def bias_gelu_bf16(h, bias, y, width):
    """y = GELU(h + bias) by rows of `width` (see the module's docstring)."""
    rows = h.shape[0] // width
    step = _rows_per_block(width)
    for i in numba.prange((rows + step - 1) // step):
        _forward_block(h, bias, y, width, i * step, min(i * step + step, rows))


@numba.njit(_BACKWARD, parallel=PARALLEL, **_FLAGS)
def bias_gelu_backward_bf16(dy, h, bias, dh, dbias, width):
    """dh = dy · GELU'(h + bias) and block i's partial bias gradient dbias[i]."""
    rows = h.shape[0] // width
    step = _rows_per_block(width)
    for i in numba.prange((rows + step - 1) // step):
        _backward_block(dy, h, bias, dh, dbias[i], width, i * step, min(i * step + step, rows))


@numba.njit(**_FLAGS)
def bias_gelu_bf16_serial(h, bias, y, width):
    """bias_gelu_bf16 on one thread (a forked child: dropout_kernels.kernel)."""
    rows = h.shape[0] // width
    step = _rows_per_block(width)
    for r0 in range(0, rows, step):
        _forward_block(h, bias, y, width, r0, min(r0 + step, rows))


@numba.njit(**_FLAGS)
def bias_gelu_backward_bf16_serial(dy, h, bias, dh, dbias, width):
    """bias_gelu_backward_bf16 on one thread."""
    rows = h.shape[0] // width
    step = _rows_per_block(width)
    for i, r0 in enumerate(range(0, rows, step)):
        _backward_block(dy, h, bias, dh, dbias[i], width, r0, min(r0 + step, rows))


blocks = row_blocks  # how many partial-sum rows a [rows, width] input needs (the callers allocate them)
