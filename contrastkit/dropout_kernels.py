"""The compiled loops behind `contrastkit.fast_dropout` (numba; compiled once, then loaded from its disk cache).

Element i of a dropout call reads the 16-bit lane i % 4 of 64-bit word w = i // 4 of a SplitMix64
stream (Steele, Lea & Flood 2014): word w = mix(seed + (w + 1)·γ), γ = 0x9E3779B97F4A7C15. Words are
made a block ahead of the element loop, and the loops index slices with `range` indices (no
negative-index wrap-around check), so that LLVM vectorises both. Blocks of 4 · BLOCK elements are
shared out among threads by `prange` (`parallel=True`); each block draws its own stretch of the
stream, so a result does not depend on the number of threads.

`PARALLEL` is False where numba has no OpenMP threading layer (it needs the system's libgomp); the
loops then run serially. numba's own thread pool ("workqueue") was no use here: between two of
torch's batched products, the softmax pass (contrastkit/softmax_kernels.py) took longer on it than
torch's kernels (2.91 against 2.29 ms), where on OpenMP's threads it took 1.64 (docs/benchmarks.md).

GNU OpenMP does not survive fork(): numba stops a forked child that starts a parallel loop once its
parent has run one. So every loop has a serial twin (`*_serial`, compiled on first use), and
`parallel_ok()` turns False in a forked child (and where there is no OpenMP layer); callers pick
the loop with `kernel(module, name)` (through `fast_dropout.compiled_loop`, which also sets the
thread count). The twins are separate functions, not one function jitted twice: numba's disk cache
keys a function by its source and signature, not by `parallel`, so a serial jit of the same
function could load the parallel machine code.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numba
import numpy as np
import torch
from numba.np.ufunc import parallel as _numba_parallel

from contrastkit.cache import cache_root, private_folder


def _openmp_available() -> bool:
    """numba's OpenMP threading layer loads (it links the system's libgomp)."""
    try:
        importlib.import_module("numba.np.ufunc.omppool")
    except (ImportError, OSError):
        return False
    return True


def _home_or_none():
    try:
        return Path.home()
    except RuntimeError:
        return None


# Without a home folder numba caches under a literal "./~/.cache/numba" of the working folder, and
# it unpickles the index files it finds there: another user's, in a shared folder. Then the cache
# goes to a folder of this user's alone (`cache.private_folder`), unless NUMBA_CACHE_DIR says where.
if not numba.config.CACHE_DIR and _home_or_none() is None:
    numba.config.CACHE_DIR = str(private_folder(cache_root() / "numba"))

# numba fixes its threading layer at its first parallel call; a layer the user chose is kept
PARALLEL = _openmp_available() and os.environ.get("NUMBA_THREADING_LAYER", "omp") == "omp"
if PARALLEL:
    numba.config.THREADING_LAYER = "omp"
    # Starting its OpenMP pool (here, or when a cached parallel loop loads) numba sets the process's
    # OpenMP thread count to its own, every core, and torch reads the same count: OMP_NUM_THREADS=1,
    # or torchrun's one thread per rank, would become all cores at the first import of a kernel
    # module. So the pool starts now, and torch's count is put back.
    threads = torch.get_num_threads()
    getattr(_numba_parallel, "_launch_threads", lambda: None)()  # numba's own start, not a public name
    torch.set_num_threads(threads)

_forked_child = False


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_ok() -> bool:
    """Whether the parallel loops may run here: OpenMP available, and not in a forked child."""
    return PARALLEL and not _forked_child


def kernel(module, name: str):
    """`module`'s loop `name`, or its serial twin where the parallel one may not run (`parallel_ok`)."""
    return getattr(module, name if parallel_ok() else f"{name}_serial")


GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
BLOCK = 2048  # words per block: 16 KB, in the L1 cache

_jit = dict(nogil=True, cache=True, boundscheck=False)
_loop = dict(_jit, parallel=PARALLEL)


@numba.njit("void(uint64[::1], uint64, int64)", **_jit)
def splitmix_words(words, seed, first):
    """words[k] = the SplitMix64 stream from `seed`, word first + k."""
    base = seed + np.uint64(first) * GAMMA
    for k in range(words.shape[0]):
        z = base + np.uint64(k + 1) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        words[k] = z ^ (z >> np.uint64(31))


