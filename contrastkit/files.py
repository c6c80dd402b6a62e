"""Files written whole: into a hidden file beside the target, flushed to disk, then renamed into place.

`os.replace` is atomic, so a reader (or a run resumed after a kill, a full disk or a power cut) sees
the old file or the new one, never half of one. Checkpoint folders get the same treatment in
`train/checkpoint.py` (`write_atomically`); a model saved into a folder that holds other things (a
run's output folder) gets it file by file (`save_files_whole`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from safetensors import SafetensorError


def write_whole(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(binary handle) on a hidden file beside `path`, fsync it, rename it to `path`; return
    `path`. On any failure the hidden file is removed and an old `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(path.parent, f".{path.name}.partial-")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)  # a killed run's, under this same pid (containers reuse them)
    try:
        with open_no_follow(partial, "wb", exclusive=True) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        # name the file asked for, not the hidden one: "cannot write m.json: No space left on device"
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return path


_MODES = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}


def open_no_follow(path: str | Path, mode: str, *, exclusive: bool = False, encoding: str | None = None):
    """`open(path, mode)` ("w", "a" or "a+", text or with "b") that never writes through a symbolic link:
    in an output folder someone else could write to, a link named like a run's file (metrics.jsonl,
    the lock) would have the run overwrite whatever it points at. `exclusive`: the file must be new."""
    flags = _MODES[mode.replace("b", "")] | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | (os.O_EXCL if exclusive else 0)
    try:
        descriptor = os.open(path, flags, 0o666)
    except OSError as exc:
        if Path(path).is_symlink():
            raise OSError(exc.errno, f"{path} is a symbolic link: not written through") from exc
        raise
    return os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": encoding or "utf-8"}))


def _remove_dead_partials(folder: Path, prefix: str) -> None:
    """Remove hidden `prefix<pid>` files that a killed process left (its pid no longer runs)."""
    for leftover in folder.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text_whole(path: str | Path, text: str) -> Path:
    """`text` (UTF-8) written whole to `path` (see `write_whole`)."""
    return write_whole(path, lambda handle: handle.write(text.encode("utf-8")))


WEIGHT_SUFFIXES = (".safetensors",)


@contextmanager
def failed_writes_named(target: str | Path) -> Iterator[None]:
    """torch.save, safetensors and faiss report a failed write (a full disk) as RuntimeError or
    SafetensorError: raise it as the OSError it is, naming `target`, so the command line prints one
    `error:` line instead of a traceback."""
    try:
        yield
    except (RuntimeError, SafetensorError) as exc:
        raise OSError(f"cannot write {target}: {' '.join(str(exc).split())[:300]}") from exc


def save_files_whole(folder: str | Path, save: Callable[[Path], object]) -> Path:
    """Call save(a hidden folder inside `folder`), then move each file it wrote into `folder`, each by
    one rename, so that every file there is whole, even after a kill mid-save; other files in `folder`
    are left alone. Return `folder`.

    The old weights files it replaces go first and the new ones come last, so a kill between the
    moves leaves a folder without weights (refused on load, by name) rather than a new config.json
    beside old weights. A hidden folder a killed save left behind is removed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".save-partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # inside a new folder of this process's own (not a name someone could have put a link under first)
    own = Path(tempfile.mkdtemp(prefix=f".save-partial-{os.getpid()}-", dir=folder))
    partial = own / "saved"
    try:
        with failed_writes_named(folder):
            save(partial)
        written = sorted((p for p in partial.rglob("*") if p.is_file()), key=lambda p: (p.suffix in WEIGHT_SUFFIXES, p))
        for path in written:
            os.chmod(path, default_file_mode())
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        for path in written:
            if path.suffix in WEIGHT_SUFFIXES:
                (folder / path.relative_to(partial)).unlink(missing_ok=True)
        for path in written:
            target = folder / path.relative_to(partial)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(own, ignore_errors=True)
    return folder


def give_default_modes(folder: str | Path) -> None:
    """Every file under `folder` gets the mode a plain open() would give it (safetensors writes 0600)."""
    mode = default_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file():
            os.chmod(path, mode)


def default_file_mode() -> int:
    """The mode a plain open() would give a new file under the process's umask (0o644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def run_lock(folder: str | Path, hold: bool = True) -> Iterator[None]:
    """Hold `folder`/.contrastkit.lock (an flock) while the block runs: a second run writing into the same
    output folder stops at once with a ConfigError instead of deleting the first one's checkpoints.
    The lock goes with the process, so a killed run never leaves the folder locked. `hold=False` (the
    ranks other than the one that writes the folder): nothing is locked."""
    import fcntl

    from contrastkit.errors import ConfigError

    if not hold:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open_no_follow(folder / ".contrastkit.lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{folder} is in use by another run ({holder}); wait for it to finish or give "
                              f"another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
