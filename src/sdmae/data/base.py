"""The tile-source protocol every kind of data follows, and the sources built from other sources.

A source is a random-access list of RGB tiles:

- `len(src)`; `src.read(i)` -> PIL RGB image; `src.read_array(i)` -> uint8 array (H, W, 3);
- `src.path(i)` -> where the tile comes from (a file, or `CONTAINER#detail` for a tile inside a slide,
  an HDF5 file or a packed file);
- `src.label(i)` -> index into `src.classes`, or -1 when unlabelled; `src.classes` -> sorted class names
  ([] when the source has no labels); `src.split(i)` -> the item's split name when the data defines one
  (a CSV split column, PCam's files, MHIST's partition), else "";
- `src.tile_shape` -> (H, W) when every tile has that size (packed files, HDF5, slide tiles), else None;
  such sources feed the batched on-device augmentation;
- `src.files` -> one image file per item when items are separate files (folders, CSV lists), else None:
  these are the items a pre-scan decodes to find unreadable ones.

Unreadable items raise `UnreadableTile` from `read` / `read_array`.
"""
from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from typing import Optional, Sequence

import numpy as np
from PIL import Image


class UnreadableTile(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class Source(ABC):
    """Defaults shared by all sources. A subclass defines __len__, path, and read or read_array (each
    defaults to the other), plus label and classes when it has labels."""

    classes: list[str] = []
    tile_shape: Optional[tuple[int, int]] = None
    files: Optional[list[str]] = None

    @abstractmethod
    def __len__(self) -> int: ...

    def read(self, i: int) -> Image.Image:
        return Image.fromarray(self.read_array(i))

    def read_array(self, i: int) -> np.ndarray:
        return np.asarray(self.read(i), dtype=np.uint8)

    def read_into(self, i: int, out: np.ndarray) -> None:
        out[...] = self.read_array(i)

    @abstractmethod
    def path(self, i: int) -> str: ...

    def label(self, i: int) -> int:
        return -1

    def split(self, i: int) -> str:
        return ""


class SubsetSource(Source):
    """The items `indices` of `source`, in that order (a split, or the readable items after a scan)."""

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = source.classes
        self.tile_shape = source.tile_shape
        self.files = [source.files[i] for i in self.indices] if source.files is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> Image.Image:
        return self.source.read(int(self.indices[i]))

    def read_array(self, i: int) -> np.ndarray:
        return self.source.read_array(int(self.indices[i]))

    def read_into(self, i: int, out: np.ndarray) -> None:
        self.source.read_into(int(self.indices[i]), out)

    def path(self, i: int) -> str:
        return self.source.path(int(self.indices[i]))

    def label(self, i: int) -> int:
        return self.source.label(int(self.indices[i]))

    def split(self, i: int) -> str:
        return self.source.split(int(self.indices[i]))


class ConcatSource(Source):
    """Several sources as one; classes are merged by name (sorted), labels mapped onto the merged list."""

    def __init__(self, sources: Sequence[Source]):
        self.sources = list(sources)
        self.offsets = list(np.cumsum([0] + [len(s) for s in self.sources[:-1]]).tolist())
        self.total = sum(len(s) for s in self.sources)
        self.classes = sorted({c for s in self.sources for c in s.classes})
        index = {c: i for i, c in enumerate(self.classes)}
        self._maps = [[index[c] for c in s.classes] for s in self.sources]
        shapes = {s.tile_shape for s in self.sources}
        self.tile_shape = shapes.pop() if len(shapes) == 1 else None
        if all(s.files is not None for s in self.sources):
            self.files = [f for s in self.sources for f in s.files]

    def __len__(self) -> int:
        return self.total

    def _locate(self, i: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.offsets, i) - 1
        return k, i - self.offsets[k]

    def read(self, i: int) -> Image.Image:
        k, j = self._locate(i)
        return self.sources[k].read(j)

    def read_array(self, i: int) -> np.ndarray:
        k, j = self._locate(i)
        return self.sources[k].read_array(j)

    def read_into(self, i: int, out: np.ndarray) -> None:
        k, j = self._locate(i)
        self.sources[k].read_into(j, out)

    def path(self, i: int) -> str:
        k, j = self._locate(i)
        return self.sources[k].path(j)

    def label(self, i: int) -> int:
        k, j = self._locate(i)
        lab = self.sources[k].label(j)
        return self._maps[k][lab] if lab >= 0 else -1

    def split(self, i: int) -> str:
        k, j = self._locate(i)
        return self.sources[k].split(j)


def file_items(source: Source) -> list[tuple[int, str]]:
    """(index, file) for every item of `source` that is a separate image file, through subsets and concats."""
    if isinstance(source, ConcatSource):
        return [(off + i, f) for off, s in zip(source.offsets, source.sources) for i, f in file_items(s)]
    if isinstance(source, SubsetSource):
        inner = dict(file_items(source.source))
        return [(k, inner[int(j)]) for k, j in enumerate(source.indices) if int(j) in inner]
    if source.files is not None:
        return list(enumerate(source.files))
    return []
