"""Finding unreadable files before long work starts: the pre-training pre-scan and `sdmae data check`.

Every item that is its own image file is decoded once (in parallel). Packed files are checked by their
checksums when opened, HDF5 files by their structure, slides by OpenSlide; their tiles are not decoded.
"""
from __future__ import annotations

import sys
from collections import Counter
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from sdmae.config import DataConfig
from sdmae.data.base import Source, SubsetSource, UnreadableTile, file_items
from sdmae.data.images import load_rgb
from sdmae.errors import SdmaeError, UsageError

SKIPPED_FILE = "skipped_files.txt"


def _probe(job: list[tuple[int, str]]) -> list[tuple[int, Optional[tuple[int, int]], str]]:
    """[(index, (width, height) or None, reason)] after decoding each file."""
    out = []
    for i, path in job:
        try:
            out.append((i, load_rgb(path).size, ""))
        except UnreadableTile as e:
            out.append((i, None, e.reason))
    return out


def scan_files(items: list[tuple[int, str]], workers: int, desc: str = "checking files",
               chunk: int = 64) -> list[tuple[int, Optional[tuple[int, int]], str]]:
    """Decodes every (index, file), with `workers` processes (0: here); results in input order."""
    jobs = [items[k: k + chunk] for k in range(0, len(items), chunk)]
    bar = tqdm(total=len(items), desc=desc, unit="file", file=sys.stderr, disable=len(items) < 2000,
               dynamic_ncols=True, mininterval=1.0)
    results = []
    if workers > 0 and len(jobs) > 1:
        with get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers) as pool:
            for part in pool.imap(_probe, jobs):
                results.extend(part)
                bar.update(len(part))
    else:
        for job in jobs:
            results.extend(_probe(job))
            bar.update(len(job))
    bar.close()
    return results


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def find_unreadable(source: Source, workers: int, min_side: int = 1) -> list[tuple[int, str, str]]:
    """[(index, path, reason)] of the source's unreadable image files, and of those smaller than `min_side` px
    (a tile smaller than one patch is not a pathology tile: resizing would invent it). Under torch.distributed
    each process decodes a 1/world share and the lists are gathered, so every process gets the same answer."""
    items = file_items(source)
    rank, world = _distributed()
    mine = [(i, source.path(i), reason or f"{size[0]}x{size[1]} px, smaller than one {min_side} px patch")
            for i, size, reason in scan_files(items[rank::world], workers)
            if reason or min(size) < min_side]
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        mine = sorted(x for part in parts for x in part)
    return mine


def drop_unreadable(source: Source, cfg: DataConfig, out: Path, main: bool = True, min_side: int = 1) -> Source:
    """The pre-training pre-scan (`data.prescan`, always under `data.strict`): with `data.strict` an
    unreadable file is an error naming it; otherwise bad files are left out, warned about and listed in
    OUT/skipped_files.txt (written by the main process; empty when none was skipped)."""
    if not (cfg.prescan or cfg.strict):
        return source
    bad = find_unreadable(source, cfg.num_workers, min_side)
    unopened = getattr(source, "unopened", [])  # slides left out when the data were opened (warned about then)
    if bad and cfg.strict:
        names = "\n".join(f"  {p}: {r}" for _, p, r in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise SdmaeError(f"{len(bad)} unreadable file(s) and data.strict=true; fix or remove them:\n{names}{more}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / SKIPPED_FILE).write_text("".join(f"{p}\t{r}\n" for p, r in unopened)
                                        + "".join(f"{p}\t{r}\n" for _, p, r in bad))
        for _, p, r in bad[:20]:
            print(f"warning: skipping unreadable file {p} ({r})", file=sys.stderr)
        if bad:
            print(f"warning: {len(bad)} unreadable file(s) skipped, listed in {out / SKIPPED_FILE}",
                  file=sys.stderr)
    if not bad:
        return source
    drop = {i for i, _, _ in bad}
    keep = [i for i in range(len(source)) if i not in drop]
    if not keep:
        raise UsageError("every file of the data is unreadable")
    return SubsetSource(source, keep)


def report(source: Source, workers: int) -> dict:
    """What `sdmae data check` prints: counts, classes, splits, tile sizes and the unreadable files."""
    items = file_items(source)
    results = scan_files(items, workers) if items else []
    sizes: Counter = Counter(f"{s[0]}x{s[1]}" for _, s, _ in results if s)
    bad = [{"path": source.path(i), "reason": r} for i, _, r in results if r]
    if source.tile_shape is not None:
        sizes[f"{source.tile_shape[1]}x{source.tile_shape[0]}"] += len(source) - len(results)
    labels = Counter(source.label(i) for i in range(len(source)))
    splits = Counter(source.split(i) for i in range(len(source)))
    return {
        "source": type(source).__name__,
        "items": len(source),
        "decoded": len(results),
        "unreadable": bad,
        "classes": {c: labels.get(k, 0) for k, c in enumerate(source.classes)},
        "unlabelled": labels.get(-1, 0),
        "splits": {s: n for s, n in sorted(splits.items()) if s},
        "sizes": dict(sizes.most_common()),
    }
