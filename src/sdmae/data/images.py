"""Image files: decoding any tile to 8-bit RGB, and folders of tiles (flat, nested or class trees)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sdmae.data.base import Source, UnreadableTile
from sdmae.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grey: scale the range to 8 bits
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.max() > 255 else 255.0
        im = Image.fromarray((np.clip(a, 0, None) / hi * 255).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))  # transparent -> white, like glass
        bg.paste(im, mask=im.split()[3])
        return bg
    return im.convert("RGB")


def _tifffile_rgb(path: str) -> Image.Image:
    """TIFF layouts Pillow cannot decode (16-bit RGB, planar), through tifffile."""
    import tifffile

    a = tifffile.imread(path)
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = (np.clip(a, 0, None) / max(a.max(), 1.0) * 255 if a.max() > 255 else a).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]))


def load_rgb(path: str) -> Image.Image:
    """Any readable image as 8-bit RGB (grayscale, palette, RGBA and 16-bit converted), else UnreadableTile."""
    try:
        if Path(path).stat().st_size == 0:
            raise UnreadableTile(path, "empty file (0 bytes)")
    except OSError as e:
        raise UnreadableTile(path, f"{type(e).__name__}: {e}") from e
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except Exception as e:
        if Path(path).suffix.lower() in (".tif", ".tiff"):
            try:
                return _tifffile_rgb(path)
            except Exception:
                pass
        raise UnreadableTile(path, f"{type(e).__name__}: {e}") from e


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Centre square crop, then resize to `size` (one resampling step; a square tile is only resized)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + s, top + s))


def image_files(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted; hidden files and folders (.*) are left out."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class ImageFilesSource(Source):
    """Image files listed in `self.files`, with one label each in `self.labels` (-1: none)."""

    files: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> Image.Image:
        return load_rgb(self.files[i])

    def path(self, i: int) -> str:
        return self.files[i]

    def label(self, i: int) -> int:
        return self.labels[i]


class FolderSource(ImageFilesSource):
    """Images under a folder, recursively. If every image sits in a first-level subfolder, the subfolder
    names (sorted) are the classes: a class tree `ROOT/<class>/<image>`."""

    def __init__(self, root: str | Path, files: list[Path] | None = None):
        self.root = Path(root)
        found = image_files(self.root) if files is None else files
        if not found:
            raise UsageError(f"no images (png, jpg, tif) found under {root}")
        self.files = [str(p) for p in found]
        parts = [p.relative_to(self.root).parts for p in found]
        if all(len(x) == 2 for x in parts):
            self.classes = sorted({x[0] for x in parts})
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[x[0]] for x in parts]
        else:
            self.classes, self.labels = [], [-1] * len(found)
