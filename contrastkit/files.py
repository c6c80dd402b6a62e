"""Files written whole: into a hidden file beside the target, flushed to disk, then renamed into place.

`os.replace` is atomic, so a reader (or a run resumed after a kill, a full disk or a power cut) sees
the old file or the new one, never half of one. Checkpoint folders get the same treatment in
`train/checkpoint.py` (`write_atomically`); a model saved into a folder that holds other things (a
run's output folder) gets it file by file (`save_files_whole`).
"""

from __future__ import annotations

import os
import shutil
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
    except OSError as exc:
        if exc.filename != str(partial):
            raise
        # name the file asked for, not the hidden one: "cannot write m.json: Permission denied"
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_whole(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) written whole to `path` (see `write_whole`)."""
    return write_whole(path, lambda handle: handle.write(text.encode("utf-8")))


def save_files_whole(folder: str | Path, save: Callable[[Path], object]) -> Path:
    """Call save(a hidden folder inside `folder`), then move each file it wrote into `folder`, each by
    one rename, so that every file there is whole (old or new), even after a kill mid-save; other
    files in `folder` are left alone. Return `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".save-partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save(partial)
        written = sorted(p for p in partial.rglob("*") if p.is_file())
        for path in written:
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        for path in written:
            target = folder / path.relative_to(partial)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def default_file_mode() -> int:
    """The mode a plain open() would give a new file under the process's umask (0o644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
