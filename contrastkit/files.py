"""Files written whole: into a hidden file beside the target, flushed to disk, then renamed into place.

`os.replace` is atomic, so a reader (or a run resumed after a kill, a full disk or a power cut) sees
the old file or the new one, never half of one. Checkpoint folders get the same treatment in
`train/checkpoint.py` (`write_atomically`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_whole(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(binary handle) on a hidden file beside `path`, fsync it, rename it to `path`; return
    `path`. On any failure the hidden file is removed and an old `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_whole(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) written whole to `path` (see `write_whole`)."""
    return write_whole(path, lambda handle: handle.write(text.encode("utf-8")))
