"""`sdmae tile`: whole-slide images -> tissue tiles on disk plus their coordinates.

Layout: `OUT/<slide name>/<slide name>_x<X>_y<Y>.<png|jpg>` (X, Y: level-0 pixels of the top-left corner),
`OUT/<slide name>/coordinates.csv` (file, slide, x, y, level, mpp, size) and `OUT/<slide name>/tiling.json`
(the settings). Tiles are written atomically (temporary name, then rename), so an interrupted run leaves no
half-written tile and the next run writes only the missing ones; a second run adds nothing. Tiles of all
slides are cut in parallel by worker processes.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from sdmae.atomic import atomic_path
from sdmae.data import slide as slides
from sdmae.errors import UsageError

FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class TilingSettings:
    size: int
    mpp: Optional[float]
    level: int
    tissue_min: float
    format: str


def tile_name(stem: str, t: slides.Tile, fmt: str) -> str:
    return f"{stem}_x{t.x}_y{t.y}.{fmt}"


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _cut(job: tuple) -> tuple[str, int, int]:
    """Writes the missing tiles of one chunk; returns (slide, written, already there)."""
    slide_path, folder, stem, tiles, s = job
    handle = slides.open_slide(slide_path)
    written = existing = 0
    for t in tiles:
        target = Path(folder) / tile_name(stem, t, s.format)
        if target.exists():
            existing += 1
            continue
        buf = io.BytesIO()
        img = slides.read_tile(handle, t, s.size)
        img.save(buf, format="PNG" if s.format == "png" else "JPEG", **({"quality": 95} if s.format == "jpg" else {}))
        _write_atomic(target, buf.getvalue())
        written += 1
    handle.close()
    return slide_path, written, existing


def _coordinates(stem: str, slide_path: str, tiles: list, s: TilingSettings) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "slide", "x", "y", "level", "mpp", "size"])
    for t in tiles:
        w.writerow([tile_name(stem, t, s.format), slide_path, t.x, t.y, t.level,
                    "" if t.mpp is None else f"{t.mpp:.4f}", s.size])
    return buf.getvalue().encode()


def _prepare(slide_path: Path, out: Path, s: TilingSettings) -> tuple[Path, list]:
    """The slide's folder (settings checked or recorded) and its tissue tiles."""
    handle = slides.open_slide(slide_path)
    tiles = slides.tissue_tiles(handle, s.size, s.mpp, s.level, s.tissue_min)
    handle.close()
    folder = out / slide_path.stem
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "tiling.json"
    wanted = {"slide": str(slide_path), **asdict(s)}
    if record.exists():
        before = json.loads(record.read_text())
        if before != wanted:
            raise UsageError(f"{folder} holds tiles of {before.get('slide')} cut with other settings ({before}); "
                             f"use another --out or the same settings")
    else:
        _write_atomic(record, json.dumps(wanted, indent=1).encode())
    return folder, tiles


def tile_slides(paths: list[str], out: str | Path, s: TilingSettings, workers: int = 0,
                chunk: int = 32) -> dict:
    """Cuts every slide's tissue tiles into `out`; returns {slide: {"tiles", "written", "existing"}}."""
    if s.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    out = Path(out)
    slide_paths = [Path(p) for p in paths]
    for p in slide_paths:
        if not p.exists():
            raise UsageError(f"slide does not exist: {p}")
    stems = [p.stem for p in slide_paths]
    dup = sorted({x for x in stems if stems.count(x) > 1})
    if dup:
        raise UsageError(f"several slides are named {', '.join(dup)}: tile them into different --out folders")
    summary, jobs = {}, []
    for p in slide_paths:
        folder, tiles = _prepare(p, out, s)
        summary[str(p)] = {"tiles": len(tiles), "written": 0, "existing": 0, "folder": str(folder)}
        jobs += [(str(p), str(folder), p.stem, tiles[k: k + chunk], s) for k in range(0, len(tiles), chunk)]
        coords = _coordinates(p.stem, str(p), tiles, s)
        target = folder / "coordinates.csv"
        if not target.exists() or target.read_bytes() != coords:
            _write_atomic(target, coords)
    total = sum(len(j[3]) for j in jobs)
    with tqdm(total=total, desc="tiling", unit="tile", file=sys.stderr, dynamic_ncols=True) as bar:
        if workers > 0 and len(jobs) > 1:
            ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_cut, j): len(j[3]) for j in jobs}
                for f in as_completed(futures):
                    _record(summary, f.result(), bar, futures[f])
        else:
            for j in jobs:
                _record(summary, _cut(j), bar, len(j[3]))
    return summary


def _record(summary: dict, result: tuple, bar, n: int) -> None:
    slide_path, written, existing = result
    summary[slide_path]["written"] += written
    summary[slide_path]["existing"] += existing
    bar.update(n)
