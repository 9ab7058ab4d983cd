"""CSV lists of tiles, `path,label[,split]`, and MHIST's `annotations.csv` (the same idea, its own columns).

A header row is optional: when the first row names a path column (path, file, filename, image, image name)
the columns are found by name (label: label, class, target; split: split, partition, set), otherwise they
are taken in the order path, label, split. Relative paths are relative to the CSV's folder (or `root`).
Labels are class names (numbers are names too, as with class-tree folders); an empty label is unlabelled.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from sdmae.data.images import ImageFilesSource
from sdmae.errors import UsageError

PATH_COLUMNS = ("path", "file", "filename", "image", "image name", "image_name")
LABEL_COLUMNS = ("label", "class", "target", "majority vote label")
SPLIT_COLUMNS = ("split", "partition", "set")
SPLIT_ALIASES = ({"train", "training"}, {"val", "valid", "validation"}, {"test", "testing"})


def same_split(a: str, b: str) -> bool:
    """Split names match case-insensitively, with val / valid / validation (etc.) as one name."""
    a, b = a.strip().lower(), b.strip().lower()
    return a == b or any(a in g and b in g for g in SPLIT_ALIASES)


def _column(header: list[str], names: tuple, what: str, csv_path: Path, required: bool) -> Optional[int]:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    if required:
        raise UsageError(f"CSV list {csv_path} has no {what} column (header: {', '.join(header)}; "
                         f"expected one of {', '.join(names)})")
    return None


class CSVSource(ImageFilesSource):
    """Tiles listed in a CSV file; `split` keeps the rows of one split (needs a split column)."""

    def __init__(self, csv_path: str | Path, split: Optional[str] = None, root: Optional[str | Path] = None):
        self.csv_path = Path(csv_path)
        base = Path(root) if root is not None else self.csv_path.parent
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise UsageError(f"cannot read CSV list {self.csv_path}: {e}") from e
        if not rows:
            raise UsageError(f"CSV list {self.csv_path} is empty")
        if rows[0][0].strip().lower() in PATH_COLUMNS:
            header, rows = rows[0], rows[1:]
            ip = _column(header, PATH_COLUMNS, "path", self.csv_path, True)
            il = _column(header, LABEL_COLUMNS, "label", self.csv_path, False)
            isp = _column(header, SPLIT_COLUMNS, "split", self.csv_path, False)
        else:
            width = len(rows[0])
            ip, il, isp = 0, 1 if width > 1 else None, 2 if width > 2 else None
        if split is not None:
            if isp is None:
                raise UsageError(f"CSV list {self.csv_path} has no split column, so it has no split '{split}'")
            names = sorted({r[isp].strip() for r in rows if len(r) > isp})
            rows = [r for r in rows if len(r) > isp and same_split(r[isp], split)]
            if not rows:
                raise UsageError(f"CSV list {self.csv_path} has no rows of split '{split}' "
                                 f"(splits: {', '.join(names)})")
        if not rows:
            raise UsageError(f"CSV list {self.csv_path} lists no tiles")
        self.files = [str(base / r[ip].strip()) for r in rows]
        names = [r[il].strip() if il is not None and len(r) > il else "" for r in rows]
        self.classes = sorted({n for n in names if n})
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = [index[n] if n else -1 for n in names]
        self.splits = [r[isp].strip() if isp is not None and len(r) > isp else "" for r in rows]

    def split(self, i: int) -> str:
        return self.splits[i]


def is_mhist(folder: Path) -> bool:
    """MHIST's layout: `annotations.csv` beside an `images/` folder."""
    return (folder / "annotations.csv").is_file() and (folder / "images").is_dir()


def mhist_source(folder: Path, split: Optional[str] = None) -> CSVSource:
    """MHIST (HP vs SSA): `Image Name`, `Majority Vote Label`, `Partition` (train / test) columns."""
    return CSVSource(folder / "annotations.csv", split=split, root=folder / "images")
