"""The compiled loops behind `contrastkit.fast_softmax` (numba; compiled once, then loaded from its disk cache).

bf16 tensors arrive as their uint16 bits: a value widens to fp32 by a 16-bit shift and rounds back
to nearest even, as torch's own bf16 kernels compute (in fp32) and store. Rows are the last
dimension, `width` long; the rows of text i (`rows_per_text` consecutive rows) read only their
first lengths[i] entries (attention's real keys: padding keys get probability and gradient 0, whatever
their scores hold), and the scores are scaled by alpha > 0 first (attention's 1/√d). Every loop
indexes a row's slices with `range` indices, so that LLVM vectorises it (an index `base + j` carries
numba's negative-index check and stays scalar: 6x slower).

exp is written out for LLVM to vectorise (without Intel's SVML numba calls libm's scalar expf):
e^v = 2^n · 2^f, n = round(v log2 e), |f| <= 1/2, 2^f = e^(f ln 2) by its Taylor polynomial of
degree 6 (relative error below 1.2e-7, far under bf16's 2^-9); v <= -87 gives 0 (so does -inf),
and n is kept >= -125 so that no intermediate is subnormal (subnormal products are slow).

The dropout mask is `contrastkit.dropout_kernels`': element i of the [rows, width] block is kept
when 16-bit lane i of the SplitMix64 stream from `seed` is >= `threshold`, the very mask
`fast_dropout` draws for the same seed on a tensor of that shape.

Blocks of whole rows (about 8,192 elements) are shared out by `prange` (`parallel=True`): each
block draws its own stretch of the stream, so the result does not depend on the number of threads.
Serial where numba has no OpenMP threading layer (`dropout_kernels.PARALLEL`).

numba's disk cache is keyed to this file: a change to `dropout_kernels.splitmix_words` alone does not
recompile these loops from a cache made before it (clear contrastkit/__pycache__/*.nbi then).
"""

from __future__ import annotations

import numba
import numpy as np

from contrastkit.dropout_kernels import BLOCK, PARALLEL, splitmix_words


# reassociation (the row sums), and no NaN or infinity assumptions: padding keys are -inf
_FLAGS = dict(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc", "nsz", "arcp", "contract"})
_SIGNATURE = "void(uint16[::1], uint16[::1], uint16[::1], int64, int64[::1], int64, float32, uint64, uint16, float32)"

LOG2E, LN2 = np.float32(1.4426950408889634), np.float32(0.6931471805599453)
C2, C3, C4, C5, C6 = (np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24), np.float32(1 / 120),
                      np.float32(1 / 720))


@numba.njit(**_FLAGS)
def _widen(bits):
    """bf16 bits (uint16) → fp32."""
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


