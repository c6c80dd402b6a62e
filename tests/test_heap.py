"""contrastkit.heap: the C heap's free pages go back to the operating system."""

from __future__ import annotations

import os

import numpy as np
import pytest

from contrastkit import heap


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(heap._malloc_trim() is None, reason="this C library has no malloc_trim")
def test_free_pages_between_live_blocks_go_back_to_the_system():
    """Blocks of 96 kB come from malloc's heap (below its mmap threshold); a small block kept after each
    one pins the heap, so freeing the big ones leaves ~96 MB of holes the heap keeps (the control) until
    `release_free_memory` hands their pages back."""
    start = resident_bytes()
    big, pins = [], []
    for _ in range(1000):
        big.append(np.ones(96 * 1024, dtype=np.uint8))  # written: its pages are resident
        pins.append(np.ones(2048, dtype=np.uint8))
    allocated = resident_bytes() - start
    del big
    kept = resident_bytes() - start
    assert allocated > 80e6 and kept > 0.8 * allocated, (allocated, kept)  # the heap kept the holes
    assert heap.release_free_memory()
    released = kept - (resident_bytes() - start)
    assert released > 0.7 * allocated, (allocated, kept, released)
    del pins


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.release_free_memory() is False
