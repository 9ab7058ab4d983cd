"""PatchCamelyon's HDF5 files under their official names: `camelyonpatch_level_2_split_{split}_x.h5` (images,
dataset `x`, (N, 96, 96, 3) uint8) and `..._y.h5` (labels, dataset `y`, (N, 1, 1, 1)).

The label files are read once when the source opens; the image file is opened once per process (data
workers included) and then read by row, never reopened per item.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from sdmae.data.base import ConcatSource, Source, UnreadableTile
from sdmae.data.csvlist import same_split
from sdmae.errors import UsageError

PCAM_SPLITS = ("train", "valid", "test")
PCAM_X = re.compile(r"^camelyonpatch_level_2_split_(\w+?)_x\.h5$")
CLASSES = ["0", "1"]  # 1: metastatic tissue in the central 32 x 32 px


def pcam_x_files(folder: Path) -> dict[str, Path]:
    """{split: x file} of the PCam image files in `folder`."""
    out = {}
    for p in sorted(folder.iterdir()):
        m = PCAM_X.match(p.name)
        if m:
            out[m.group(1)] = p
    return out


class H5Source(Source):
    """One `*_x.h5` image file with its `*_y.h5` labels when present (PCam layout, or any x/y pair)."""

    def __init__(self, x_path: str | Path):
        import h5py

        self.x_path = Path(x_path)
        m = PCAM_X.match(self.x_path.name)
        self.split_name = m.group(1) if m else ""
        try:
            with h5py.File(self.x_path, "r") as f:
                x = f["x"]
                if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
                    raise UsageError(f"{self.x_path}: dataset 'x' must be (N, H, W, 3) uint8, got "
                                     f"{x.shape} {x.dtype}")
                self.n, self.tile_shape = x.shape[0], (x.shape[1], x.shape[2])
        except (OSError, KeyError) as e:
            raise UsageError(f"cannot open HDF5 images {self.x_path} (expected a dataset 'x'): {e}") from e
        y_path = self.x_path.with_name(self.x_path.name[: -len("_x.h5")] + "_y.h5")
        self.labels = None
        if y_path.exists():
            try:
                with h5py.File(y_path, "r") as f:
                    y = np.asarray(f["y"]).reshape(-1).astype(np.int64)
            except (OSError, KeyError) as e:
                raise UsageError(f"cannot read HDF5 labels {y_path} (expected a dataset 'y'): {e}") from e
            if len(y) != self.n:
                raise UsageError(f"{y_path} has {len(y)} labels for {self.n} images in {self.x_path}")
            self.labels = y
            self.classes = [str(c) for c in range(int(y.max()) + 1)] if self.n else []
            if set(np.unique(y).tolist()) <= {0, 1}:
                self.classes = CLASSES
        self._file = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def _x(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.x_path, "r"), os.getpid()
        return self._file["x"]

    def __len__(self) -> int:
        return self.n

    def read_array(self, i: int) -> np.ndarray:
        try:
            return self._x()[i]
        except Exception as e:
            raise UnreadableTile(self.path(i), f"{type(e).__name__}: {e}") from e

    def path(self, i: int) -> str:
        return f"{self.x_path}#{i}"

    def label(self, i: int) -> int:
        return int(self.labels[i]) if self.labels is not None else -1

    def split(self, i: int) -> str:
        return self.split_name


def pcam_source(path: Path, split: Optional[str] = None) -> Source:
    """A PCam folder (all splits in train, valid, test order, or one split) or one `*_x.h5` file."""
    if path.is_file():
        if split is not None:
            raise UsageError(f"{path} is a single HDF5 file; give its folder to choose the split '{split}'")
        return H5Source(path)
    files = pcam_x_files(path)
    if split is not None:
        chosen = [s for s in files if same_split(s, split)]
        if not chosen:
            raise UsageError(f"no PCam split '{split}' in {path} (found: {', '.join(files) or 'none'})")
        return H5Source(files[chosen[0]])
    order = sorted(files, key=lambda s: PCAM_SPLITS.index(s) if s in PCAM_SPLITS else len(PCAM_SPLITS))
    parts = [H5Source(files[s]) for s in order]
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def gz_pcam_files(folder: Path) -> list[str]:
    """PCam files still compressed (`.h5.gz`), for a clear error message."""
    return sorted(p.name for p in folder.glob("camelyonpatch_level_2_split_*.h5.gz"))
