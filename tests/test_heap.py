"""contrastkit.heap: the C heap's free pages go back to the operating system."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from contrastkit import heap

# in a fresh process: a process that has run other tests has free heap pages of its own, which
# take the new blocks without growing and change where the small ones land
HOLES = """
import json, os
import numpy as np
from contrastkit import heap


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


start = resident()
big, pins = [], []
for _ in range(1000):
    big.append(np.ones(96 * 1024, dtype=np.uint8))  # written: its pages are resident
    pins.append(np.ones(2048, dtype=np.uint8))
allocated = resident() - start
del big
kept = resident() - start
ran = heap.release_free_memory()
print(json.dumps({"allocated": allocated, "kept": kept, "after": resident() - start, "ran": ran}))
"""


@pytest.mark.skipif(heap._malloc_trim() is None, reason="this C library has no malloc_trim")
def test_free_pages_between_live_blocks_go_back_to_the_system():
    """Blocks of 96 kB come from malloc's heap (below its mmap threshold); a small block kept after each
    one pins the heap, so freeing the big ones leaves ~96 MB of holes the heap keeps (the control) until
    `release_free_memory` hands their pages back."""
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["ran"]
    assert m["allocated"] > 80e6 and m["kept"] > 0.8 * m["allocated"], m  # the heap kept the holes
    assert m["kept"] - m["after"] > 0.7 * m["allocated"], m


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.release_free_memory() is False