@numba.njit(**_jit)
def _blocks(n):
    return (n + 4 * BLOCK - 1) // (4 * BLOCK)


@numba.njit(**_jit)
def _keep_lanes_block(out, seed, threshold, b):
    """Block b of keep_lanes: elements [4 · BLOCK · b, 4 · BLOCK · (b + 1))."""
    start = b * 4 * BLOCK
    words = np.empty(BLOCK, dtype=np.uint64)
    lanes = words.view(np.uint16)
    splitmix_words(words, seed, start // 4)
    block = out[start:start + 4 * BLOCK]
    for j in range(block.shape[0]):
        block[j] = lanes[j] >= threshold


@numba.njit(**_jit)
def _keep_and_scale_float_block(x, out, seed, threshold, scale, b):
    start = b * 4 * BLOCK
    words = np.empty(BLOCK, dtype=np.uint64)
    lanes = words.view(np.uint16)
    splitmix_words(words, seed, start // 4)
    xs, ys = x[start:start + 4 * BLOCK], out[start:start + 4 * BLOCK]
    zero = x.dtype.type(0)
    for j in range(xs.shape[0]):
        ys[j] = xs[j] * scale if lanes[j] >= threshold else zero


@numba.njit(**_jit)
def _keep_and_scale_bf16_block(x, out, seed, threshold, scale, b):
    start = b * 4 * BLOCK
    words = np.empty(BLOCK, dtype=np.uint64)
    lanes = words.view(np.uint16)
    splitmix_words(words, seed, start // 4)
    xs, ys = x[start:start + 4 * BLOCK], out[start:start + 4 * BLOCK]
    for j in range(xs.shape[0]):
        wide = np.uint32(np.uint32(xs[j]) << np.uint32(16))
        bits = np.float32(wide.view(np.float32) * scale).view(np.uint32)
        bits = np.uint32(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
        ys[j] = np.uint16(bits >> np.uint32(16)) if lanes[j] >= threshold else np.uint16(0)


# each loop twice: over blocks in parallel (prange), and serially (compiled on first use: forked
# children, see `kernel`); a block's elements are the same either way, so are the results

@numba.njit("void(uint8[::1], uint64, uint16)", **_loop)
def keep_lanes(out, seed, threshold):
    """out[i] = 1 where lane i of the stream >= threshold (kept), else 0."""
    for b in numba.prange(_blocks(out.shape[0])):
        _keep_lanes_block(out, seed, threshold, b)


@numba.njit(**_jit)
def keep_lanes_serial(out, seed, threshold):
    for b in range(_blocks(out.shape[0])):
        _keep_lanes_block(out, seed, threshold, b)


@numba.njit(["void(float32[::1], float32[::1], uint64, uint16, float32)",
             "void(float64[::1], float64[::1], uint64, uint16, float64)"], **_loop)
def keep_and_scale_float(x, out, seed, threshold, scale):
    """out[i] = x[i] · scale where lane i >= threshold, else 0 (float32 or float64)."""
    for b in numba.prange(_blocks(x.shape[0])):
        _keep_and_scale_float_block(x, out, seed, threshold, scale, b)


@numba.njit(**_jit)
def keep_and_scale_float_serial(x, out, seed, threshold, scale):
    for b in range(_blocks(x.shape[0])):
        _keep_and_scale_float_block(x, out, seed, threshold, scale, b)


@numba.njit("void(uint16[::1], uint16[::1], uint64, uint16, float32)", **_loop)
def keep_and_scale_bf16(x, out, seed, threshold, scale):
    """The same on bf16 bits (uint16): widened to fp32, multiplied, rounded to nearest even (torch's bf16 mul)."""
    for b in numba.prange(_blocks(x.shape[0])):
        _keep_and_scale_bf16_block(x, out, seed, threshold, scale, b)


@numba.njit(**_jit)
def keep_and_scale_bf16_serial(x, out, seed, threshold, scale):
    for b in range(_blocks(x.shape[0])):
        _keep_and_scale_bf16_block(x, out, seed, threshold, scale, b)
