"""Where contrastkit keeps what it can rebuild (embeddings of a corpus, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$CONTRASTKIT_CACHE, else ~/.cache/contrastkit."""
    return Path(os.environ.get("CONTRASTKIT_CACHE") or Path.home() / ".cache" / "contrastkit")
