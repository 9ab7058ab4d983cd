"""Whole-slide images through OpenSlide: tissue detection on a thumbnail and a grid of tissue tiles."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from sdmae.data.base import Source, UnreadableTile
from sdmae.errors import UsageError

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif"}
# suffixes that are always slides (a .tif in a folder of tiles is a tile)
SLIDE_ONLY_SUFFIXES = SLIDE_SUFFIXES - {".tif", ".tiff"}


class UnreadableSlide(UsageError):
    """A slide OpenSlide cannot open or read (truncated, unsupported): skipped like an unreadable tile
    where other data remain (`sdmae.data.sources`), unless data.strict."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot open slide {path}: {reason}")
        self.path, self.reason = str(path), reason


def open_slide(path: str | Path):
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except Exception as e:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
        raise UnreadableSlide(path, str(e) or type(e).__name__) from e


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (maximises the between-class variance)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.clip(omega * (1 - omega), 1e-12, None)
    return float(np.argmax(between))


def tissue_mask(thumbnail: Image.Image) -> np.ndarray:
    """Tissue = saturated pixels (Otsu on the HSV saturation), which leaves out white glass and grey dust."""
    sat = np.asarray(thumbnail.convert("RGB").convert("HSV"))[..., 1]
    thr = max(otsu_threshold(sat), 15.0)
    return sat > thr


@dataclass(frozen=True)
class Tile:
    x: int  # level-0 pixel coordinates of the tile's top-left corner
    y: int
    level: int
    read_size: int  # pixels read at `level`, resized to the tile size
    mpp: Optional[float]


def choose_level(slide, size: int, mpp: Optional[float], level: int) -> tuple[int, int, Optional[float]]:
    """(level to read, pixels to read there, resulting mpp) for tiles of `size` px at `mpp` (or at `level`)."""
    base = slide.properties.get("openslide.mpp-x")
    base_mpp = float(base) if base else None
    if mpp is None:
        if not 0 <= level < slide.level_count:
            raise UsageError(f"data.level {level} does not exist (slide has {slide.level_count} levels)")
        ds = slide.level_downsamples[level]
        return level, size, base_mpp * ds if base_mpp else None
    if base_mpp is None:
        raise UsageError("data.mpp is set but the slide does not record its microns per pixel; use data.level")
    factor = mpp / base_mpp  # level-0 pixels per output pixel
    best = max((i for i, d in enumerate(slide.level_downsamples) if d <= factor * 1.01), default=0)
    read = int(round(size * factor / slide.level_downsamples[best]))
    return best, read, mpp


def tissue_tiles(slide, size: int, mpp: Optional[float] = None, level: int = 0,
                 tissue_min: float = 0.5) -> list[Tile]:
    """Non-overlapping tiles whose tissue fraction (on a thumbnail mask) is at least `tissue_min`."""
    lvl, read, out_mpp = choose_level(slide, size, mpp, level)
    W, H = slide.dimensions
    step = int(round(read * slide.level_downsamples[lvl]))  # tile side in level-0 pixels
    scale = max(W, H) / 1024
    thumb = slide.get_thumbnail((max(1, int(W / scale)), max(1, int(H / scale))))
    mask = tissue_mask(thumb)
    sy, sx = mask.shape[0] / H, mask.shape[1] / W
    tiles = []
    for y in range(0, H - step + 1, step):
        for x in range(0, W - step + 1, step):
            m = mask[int(y * sy): max(int((y + step) * sy), int(y * sy) + 1),
                     int(x * sx): max(int((x + step) * sx), int(x * sx) + 1)]
            if m.size and m.mean() >= tissue_min:
                tiles.append(Tile(x, y, lvl, read, out_mpp))
    return tiles


def read_tile(slide, tile: Tile, size: int) -> Image.Image:
    img = slide.read_region((tile.x, tile.y), tile.level, (tile.read_size, tile.read_size))
    bg = Image.new("RGB", img.size, (255, 255, 255))
    bg.paste(img, mask=img.split()[3])  # transparent (outside the scanned area) -> white
    if tile.read_size != size:
        bg = bg.resize((size, size), Image.BILINEAR)
    return bg


class SlideSource(Source):
    """Tissue tiles of one whole-slide image, cut on the fly. The OpenSlide handle opens once per process."""

    def __init__(self, path: str | Path, size: int, mpp: Optional[float] = None, level: int = 0,
                 tissue_min: float = 0.5):
        self.file = str(path)
        self.size = size
        self.tile_shape = (size, size)
        handle = open_slide(path)
        try:
            self.tiles = tissue_tiles(handle, size, mpp, level, tissue_min)
        except UsageError:
            raise
        except Exception as e:  # a truncated file can open and then fail on its first read (the thumbnail)
            raise UnreadableSlide(path, f"{type(e).__name__}: {e}") from e
        if not self.tiles:
            raise UsageError(f"no tissue tiles of {size} px found in slide {path}")
        self._slide = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.tiles)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_slide"] = None
        return state

    def read(self, i: int) -> Image.Image:
        if self._slide is None or self._pid != os.getpid():
            self._slide, self._pid = open_slide(self.file), os.getpid()
        try:
            return read_tile(self._slide, self.tiles[i], self.size)
        except Exception as e:
            raise UnreadableTile(self.path(i), f"{type(e).__name__}: {e}") from e

    def path(self, i: int) -> str:
        t = self.tiles[i]
        return f"{self.file}#x={t.x},y={t.y},level={t.level}"
