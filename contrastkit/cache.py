"""Where contrastkit keeps what it can rebuild (embeddings of a corpus, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$CONTRASTKIT_CACHE, else $XDG_CACHE_HOME/contrastkit, else ~/.cache/contrastkit (without a home
    folder at all, <temp>/contrastkit-cache-<uid>).

    $XDG_CACHE_HOME counts only as an absolute path, as the XDG Base Directory specification asks.
    """
    if os.environ.get("CONTRASTKIT_CACHE"):
        return Path(os.environ["CONTRASTKIT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "contrastkit"
    try:
        return Path.home() / ".cache" / "contrastkit"
    except RuntimeError:  # no HOME and no passwd entry (a container's arbitrary uid): a per-user temp folder
        import tempfile

        return Path(tempfile.gettempdir()) / f"contrastkit-cache-{os.getuid()}"


_private_fallback: Path | None = None


def private_folder(folder: Path) -> Path:
    """`folder` for files this process will run (compiled kernels): created private (mode 0700) where
    missing, made private where this user owns it but others may write to it (a folder an earlier
    version made under umask 002), and used only when it is this user's and no folder above it lets
    another user swap it (`safe_path`). Otherwise (a folder another user made first, such as a
    guessable /tmp/contrastkit-cache-<uid>) a library planted there would run in this process: a
    fresh private temporary folder of this process's own is used instead (removed at exit), and the
    kernels are built again there.
    """
    global _private_fallback
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o022:
            folder.chmod(0o700)
        if is_private(folder) and safe_path(folder.parent):
            return folder
    except OSError:
        pass
    if _private_fallback is None:
        import atexit
        import shutil
        import tempfile
        import warnings

        _private_fallback = Path(tempfile.mkdtemp(prefix="contrastkit-kernels-"))
        atexit.register(shutil.rmtree, _private_fallback, ignore_errors=True)
        warnings.warn(f"{folder} is not this user's alone (or cannot be made): compiled kernels go to "
                      f"{_private_fallback} for this run; set CONTRASTKIT_CACHE to a folder of your own",
                      stacklevel=2)
    return _private_fallback


def is_private(path: Path) -> bool:
    """True when this user owns `path` (followed through links) and neither its group nor others may write to it."""
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def safe_path(folder: Path) -> bool:
    """True when no other user could rename or replace anything under `folder`: it and every folder
    above it belong to this user or root, and none lets others write to it (unless sticky, as /tmp)."""
    for place in [folder.resolve(), *folder.resolve().parents]:
        info = place.stat()
        if info.st_uid not in (os.getuid(), 0):
            return False
        if info.st_mode & 0o002 and not info.st_mode & 0o1000:
            return False
    return True