@numba.njit(**_FLAGS)
def _round(value):
    """fp32 → bf16 bits, rounded to nearest even (torch's conversion for finite values)."""
    bits = np.float32(value).view(np.uint32)
    return np.uint16(np.uint32(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@numba.njit(**_FLAGS)
def exp_fp32(v):
    """e^v in fp32 for v <= 0, written out for LLVM to vectorise (see the module's docstring); 0 below -87."""
    t = v * LOG2E
    t = t if t > np.float32(-125.0) else np.float32(-125.0)
    n = np.floor(t + np.float32(0.5))
    f = (t - n) * LN2
    p = np.float32(1.0) + f * (np.float32(1.0) + f * (C2 + f * (C3 + f * (C4 + f * (C5 + f * C6)))))
    w = p * np.uint32(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23)).view(np.float32)
    return w if v > np.float32(-87.0) else np.float32(0.0)


@numba.njit(**_FLAGS)
def _rows_per_block(width):
    return max(1, (4 * BLOCK - 4) // width)


def row_blocks(rows: int, width: int) -> int:
    """How many blocks of whole rows (and partial-sum rows, for the loops that write them) these loops and
    their kin (layer_norm_kernels, gelu_kernels) cut a [rows, width] input into."""
    step = _rows_per_block(width)
    return (rows + step - 1) // step


@numba.njit(**_FLAGS)
def _block_lanes(width, r0, r1, seed, threshold):
    """The stream's 16-bit lanes for rows [r0, r1) of a [rows, width] block, from the word that holds
    element r0 · width on, and that word's index (nothing drawn at threshold 0)."""
    first_word = (r0 * width) // 4
    words = np.empty((r1 * width - 4 * first_word + 3) // 4, dtype=np.uint64)
    if threshold > 0:
        splitmix_words(words, seed, first_word)
    return words.view(np.uint16), first_word


@numba.njit(**_FLAGS)
def _forward_block(x, probs, out, width, lengths, rows_per_text, alpha, r0, r1, seed, threshold, scale):
    """Rows [r0, r1): probs = softmax(alpha · x) over the row's first `lengths[r // rows_per_text]`
    entries (0 beyond), out = keep · probs · scale (not written at threshold 0)."""
    lanes, first_word = _block_lanes(width, r0, r1, seed, threshold)
    e = np.empty(width, dtype=np.float32)
    for r in range(r0, r1):
        base = r * width
        valid = min(width, lengths[r // rows_per_text])
        xr, pr = x[base:base + valid], probs[base:base + width]
        # the row's max on order-preserving integer keys of the bits (a float max reduction does
        # not vectorise without assuming no NaN)
        top = np.int32(-65536)
        for j in range(valid):
            u = np.int32(xr[j])
            key = u if u < np.int32(32768) else np.int32(32768) - u
            top = key if key > top else top
        m = _widen(np.uint16(top) if top >= np.int32(0) else np.uint16(np.int32(32768) - top))
        total = np.float32(0.0)
        for j in range(valid):
            w = exp_fp32((_widen(xr[j]) - m) * alpha)
            e[j] = w
            total += w
        inv = np.float32(1.0) / total
        for j in range(valid, width):
            pr[j] = np.uint16(0)
        if threshold > 0:
            lane0 = base - 4 * first_word
            lr, orow = lanes[lane0:lane0 + width], out[base:base + width]
            for j in range(valid):
                rounded = _round(e[j] * inv)
                pr[j] = rounded
                orow[j] = _round(_widen(rounded) * scale) if lr[j] >= threshold else np.uint16(0)
            for j in range(valid, width):
                orow[j] = np.uint16(0)
        else:
            for j in range(valid):
                pr[j] = _round(e[j] * inv)


@numba.njit(**_FLAGS)
def _backward_block(grad, probs, grad_x, width, lengths, rows_per_text, alpha, r0, r1, seed, threshold, scale):
    """Rows [r0, r1): g = keep · grad · scale (rounded to bf16 as dropout's backward stores it;
    g = grad at threshold 0), then softmax's backward in fp32, over the row's valid entries (0 beyond):
    grad_x = alpha · probs · (g - Σ g · probs)."""
    lanes, first_word = _block_lanes(width, r0, r1, seed, threshold)
    g = np.empty(width, dtype=np.float32)
    for r in range(r0, r1):
        base = r * width
        valid = min(width, lengths[r // rows_per_text])
        gr, pr, xr = grad[base:base + valid], probs[base:base + valid], grad_x[base:base + width]
        if threshold > 0:
            lane0 = base - 4 * first_word
            lr = lanes[lane0:lane0 + valid]
            for j in range(valid):
                kept = _widen(_round(_widen(gr[j]) * scale))
                g[j] = kept if lr[j] >= threshold else np.float32(0.0)
        else:
            for j in range(valid):
                g[j] = _widen(gr[j])
        dot = np.float32(0.0)
        for j in range(valid):
            dot += g[j] * _widen(pr[j])
        for j in range(valid):
            xr[j] = _round(alpha * _widen(pr[j]) * (g[j] - dot))
        for j in range(valid, width):
            xr[j] = np.uint16(0)


@numba.njit(_SIGNATURE, parallel=PARALLEL, **_FLAGS)
def softmax_dropout_bf16(x, probs, out, width, lengths, rows_per_text, alpha, seed, threshold, scale):
    """x [rows, width] flat: probs = softmax(x) by rows, out = keep · probs · scale (threshold 0: out untouched)."""
    rows = x.shape[0] // width
    step = _rows_per_block(width)
    for i in numba.prange((rows + step - 1) // step):
        _forward_block(x, probs, out, width, lengths, rows_per_text, alpha, i * step,
                       min(i * step + step, rows), seed, threshold, scale)


@numba.njit(_SIGNATURE, parallel=PARALLEL, **_FLAGS)
def softmax_dropout_backward_bf16(grad, probs, grad_x, width, lengths, rows_per_text, alpha, seed, threshold, scale):
    """grad_x, the gradient of x, from that of out and the forward's probs (see _backward_block)."""
    rows = grad.shape[0] // width
    step = _rows_per_block(width)
    for i in numba.prange((rows + step - 1) // step):
        _backward_block(grad, probs, grad_x, width, lengths, rows_per_text, alpha, i * step,
                       min(i * step + step, rows), seed, threshold, scale)


@numba.njit(**_FLAGS)
def softmax_dropout_bf16_serial(x, probs, out, width, lengths, rows_per_text, alpha, seed, threshold, scale):
    """softmax_dropout_bf16 on one thread (a forked child: dropout_kernels.kernel)."""
    step = _rows_per_block(width)
    rows = x.shape[0] // width
    for r0 in range(0, rows, step):
        _forward_block(x, probs, out, width, lengths, rows_per_text, alpha, r0,
                       min(r0 + step, rows), seed, threshold, scale)


@numba.njit(**_FLAGS)
def softmax_dropout_backward_bf16_serial(grad, probs, grad_x, width, lengths, rows_per_text, alpha, seed, threshold,
                                         scale):
    """softmax_dropout_backward_bf16 on one thread."""
    step = _rows_per_block(width)
    rows = grad.shape[0] // width
    for r0 in range(0, rows, step):
        _backward_block(grad, probs, grad_x, width, lengths, rows_per_text, alpha, r0,
                       min(r0 + step, rows), seed, threshold, scale)
