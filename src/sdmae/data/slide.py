"""Whole-slide images through OpenSlide: tissue detection on a thumbnail, a grid of tissue tiles, and tiles read
at the speed of memory where the slide's tissue fits a per-process cache.

OpenSlide decodes every JPEG tile a region touches on every `read_region` (about 0.7 ms for a 224 px tile on
a 2-core EPYC, whatever its cache): that, not Python, bounds streaming from slides. A `SlideSource` whose
tissue fits `data.slide_cache_mb` therefore reads it in blocks of BLOCK x BLOCK level pixels, once per
process, and cuts tiles out of the decoded blocks (the same pixels: blocks and tiles are composited the same
way). Larger slides are read tile by tile; for long runs on big cohorts, `sdmae data tile` + `sdmae data pack`
once is the fast path. The tissue grid of each slide is computed once and cached (`sdmae.data.tissue_cache`).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from sdmae.data.base import Source, UnreadableTile
from sdmae.data.tissue_cache import load_grid, save_grid
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


def cached_tissue_tiles(path, slide, size: int, mpp: Optional[float], level: int, tissue_min: float,
                        use_cache: bool = True) -> list[Tile]:
    """`tissue_tiles`, from the cache when this slide was tiled with these parameters before."""
    params = {"size": size, "mpp": mpp, "level": level, "tissue_min": tissue_min}
    grid = load_grid(path, params) if use_cache else None
    if grid is not None:
        return [Tile(int(x), int(y), grid["level"], grid["read_size"], grid["mpp"]) for x, y in grid["xy"]]
    tiles = tissue_tiles(slide, size, mpp, level, tissue_min)
    if use_cache and tiles:
        t = tiles[0]
        save_grid(path, params, {"level": t.level, "read_size": t.read_size, "mpp": t.mpp,
                                 "xy": [[u.x, u.y] for u in tiles]})
    return tiles


def on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (H, W, 4) uint8 -> RGB over white (transparent = outside the scanned area), rounded like PIL's
    paste with an alpha mask; a copy, writable."""
    rgb, a = rgba[..., :3], rgba[..., 3:]
    if a.min() == 255:
        return np.ascontiguousarray(rgb)
    t = rgb.astype(np.uint32) * a + 255 * (255 - a.astype(np.uint32)) + 128
    return ((t + (t >> 8)) >> 8).astype(np.uint8)


