"""Tile sources behind `--data`: image folders, class trees and whole-slide images (more in the data layer).

A source is a random-access list of RGB tiles: `len(src)`, `src.read(i)` -> PIL image, `src.path(i)`,
`src.label(i)` (-1 when unlabelled) and `src.classes`. Unreadable items raise `UnreadableTile`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from sdmae.config import DataConfig
from sdmae.data import slide as slides
from sdmae.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
SAMPLE_SLIDE = Path(__file__).resolve().parent.parent / "assets" / "CMU-1-Small-Region.svs"


class UnreadableTile(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def load_rgb(path: str) -> Image.Image:
    """Any PIL-readable image as 8-bit RGB (grayscale, RGBA, palette and 16-bit converted)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                import numpy as np

                a = np.asarray(im, dtype=np.float64)
                hi = a.max() if a.max() > 255 else 255.0
                im = Image.fromarray((a / hi * 255).round().astype("uint8"))
            if im.mode == "RGBA":
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.split()[3])
                return bg
            return im.convert("RGB")
    except Exception as e:
        raise UnreadableTile(path, f"{type(e).__name__}: {e}") from e


class FolderSource:
    """Images under a folder, recursively. If every image sits in a first-level subfolder, the subfolder
    names (sorted) are the classes: a class tree `ROOT/<class>/<image>`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"no images (png, jpg, tif) found under {root}")
        self.files = [str(p) for p in files]
        parts = [p.relative_to(self.root).parts for p in files]
        if all(len(x) == 2 for x in parts):
            self.classes = sorted({x[0] for x in parts})
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[x[0]] for x in parts]
        else:
            self.classes, self.labels = [], [-1] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> Image.Image:
        return load_rgb(self.files[i])

    def path(self, i: int) -> str:
        return self.files[i]

    def label(self, i: int) -> int:
        return self.labels[i]


class SlideSource:
    """Tissue tiles of one whole-slide image, cut on the fly. The OpenSlide handle opens once per process."""

    def __init__(self, path: str | Path, size: int, mpp: Optional[float] = None, level: int = 0,
                 tissue_min: float = 0.5):
        self.file = str(path)
        self.size = size
        self.tiles = slides.tissue_tiles(slides.open_slide(path), size, mpp, level, tissue_min)
        if not self.tiles:
            raise UsageError(f"no tissue tiles of {size} px found in slide {path}")
        self.classes: list[str] = []
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
            self._slide, self._pid = slides.open_slide(self.file), os.getpid()
        try:
            return slides.read_tile(self._slide, self.tiles[i], self.size)
        except Exception as e:
            raise UnreadableTile(self.path(i), f"{type(e).__name__}: {e}") from e

    def path(self, i: int) -> str:
        t = self.tiles[i]
        return f"{self.file}#x={t.x},y={t.y},level={t.level}"

    def label(self, i: int) -> int:
        return -1


class ConcatSource:
    """Several sources as one; class names are merged by name."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        self.offsets = []
        total = 0
        for s in self.sources:
            self.offsets.append(total)
            total += len(s)
        self.total = total
        self.classes = sorted({c for s in self.sources for c in s.classes})

    def __len__(self) -> int:
        return self.total

    def _locate(self, i: int):
        import bisect

        k = bisect.bisect_right(self.offsets, i) - 1
        return self.sources[k], i - self.offsets[k]

    def read(self, i: int) -> Image.Image:
        s, j = self._locate(i)
        return s.read(j)

    def path(self, i: int) -> str:
        s, j = self._locate(i)
        return s.path(j)

    def label(self, i: int) -> int:
        s, j = self._locate(i)
        lab = s.label(j)
        return self.classes.index(s.classes[lab]) if lab >= 0 else -1


def open_one(path: str, cfg: DataConfig):
    p = Path(path)
    if not p.exists():
        raise UsageError(f"data path does not exist: {path}")
    if p.is_dir():
        return FolderSource(p)
    if p.suffix.lower() in slides.SLIDE_SUFFIXES:
        return SlideSource(p, cfg.tile_size, cfg.mpp, cfg.level, cfg.tissue_min)
    raise UsageError(f"unsupported data path {path}: expected a folder of images or a slide")


def open_sources(paths: Optional[Sequence[str]], cfg: DataConfig):
    """Opens `--data` paths (none: the built-in CC0 sample slide) as one source."""
    paths = list(paths) if paths else [str(SAMPLE_SLIDE)]
    srcs = [open_one(p, cfg) for p in paths]
    return srcs[0] if len(srcs) == 1 else ConcatSource(srcs)
