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
