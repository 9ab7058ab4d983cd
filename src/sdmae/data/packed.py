"""The packed tile format: fixed-size uint8 tiles in memory-mappable shards, written by `sdmae data pack`.

A pack is a folder:

    index.json        format, version, tile size, count, classes, split names, shards with sha256
    tiles-00000.u8    raw uint8 (n, H, W, 3), C order; every shard holds `tiles_per_shard` tiles but the last
    meta.npz          labels (int32, -1 unlabelled), split (int16 index into `splits`, -1 none)
    origins.txt       the source path of every tile, one per line

Shards are memory-mapped, so random access costs a page-cache read and datasets larger than RAM work. On
open, every shard's size is checked and (unless `verify=False`) its sha256 is recomputed and compared with
the index: a truncated or corrupted pack is an error before training, not a silent wrong pixel.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

import numpy as np

from sdmae import __version__
from sdmae.data.base import Source, UnreadableTile
from sdmae.data.csvlist import same_split
from sdmae.data.images import fit_square
from sdmae.errors import UsageError

FORMAT, VERSION = "sdmae-pack", 1
INDEX = "index.json"


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_pack(path: Path) -> bool:
    return path.is_dir() and (path / INDEX).is_file()


class PackedSource(Source):
    """Random access into a pack; labels, classes and splits as stored. `split` keeps one split."""

    def __init__(self, path: str | Path, verify: bool = True, split: Optional[str] = None):
        self.root = Path(path)
        try:
            index = json.loads((self.root / INDEX).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.root} is not a readable packed file ({INDEX}: {e})") from e
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise UsageError(f"{self.root}: not a {FORMAT} v{VERSION} pack (format {index.get('format')!r}, "
                             f"version {index.get('version')!r})")
        h, w = index["tile_size"]
        self.tile_shape = (h, w)
        self.tile_bytes = h * w * 3
        self.per_shard = index["tiles_per_shard"]
        self.shards = index["shards"]
        self.classes = list(index["classes"])
        self.split_names = list(index["splits"])
        self._check(index, verify)
        meta = np.load(self.root / "meta.npz")
        labels, splits = meta["labels"].astype(np.int64), meta["split"].astype(np.int64)
        self.origins = (self.root / "origins.txt").read_text(encoding="utf-8").split("\n")[: index["count"]]
        rows = np.arange(index["count"])
        if split is not None:
            keep = [k for k, s in enumerate(self.split_names) if same_split(s, split)]
            if not keep:
                raise UsageError(f"packed file {self.root} has no split '{split}' "
                                 f"(splits: {', '.join(self.split_names) or 'none'})")
            rows = rows[np.isin(splits, keep)]
        self.rows, self.labels, self.splits = rows, labels, splits
        self._maps: Optional[list] = None

    def _check(self, index: dict, verify: bool) -> None:
        files = [(self.root / s["file"], s["count"] * self.tile_bytes, s["sha256"]) for s in self.shards]
        files += [(self.root / m["file"], None, m["sha256"]) for m in index["meta"]]
        for p, size, _ in files:
            if not p.is_file():
                raise UsageError(f"packed file {self.root} is incomplete: {p.name} is missing")
            if size is not None and p.stat().st_size != size:
                raise UsageError(f"packed file {self.root} is damaged: {p.name} has {p.stat().st_size} bytes, "
                                 f"expected {size} (re-create it with `sdmae data pack`)")
        if verify:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                digests = list(pool.map(sha256_file, [p for p, _, _ in files]))
            for (p, _, want), got in zip(files, digests):
                if got != want:
                    raise UsageError(f"packed file {self.root} is corrupted: checksum of {p.name} does not match "
                                     f"the index (re-create it with `sdmae data pack`)")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None
        return state

    def _shard(self, k: int) -> np.ndarray:
        """Shard k as a read-only array over a memory map (maps survive fork, so workers reuse them)."""
        if self._maps is None:
            self._maps = [None] * len(self.shards)
        if self._maps[k] is None:
            h, w = self.tile_shape
            with open(self.root / self.shards[k]["file"], "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[k] = np.frombuffer(mm, dtype=np.uint8).reshape(self.shards[k]["count"], h, w, 3)
        return self._maps[k]

    def __len__(self) -> int:
        return len(self.rows)

    def read_array(self, i: int) -> np.ndarray:
        r = int(self.rows[i])
        try:
            return np.array(self._shard(r // self.per_shard)[r % self.per_shard])
        except OSError as e:
            raise UnreadableTile(self.path(i), f"{type(e).__name__}: {e}") from e

    def read_into(self, i: int, out: np.ndarray) -> None:
        """One copy from the page cache into `out` (batched reads gather straight into the batch's buffer)."""
        r = int(self.rows[i])
        try:
            out[...] = self._shard(r // self.per_shard)[r % self.per_shard]
        except OSError as e:
            raise UnreadableTile(self.path(i), f"{type(e).__name__}: {e}") from e

    def path(self, i: int) -> str:
        return f"{self.root}#{self.origins[int(self.rows[i])]}"

    def label(self, i: int) -> int:
        return int(self.labels[self.rows[i]])

    def split(self, i: int) -> str:
        s = int(self.splits[self.rows[i]])
        return self.split_names[s] if s >= 0 else ""


@dataclass
class PackResult:
    out: Path
    count: int = 0
    resized: int = 0
    skipped: list = field(default_factory=list)  # (path, reason)


_WORKER_SOURCE = None


def _init_worker(source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _read_chunk(args) -> list:
    """[(index, tile uint8 (S, S, 3) or None, resized, path, reason)] for a run of indices."""
    indices, size = args
    src, out = _WORKER_SOURCE, []
    for i in indices:
        try:
            if src.tile_shape == (size, size):
                out.append((i, src.read_array(i), False, "", ""))
            else:
                img = src.read(i)
                out.append((i, np.asarray(fit_square(img, size), dtype=np.uint8), img.size != (size, size), "", ""))
        except UnreadableTile as e:
            out.append((i, None, False, e.path, e.reason))
    return out


def _tiles(source, size: int, workers: int, chunk: int = 256):
    """Yields _read_chunk results in order, decoded by `workers` processes (0: in this process)."""
    jobs = [(list(range(s, min(s + chunk, len(source)))), size) for s in range(0, len(source), chunk)]
    if workers <= 0:
        _init_worker(source)
        for job in jobs:
            yield from _read_chunk(job)
        return
    ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(source,)) as pool:
        for part in pool.imap(_read_chunk, jobs):
            yield from part


def first_size(source) -> int:
    """The tile size of a pack made from `source`: its fixed tile size, or the first readable tile's side."""
    if source.tile_shape is not None:
        return min(source.tile_shape)
    for i in range(len(source)):
        try:
            return min(source.read(i).size)
        except UnreadableTile:
            continue
    raise UsageError("no readable tile to take the pack's tile size from; give --size")


class _ShardWriter:
    """Appends tiles to `tiles-NNNNN.u8` files of at most `per_shard` tiles, hashing each as it is written."""

    def __init__(self, folder: Path, per_shard: int):
        self.folder, self.per_shard = folder, per_shard
        self.shards: list[dict] = []
        self.f, self.h, self.n = None, None, 0

    def add(self, tile: np.ndarray) -> None:
        if self.f is None or self.n == self.per_shard:
            self.close()
            name = f"tiles-{len(self.shards):05d}.u8"
            self.f, self.h, self.n = open(self.folder / name, "wb"), hashlib.sha256(), 0
            self.shards.append({"file": name})
        data = np.ascontiguousarray(tile, dtype=np.uint8).tobytes()
        self.f.write(data)
        self.h.update(data)
        self.n += 1

    def close(self) -> None:
        if self.f is not None and not self.f.closed:
            self.f.close()
            self.shards[-1].update(count=self.n, sha256=self.h.hexdigest())


@dataclass
class _Meta:
    """Per-tile labels, split indices and origins of the tiles packed so far."""
    labels: list = field(default_factory=list)
    splits: list = field(default_factory=list)
    origins: list = field(default_factory=list)
    split_names: list = field(default_factory=list)

    def add(self, source, i: int) -> None:
        self.labels.append(source.label(i))
        s = source.split(i)
        if s and s not in self.split_names:
            self.split_names.append(s)
        self.splits.append(self.split_names.index(s) if s else -1)
        self.origins.append(source.path(i).replace("\n", " "))


def write_pack(source, out: str | Path, size: Optional[int] = None, workers: int = 0, shard_mb: int = 256,
               overwrite: bool = False, progress=None) -> PackResult:
    """Packs every readable tile of `source` (square tiles of `size` px; others are centre-cropped and
    resized) with labels, classes and splits. Written to a temporary folder, renamed into place at the end."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; remove it, choose another --out or pass --overwrite")
    size = size or first_size(source)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result, meta = PackResult(out), _Meta()
    writer = _ShardWriter(tmp, max(1, (shard_mb << 20) // (size * size * 3)))
    try:
        for i, tile, resized, path, reason in _tiles(source, size, workers):
            if progress is not None:
                progress.update(1)
            if tile is None:
                result.skipped.append((path, reason))
                continue
            writer.add(tile)
            result.resized += int(resized)
            meta.add(source, i)
        if not writer.shards:
            raise UsageError("no readable tiles to pack")
        writer.close()
        result.count = len(meta.labels)
        _write_index(tmp, source, size, writer, meta, result)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _write_index(tmp: Path, source, size: int, writer: _ShardWriter, meta: _Meta, result: PackResult) -> None:
    np.savez(tmp / "meta.npz", labels=np.asarray(meta.labels, np.int32), split=np.asarray(meta.splits, np.int16))
    (tmp / "origins.txt").write_text("\n".join(meta.origins), encoding="utf-8")
    index = {"format": FORMAT, "version": VERSION, "tile_size": [size, size], "count": result.count,
             "tiles_per_shard": writer.per_shard, "classes": list(source.classes), "splits": meta.split_names,
             "shards": writer.shards,
             "meta": [{"file": m, "sha256": sha256_file(tmp / m)} for m in ("meta.npz", "origins.txt")],
             "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
             "created_by": f"sdmae {__version__}"}
    (tmp / INDEX).write_text(json.dumps(index, indent=1))
