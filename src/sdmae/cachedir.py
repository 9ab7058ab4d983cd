"""Where sdmae keeps what it can recompute (feature caches, slides' tissue grids): $SDMAE_CACHE/KIND, else
$XDG_CACHE_HOME/sdmae/KIND, else ~/.cache/sdmae/KIND."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    if os.environ.get("SDMAE_CACHE"):
        return Path(os.environ["SDMAE_CACHE"]) / kind
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdmae" / kind
