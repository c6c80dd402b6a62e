"""The compiled copies behind the packed forward's attention layout (contrastkit/packing.py; numba, cached).

A slab's texts are packed rows: text i's L_i tokens are rows [start_i, start_i + L_i) of an [n, C]
array. Attention wants each head of each text as a zero-padded [T, d] block: a [b, h, T, d] array,
T the slab's longest text. The two loops copy one part (columns [offset, offset + h · d): the
queries, keys or values of a fused projection, or the whole context) between the layouts, each the
other's adjoint, so one is the other's gradient:

    to_heads:    heads[i, j, t, :] = rows[start_i + t, offset + j·d : offset + (j + 1)·d]   (t < L_i; else 0)
    from_heads:  rows[start_i + t, offset + j·d : offset + (j + 1)·d] = heads[i, j, t, :]   (t < L_i)

One pass each way, where PyTorch took two or three (the padded block by a copy per text, then a
strided copy per head layout; in the backward a stack of the three gradients, then a gather). Any
element type: the arrays arrive flat, as the widest unsigned words (8, 4 or 2 bytes) that a row and
a head's d elements are whole numbers of, and every size and offset is counted in those words (bf16
heads of 32 are 8 words of 8 bytes). The inner copies index with unsigned integers: numba adds no
negative-index wraparound to them, so a head's row is a plain run of loads and stores (as slices,
whose set-up costs more than the 64 bytes they copy, the loops ran 4.5x slower). Texts are shared
out by `prange` (`parallel=True`; serial twins for forked children).
"""

from __future__ import annotations

import numba
import numpy as np

from contrastkit.dropout_kernels import PARALLEL

_FLAGS = dict(nogil=True, cache=True, boundscheck=False)
_TYPES = ("uint16", "uint32", "uint64")
_SIGNATURES = [f"void({t}[::1], int64, int64, int64[::1], int64[::1], int64, int64, int64, {t}[::1])" for t in _TYPES]


@numba.njit(**_FLAGS)
def _copy_text(rows, columns, offset, starts, lengths, heads, width, d, blocks, i, to_blocks):
    """Text i's real positions, rows → blocks (to_blocks, then its padding zeroed) or blocks → rows."""
    length, start = lengths[i], starts[i]
    for t in range(length):
        row = np.uint64((start + t) * columns + offset)
        for j in range(heads):
            block = np.uint64(((i * heads + j) * width + t) * d)
            column = row + np.uint64(j * d)
            for e in range(d):  # the direction is the same all along: LLVM unswitches the branch
                if to_blocks:
                    blocks[block + np.uint64(e)] = rows[column + np.uint64(e)]
                else:
                    rows[column + np.uint64(e)] = blocks[block + np.uint64(e)]
    if to_blocks:
        for j in range(heads):
            block = np.uint64(((i * heads + j) * width + length) * d)
            for e in range((width - length) * d):
                blocks[block + np.uint64(e)] = 0


@numba.njit(_SIGNATURES, parallel=PARALLEL, **_FLAGS)
def to_heads(rows, columns, offset, starts, lengths, heads, width, d, out):
    """rows [n, columns] → out [b, heads, width, d], both flat, in units of d (see the module's docstring)."""
    for i in numba.prange(lengths.shape[0]):
        _copy_text(rows, columns, offset, starts, lengths, heads, width, d, out, i, True)


@numba.njit(_SIGNATURES, parallel=PARALLEL, **_FLAGS)
def from_heads(blocks, columns, offset, starts, lengths, heads, width, d, rows):
    """blocks [b, heads, width, d] → their real positions into rows [n, columns] (the rest untouched)."""
    for i in numba.prange(lengths.shape[0]):
        _copy_text(rows, columns, offset, starts, lengths, heads, width, d, blocks, i, False)


@numba.njit(**_FLAGS)
def to_heads_serial(rows, columns, offset, starts, lengths, heads, width, d, out):
    """to_heads on one thread (a forked child: dropout_kernels.kernel)."""
    for i in range(lengths.shape[0]):
        _copy_text(rows, columns, offset, starts, lengths, heads, width, d, out, i, True)


@numba.njit(**_FLAGS)
def from_heads_serial(blocks, columns, offset, starts, lengths, heads, width, d, rows):
    """from_heads on one thread."""
    for i in range(lengths.shape[0]):
        _copy_text(rows, columns, offset, starts, lengths, heads, width, d, blocks, i, False)


BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # word size → its unsigned type
