"""The compiled loops behind `contrastkit.fast_layer_norm` (numba; compiled once, then loaded from its disk cache).

Rows of `width` (the model's hidden size) laid end to end: a [rows · width] flat array. `a` is the
sub-layer's output in bf16 (its uint16 bits, as in contrastkit/softmax_kernels.py), `x` the fp32
residual stream, gamma and beta the layer norm's fp32 weight and bias. Forward, row by row:

    d = keep · round_bf16(a · scale)     s = d + x     y = (s - mean(s)) · rstd · gamma + beta,
    rstd = 1 / sqrt(var(s) + eps)

(dropout as FastDropout stores it, the bf16 + fp32 sum in fp32 as torch adds them, the layer norm in
fp32 as torch's). The mask is `dropout_kernels`': element i of the [rows, width] block is kept when
16-bit lane i of the SplitMix64 stream from `seed` is >= `threshold` (nothing dropped at threshold 0).

Backward, from dy (fp32): x̂ = (s - mean) · rstd, g = dy · gamma,

    ds = rstd · (g - mean(g) - x̂ · mean(g · x̂))      (the residual's gradient)
    da = keep · round_bf16(round_bf16(ds) · scale)     (autograd rounds ds to a's bf16, then dropout)
    dgamma = Σ_rows dy · x̂,  dbeta = Σ_rows dy         (per block of rows, summed by the caller)

Blocks of whole rows (about 8,192 elements) are shared out by `prange` (`parallel=True`); each
block draws its own stretch of the stream and writes its own partial sums, so the result does not
depend on the number of threads. Serial twins for forked children (`dropout_kernels.kernel`).
"""

from __future__ import annotations

import numba
import numpy as np

from contrastkit.dropout_kernels import PARALLEL
from contrastkit.softmax_kernels import _block_lanes, _round, _rows_per_block, _widen, row_blocks

# no NaN or infinity assumptions; neither reassociation nor contraction into fused multiply-adds, so that
# the arithmetic is the source's and the same wherever LLVM inlines or vectorises a loop: on a Xeon
# (family 6, model 207; 2026-11-28) the parallel loops and their serial twins, compiled with both, gave
# a forked child other last bits than its parent. The row sums run as eight partial sums, written out
# (`_row_sum`); the pass costs about 10-15 % more there ([2,048 × 384] bf16: forward 0.58-0.65 ms against
# 0.46-0.61, forward and backward 1.6-2.1 against 1.35-1.84), a few milliseconds of a bf16 step.
_FLAGS = dict(nogil=True, cache=True, boundscheck=False, fastmath={"nsz", "arcp"})
_FORWARD = ("void(uint16[::1], float32[::1], float32[::1], float32[::1], float32, float32[::1], float32[::1], "
            "float32[::1], float32[::1], int64, uint64, uint16, float32)")
_BACKWARD = ("void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], "
             "uint16[::1], float32[:, ::1], float32[:, ::1], int64, uint64, uint16, float32)")


@numba.njit(**_FLAGS)
def _row_sum(v):
    """Σ v in a fixed order: eight partial sums over the positions j ≡ 0 … 7 (mod 8), the tail into the
    first, then added pairwise. Eight independent chains that LLVM may pack into one vector register
    without changing a bit (no reassociation asked for)."""
    n = v.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    full = n - n % 8
    for j in range(0, full, 8):
        s0 += v[j]
        s1 += v[j + 1]
        s2 += v[j + 2]
        s3 += v[j + 3]
        s4 += v[j + 4]
        s5 += v[j + 5]
        s6 += v[j + 6]
        s7 += v[j + 7]
    for j in range(full, n):
        s0 += v[j]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(**_FLAGS)
def _forward_block(a, x, gamma, beta, eps, s, y, means, rstds, width, r0, r1, seed, threshold, scale):
    lanes, first_word = _block_lanes(width, r0, r1, seed, threshold)
    for r in range(r0, r1):
        base = r * width
        ar, xr, sr, yr = a[base:base + width], x[base:base + width], s[base:base + width], y[base:base + width]
        if threshold > 0:
            lane0 = base - 4 * first_word
            lr = lanes[lane0:lane0 + width]
            for j in range(width):
                kept = _widen(_round(_widen(ar[j]) * scale)) if lr[j] >= threshold else np.float32(0.0)
                sr[j] = kept + xr[j]
        else:
            for j in range(width):
                sr[j] = _widen(ar[j]) + xr[j]
        mean = _row_sum(sr) / np.float32(width)
        for j in range(width):  # the output row holds the squares until it is written
            c = sr[j] - mean
            yr[j] = c * c
        rstd = np.float32(1.0) / np.sqrt(_row_sum(yr) / np.float32(width) + eps)
        for j in range(width):
            yr[j] = (sr[j] - mean) * rstd * gamma[j] + beta[j]
        means[r] = mean
        rstds[r] = rstd


