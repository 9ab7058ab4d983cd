"""What `--data`, `--train`, `--test` accept, and how a path becomes a tile source (protocol: `data.base`).

- a folder of images, recursively (png, jpg, tif, ...); a class tree `ROOT/<class>/<image>` is labelled;
  slide files in a folder (svs, ndpi, mrxs, ...) are tiled like a single slide;
- a CSV list `path,label[,split]` (`data.csvlist`), MHIST's folder (`annotations.csv` + `images/`);
- PatchCamelyon HDF5 files (a folder with the official file names, or one `*_x.h5`) (`data.pcam`);
- a packed folder written by `sdmae data pack` (`data.packed`);
- a whole-slide image (svs, tiff, ndpi, mrxs, ... through OpenSlide), tiled on the fly (`data.slide`).

A split is chosen with `PATH@SPLIT` (e.g. `pcam_dir@test`, `tiles.csv@train`, `mhist@test`,
`pcam_ai4all_jpeg@train`) or the `split` argument of `open_sources`: the CSV split column, PCam's split
files, MHIST's partition, a pack's stored splits, or a subfolder of that name. `val`, `valid` and
`validation` are one name. A path that exists as written is never split at '@'.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from sdmae.config import DataConfig
from sdmae.data.base import ConcatSource, Source, SubsetSource, UnreadableTile
from sdmae.data.csvlist import CSVSource, is_mhist, mhist_source, same_split
from sdmae.data.images import IMAGE_SUFFIXES, FolderSource, image_files, load_rgb
from sdmae.data.packed import INDEX, PackedSource, is_pack
from sdmae.data.pcam import gz_pcam_files, pcam_source, pcam_x_files
from sdmae.data.slide import SLIDE_ONLY_SUFFIXES, SLIDE_SUFFIXES, SlideSource, UnreadableSlide
from sdmae.errors import UsageError

SAMPLE_SLIDE = Path(__file__).resolve().parent.parent / "assets" / "CMU-1-Small-Region.svs"

__all__ = ["ConcatSource", "CSVSource", "FolderSource", "PackedSource", "SlideSource", "Source", "SubsetSource",
           "UnreadableTile", "IMAGE_SUFFIXES", "SAMPLE_SLIDE", "load_rgb", "open_one", "open_sources",
           "split_path"]


def split_path(text: str) -> tuple[str, Optional[str]]:
    """`PATH@SPLIT` -> (PATH, SPLIT); a path that exists as written keeps its '@'."""
    if "@" in text and not Path(text).exists():
        base, split = text.rsplit("@", 1)
        if base and split:
            return base, split
    return text, None


def _slide(p: Path, cfg: DataConfig) -> SlideSource:
    return SlideSource(p, cfg.tile_size, cfg.mpp, cfg.level, cfg.tissue_min, cfg.slide_cache_mb, cfg.tissue_cache)


def _folder(p: Path, cfg: DataConfig, split: Optional[str]) -> Source:
    if is_pack(p):
        return PackedSource(p, cfg.verify, split)
    if pcam_x_files(p):
        return pcam_source(p, split)
    if gz_pcam_files(p):
        raise UsageError(f"{p} holds compressed PCam files ({', '.join(gz_pcam_files(p)[:2])}, ...): decompress "
                         f"them with gunzip, or use `sdmae data download pcam --root DIR`")
    if is_mhist(p):
        return mhist_source(p, split)
    if split is not None:
        subs = [c for c in sorted(p.iterdir()) if c.is_dir() and same_split(c.name, split)]
        if not subs:
            names = ", ".join(c.name for c in sorted(p.iterdir()) if c.is_dir()) or "none"
            raise UsageError(f"no split '{split}' in {p}: a folder's splits are its subfolders (found: {names})")
        return open_one(str(subs[0]), cfg)
    images = image_files(p)
    slides = sorted(q for q in p.rglob("*") if q.suffix.lower() in SLIDE_ONLY_SUFFIXES and q.is_file())
    if not images and not slides:
        raise UsageError(f"no images (png, jpg, tif) or slides (svs, ndpi, mrxs, ...) found under {p}")
    return _joined([FolderSource(p, images)] if images else [], [lambda q=q: _slide(q, cfg) for q in slides],
                   cfg, str(p))


def _joined(parts: list[Source], openers: list, cfg: DataConfig, where: str) -> Source:
    """`parts` plus what each opener gives, as one source. A slide that cannot be opened is an unreadable input
    like a broken tile: stops everything under data.strict, else it is left out (warned about here, listed by
    the pre-scan in skipped_files.txt via the source's `unopened`) while other data remain."""
    unopened = []
    for opener in openers:
        try:
            part = opener()
        except UnreadableSlide as e:
            if cfg.strict:
                raise
            unopened.append((e.path, e.reason))
            print(f"warning: skipping slide {e.path} (cannot open it: {e.reason})", file=sys.stderr)
            continue
        unopened += getattr(part, "unopened", [])
        parts.append(part)
    if not parts:
        path, reason = unopened[0]
        raise UsageError(f"no readable data in {where}: every slide failed to open, e.g. {path}: {reason}")
    source = parts[0] if len(parts) == 1 else ConcatSource(parts)
    source.unopened = unopened
    return source


def open_one(path: str, cfg: DataConfig, split: Optional[str] = None) -> Source:
    """One `--data` path (with an optional `@SPLIT`) as a source; UsageError naming the path otherwise."""
    text, own = split_path(str(path))
    split = own or split
    p = Path(text)
    if not p.exists():
        raise UsageError(f"data path does not exist: {text}")
    if p.is_dir():
        return _folder(p, cfg, split)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return CSVSource(p, split)
    if p.name == INDEX and is_pack(p.parent):
        return PackedSource(p.parent, cfg.verify, split)
    if suffix in (".h5", ".hdf5"):
        return pcam_source(p, split)
    if p.name.endswith(".h5.gz"):
        raise UsageError(f"{p} is compressed: decompress it with gunzip first")
    if split is not None:
        raise UsageError(f"{p} has no splits (asked for '{split}')")
    if suffix in SLIDE_SUFFIXES:
        return _slide(p, cfg)
    if suffix in IMAGE_SUFFIXES:
        raise UsageError(f"{p} is a single image: give the folder that holds the tiles")
    raise UsageError(f"unsupported data path {p}: expected a folder of images, a CSV list, PCam HDF5, "
                     f"a packed folder or a slide")


def open_sources(paths: Optional[Sequence[str]], cfg: DataConfig, split: Optional[str] = None) -> Source:
    """Opens `--data` paths (none: the built-in CC0 sample slide) as one source. `split` applies to every
    path that does not name its own with `@SPLIT`."""
    paths = list(paths) if paths else [str(SAMPLE_SLIDE)]
    if len(paths) == 1:
        return open_one(paths[0], cfg, split)
    return _joined([], [lambda p=p: open_one(p, cfg, split) for p in paths], cfg, "--data " + " ".join(paths))
