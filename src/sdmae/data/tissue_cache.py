"""Each slide's grid of tissue tiles, computed once (a thumbnail and a mask: seconds on a large slide) and kept
in the cache folder (`sdmae.cachedir`, kind "tissue"), so a restart, a second run or `sdmae bench data` does
not compute it again (`data.tissue_cache=false` turns it off).

The key hashes the slide's resolved path, size and modification time, the tiling parameters and
TISSUE_VERSION (bump it whenever the tissue detection changes): an edited or replaced slide, or other
parameters, get a new entry. A cache that cannot be read or written only costs the computation (a warning).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

from sdmae.atomic import atomic_path
from sdmae.cachedir import cache_dir
from sdmae.errors import SdmaeError

TISSUE_VERSION = 1


def grid_file(path: str | Path, params: dict) -> Path:
    p = Path(path).resolve()
    st = p.stat()
    ident = [str(p), st.st_size, st.st_mtime_ns, params, TISSUE_VERSION]
    return cache_dir("tissue") / f"{hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]}.json"


def load_grid(path: str | Path, params: dict) -> Optional[dict]:
    """The cached grid ({"level", "read_size", "mpp", "xy": [[x, y], ...]}) or None."""
    file = grid_file(path, params)
    try:
        grid = json.loads(file.read_text())
        if isinstance(grid.get("xy"), list) and {"level", "read_size", "mpp"} <= set(grid):
            return grid
        raise ValueError("missing fields")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, AttributeError) as e:
        print(f"warning: ignoring unreadable tissue cache {file} ({e})", file=sys.stderr)
        return None


def save_grid(path: str | Path, params: dict, grid: dict) -> None:
    file = grid_file(path, params)
    try:
        with atomic_path(file) as tmp:
            tmp.write_text(json.dumps({"slide": str(Path(path).resolve()), **grid}))
    except SdmaeError as e:
        print(f"warning: tissue grid not cached ({e})", file=sys.stderr)