@numba.njit(**_FLAGS)
def _backward_block(dy, s, gamma, means, rstds, dx, da, dgamma, dbeta, width, r0, r1, seed, threshold, scale):
    lanes, first_word = _block_lanes(width, r0, r1, seed, threshold)
    for j in range(width):
        dgamma[j] = np.float32(0.0)
        dbeta[j] = np.float32(0.0)
    for r in range(r0, r1):
        base = r * width
        dyr, sr, dxr, dar = dy[base:base + width], s[base:base + width], dx[base:base + width], da[base:base + width]
        mean, rstd = means[r], rstds[r]
        for j in range(width):  # dx's row holds g = dy · gamma, then g · x̂, until it is written
            dxr[j] = dyr[j] * gamma[j]
        mean_g = _row_sum(dxr) / np.float32(width)
        for j in range(width):
            xhat = (sr[j] - mean) * rstd
            dxr[j] = dxr[j] * xhat
            dgamma[j] += dyr[j] * xhat
            dbeta[j] += dyr[j]
        mean_gx = _row_sum(dxr) / np.float32(width)
        for j in range(width):
            xhat = (sr[j] - mean) * rstd
            dxr[j] = rstd * (dyr[j] * gamma[j] - mean_g - xhat * mean_gx)
        if threshold > 0:
            lane0 = base - 4 * first_word
            lr = lanes[lane0:lane0 + width]
            for j in range(width):
                dar[j] = _round(_widen(_round(dxr[j])) * scale) if lr[j] >= threshold else np.uint16(0)
        else:
            for j in range(width):
                dar[j] = _round(dxr[j])


@numba.njit(_FORWARD, parallel=PARALLEL, **_FLAGS)
def dropout_add_norm_bf16(a, x, gamma, beta, eps, s, y, means, rstds, width, seed, threshold, scale):
    """s = dropout(a) + x, y = layer_norm(s) by rows of `width` (see the module's docstring)."""
    rows = x.shape[0] // width
    step = _rows_per_block(width)
    for i in numba.prange((rows + step - 1) // step):
        _forward_block(a, x, gamma, beta, eps, s, y, means, rstds, width, i * step, min(i * step + step, rows),
                       seed, threshold, scale)


@numba.njit(_BACKWARD, parallel=PARALLEL, **_FLAGS)
def dropout_add_norm_backward_bf16(dy, s, gamma, means, rstds, dx, da, dgamma, dbeta, width, seed, threshold,
                                   scale):
    """dx, da and block i's partial dgamma[i], dbeta[i] from dy (see the module's docstring)."""
    rows = dy.shape[0] // width
    step = _rows_per_block(width)
    for i in numba.prange((rows + step - 1) // step):
        _backward_block(dy, s, gamma, means, rstds, dx, da, dgamma[i], dbeta[i], width, i * step,
                        min(i * step + step, rows), seed, threshold, scale)


@numba.njit(**_FLAGS)
def dropout_add_norm_bf16_serial(a, x, gamma, beta, eps, s, y, means, rstds, width, seed, threshold, scale):
    """dropout_add_norm_bf16 on one thread (a forked child: dropout_kernels.kernel)."""
    rows = x.shape[0] // width
    step = _rows_per_block(width)
    for r0 in range(0, rows, step):
        _forward_block(a, x, gamma, beta, eps, s, y, means, rstds, width, r0, min(r0 + step, rows),
                       seed, threshold, scale)


@numba.njit(**_FLAGS)
def dropout_add_norm_backward_bf16_serial(dy, s, gamma, means, rstds, dx, da, dgamma, dbeta, width, seed,
                                          threshold, scale):
    """dropout_add_norm_backward_bf16 on one thread."""
    rows = dy.shape[0] // width
    step = _rows_per_block(width)
    for i, r0 in enumerate(range(0, rows, step)):
        _backward_block(dy, s, gamma, means, rstds, dx, da, dgamma[i], dbeta[i], width, r0,
                        min(r0 + step, rows), seed, threshold, scale)


blocks = row_blocks  # how many partial-sum rows a [rows, width] input needs (the callers allocate them)
