"""The tiles a picture shows: `n` evenly spaced over the source (so a slide is not shown by its first row
of tiles only), prepared exactly as `sdmae embed` prepares them."""
from __future__ import annotations

import sys

import numpy as np
import torch

from sdmae.config import Config
from sdmae.embed import INTERPOLATION, TileDataset
from sdmae.errors import SdmaeError, UsageError


def pick_tiles(source, n: int, cfg: Config, size: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Up to `n` readable tiles -> (uint8 (k, 3, S, S), their paths); unreadable tiles are skipped with a note."""
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    order = np.unique(np.linspace(0, len(source) - 1, min(n, len(source))).round().astype(int))
    ds = TileDataset(source, size or cfg.model.img_size, INTERPOLATION, order.tolist())
    images, paths = [], []
    for k in range(len(ds)):
        item = ds[k]
        if "error" in item:
            print(f"warning: skipping unreadable tile {source.path(item['index'])}: {item['error']}", file=sys.stderr)
            continue
        images.append(item["image"])
        paths.append(source.path(item["index"]))
    if not images:
        raise SdmaeError("none of the chosen tiles could be read")
    return torch.stack(images), paths
