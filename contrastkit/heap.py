"""Handing the C heap's free pages back to the operating system between the phases of a big step.

glibc's malloc keeps what a program frees for its next requests. A gradient-cached step allocates
and frees the activations of hundreds of mini-batches of different lengths, and the holes between
the few allocations that live on (cached embeddings, random states) keep growing the heap: at batch
4,096 the process's resident memory ends up a few hundred MB above what is alive
(bench/memory_vs_batch.py, docs/training.md). `malloc_trim(0)` returns every free page (5-15 ms for
a heap of 1-2 GB, and the pages the step then needs again are faulted back in), so the gradient
cache calls it between the phases of big steps only, never per mini-batch.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; musl and others have none
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system (glibc's `malloc_trim(0)`).

    True when it ran; False where the C library has no such call (nothing to do there).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