def read_rgb(slide, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
    """The region at level-0 (x, y), w x h pixels of `level`, as RGB over white."""
    return on_white(np.asarray(slide.read_region((x, y), level, (w, h))))


def fit_size(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


def read_tile(slide, tile: Tile, size: int) -> Image.Image:
    return Image.fromarray(fit_size(read_rgb(slide, tile.x, tile.y, tile.level, tile.read_size, tile.read_size), size))


BLOCK = 1024  # side of a cached block, in level pixels


class BlockCache:
    """Decoded RGB blocks of slides, least recently used dropped beyond `capacity` bytes. One per process
    (forked workers start from the parent's copy), shared by every slide the process reads."""

    def __init__(self):
        self.blocks: OrderedDict = OrderedDict()
        self.bytes = 0
        self.capacity = 0

    def get(self, key, load):
        block = self.blocks.get(key)
        if block is None:
            block = load()
            self.blocks[key] = block
            self.bytes += block.nbytes
            while self.bytes > self.capacity and len(self.blocks) > 1:
                self.bytes -= self.blocks.popitem(last=False)[1].nbytes
        else:
            self.blocks.move_to_end(key)
        return block


BLOCKS = BlockCache()


def block_span(tile: Tile, ds: float) -> tuple[int, int, range, range]:
    """(level x, level y, block columns, block rows) a tile covers."""
    x, y, r = int(round(tile.x / ds)), int(round(tile.y / ds)), tile.read_size
    return x, y, range(x // BLOCK, (x + r - 1) // BLOCK + 1), range(y // BLOCK, (y + r - 1) // BLOCK + 1)


class SlideSource(Source):
    """Tissue tiles of one whole-slide image, cut on the fly. The OpenSlide handle opens once per process."""

    def __init__(self, path: str | Path, size: int, mpp: Optional[float] = None, level: int = 0,
                 tissue_min: float = 0.5, cache_mb: int = 0, tissue_cache: bool = True):
        self.file = str(path)
        self.size = size
        self.tile_shape = (size, size)
        handle = open_slide(path)
        try:
            self.tiles = cached_tissue_tiles(path, handle, size, mpp, level, tissue_min, tissue_cache)
        except UsageError:
            raise
        except Exception as e:  # a truncated file can open and then fail on its first read (the thumbnail)
            raise UnreadableSlide(path, f"{type(e).__name__}: {e}") from e
        if not self.tiles:
            raise UsageError(f"no tissue tiles of {size} px found in slide {path}")
        lvl = self.tiles[0].level
        self._ds = float(handle.level_downsamples[lvl])
        self._level_size = handle.level_dimensions[lvl]
        self.blocked = self._fits(cache_mb << 20)
        if self.blocked:
            BLOCKS.capacity = max(BLOCKS.capacity, cache_mb << 20)
        self._slide = None
        self._pid = None

    def _fits(self, capacity: int) -> bool:
        """Whether the blocks under the tissue tiles fit the cache (blocks need whole level pixels: integer
        downsamples only)."""
        if capacity <= 0 or not self._ds.is_integer():
            return False
        keys = set()
        for t in self.tiles:
            _, _, cols, rows = block_span(t, self._ds)
            keys.update((bx, by) for bx in cols for by in rows)
        return len(keys) * BLOCK * BLOCK * 3 <= capacity

    def __len__(self) -> int:
        return len(self.tiles)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_slide"] = None
        return state

    def _handle(self):
        if self._slide is None or self._pid != os.getpid():
            self._slide, self._pid = open_slide(self.file), os.getpid()
        return self._slide

    def read(self, i: int) -> Image.Image:
        return Image.fromarray(self.read_array(i))

    def read_array(self, i: int) -> np.ndarray:
        t = self.tiles[i]
        try:
            slide = self._handle()
            if not self.blocked:
                return fit_size(read_rgb(slide, t.x, t.y, t.level, t.read_size, t.read_size), self.size)
            return fit_size(self._from_blocks(slide, t), self.size)
        except Exception as e:
            raise UnreadableTile(self.path(i), f"{type(e).__name__}: {e}") from e

    def _block(self, slide, level: int, bx: int, by: int) -> np.ndarray:
        def load():
            W, H = self._level_size
            w, h = min(BLOCK, W - bx * BLOCK), min(BLOCK, H - by * BLOCK)
            ds = int(self._ds)
            return read_rgb(slide, bx * BLOCK * ds, by * BLOCK * ds, level, w, h)

        return BLOCKS.get((self.file, level, bx, by), load)

    def _from_blocks(self, slide, t: Tile) -> np.ndarray:
        x, y, cols, rows = block_span(t, self._ds)
        r = t.read_size
        if x + r > self._level_size[0] or y + r > self._level_size[1]:  # rounding at a level's edge
            return read_rgb(slide, t.x, t.y, t.level, r, r)
        out = np.empty((r, r, 3), dtype=np.uint8)
        for by in rows:
            for bx in cols:
                b = self._block(slide, t.level, bx, by)
                x0, y0 = max(x, bx * BLOCK), max(y, by * BLOCK)
                x1, y1 = min(x + r, bx * BLOCK + b.shape[1]), min(y + r, by * BLOCK + b.shape[0])
                out[y0 - y: y1 - y, x0 - x: x1 - x] = b[y0 - by * BLOCK: y1 - by * BLOCK, x0 - bx * BLOCK: x1 - bx * BLOCK]
        return out

    def path(self, i: int) -> str:
        t = self.tiles[i]
        return f"{self.file}#x={t.x},y={t.y},level={t.level}"
