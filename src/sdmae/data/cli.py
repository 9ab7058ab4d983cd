"""Command-line parsers of `sdmae tile`, `sdmae data {download,check,pack}` and `sdmae bench data`
(heavy imports happen when a command runs)."""
from __future__ import annotations

import json
import os
import sys

SETS = {"nargs": "+", "default": [], "action": "extend", "metavar": "KEY=VALUE"}


def _workers(n) -> int:
    return min(4, os.cpu_count() or 1) if n is None else n


def add_tile(sub) -> None:
    p = sub.add_parser("tile", help="cut whole-slide images into tissue tiles (+ coordinates)",
                       description="Detects tissue on a thumbnail (Otsu on saturation) and writes the tiles whose "
                                   "tissue fraction reaches --tissue-min as OUT/<slide>/<slide>_x<X>_y<Y>.png with "
                                   "OUT/<slide>/coordinates.csv (file, slide, x, y, level, mpp, size). Several "
                                   "slides are cut in parallel; running it again writes only missing tiles.")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="svs, tiff, ndpi, mrxs, ... (anything OpenSlide opens)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=224, help="tile side in pixels (default 224)")
    p.add_argument("--mpp", type=float, help="microns per pixel of the tiles (default: the level's own)")
    p.add_argument("--level", type=int, default=0, help="pyramid level to cut when --mpp is not given (default 0)")
    p.add_argument("--tissue-min", type=float, default=0.5, help="minimum tissue fraction of a tile (default 0.5)")
    p.add_argument("--format", default="png", choices=("png", "jpg"))
    p.add_argument("--workers", type=int, help="processes (default: up to 4)")

    def run(a) -> int:
        from sdmae.data.tile import TilingSettings, tile_slides

        s = TilingSettings(a.size, a.mpp, a.level, a.tissue_min, a.format)
        summary = tile_slides(a.slides, a.out, s, _workers(a.workers))
        for slide, r in summary.items():
            print(f"{slide}: {r['tiles']} tissue tiles ({r['written']} written, {r['existing']} already there) "
                  f"-> {r['folder']}")
        return 0

    p.set_defaults(run=run)


def _download(a) -> int:
    from sdmae.data.download import download, verify_manual
    from sdmae.data.registry import lookup

    entry = lookup(a.name)
    print(f"{entry.title}\nlicence: {entry.licence}\ncite: {entry.citation}", file=sys.stderr)
    if entry.manual:
        counts = verify_manual(entry, a.root)
        print(f"{a.root}: {entry.name} verified: {json.dumps(counts)}")
    else:
        download(entry, a.root, a.mirror, a.keep_archives)
        print(f"{entry.name} is ready in {a.root}")
    print(f"use it with: {entry.usage.format(root=a.root)}")
    return 0


def _check(a) -> int:
    from sdmae.config import load_config
    from sdmae.data.check import report
    from sdmae.data.sources import open_sources

    cfg = load_config(None, a.set)
    r = report(open_sources(a.paths, cfg.data), _workers(a.workers))
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['items']} tiles ({r['source']}), {r['decoded']} image files decoded, "
              f"{len(r['unreadable'])} unreadable")
        for name, n in r["classes"].items():
            print(f"  class {name}: {n}")
        if r["classes"] and r["unlabelled"]:
            print(f"  unlabelled: {r['unlabelled']}")
        for name, n in r["splits"].items():
            print(f"  split {name}: {n}")
        print("  sizes: " + ", ".join(f"{s} x{n}" for s, n in list(r["sizes"].items())[:8]))
        for bad in r["unreadable"]:
            print(f"  unreadable: {bad['path']} ({bad['reason']})")
    return 1 if r["unreadable"] else 0


def _pack(a) -> int:
    from tqdm import tqdm

    from sdmae.config import load_config
    from sdmae.data.packed import write_pack
    from sdmae.data.sources import open_sources

    cfg = load_config(None, a.set)
    source = open_sources(a.paths, cfg.data)
    with tqdm(total=len(source), desc="packing", unit="tile", file=sys.stderr, dynamic_ncols=True,
              mininterval=1.0) as bar:
        r = write_pack(source, a.out, a.size, _workers(a.workers), a.shard_mb, a.overwrite, bar)
    for path, reason in r.skipped[:20]:
        print(f"warning: skipped unreadable {path} ({reason})", file=sys.stderr)
    print(f"{r.out}: {r.count} tiles packed ({r.resized} resized, {len(r.skipped)} unreadable skipped), "
          f"classes: {', '.join(source.classes) or 'none'}")
    return 0


def add_data(sub) -> None:
    p = sub.add_parser("data", help="datasets: download, check, pack")
    group = p.add_subparsers(dest="action", required=True, parser_class=type(p))

    d = group.add_parser("download", help="download, verify and extract a public dataset",
                         description="Datasets: nct-crc-he-100k, nct-crc-he-100k-nonorm, crc-val-he-7k, pcam, "
                                     "kather2016 (Zenodo), mhist (form-gated: verifies the folder you downloaded). "
                                     "Interrupted downloads resume; checksums are verified before extraction.")
    d.add_argument("name", help="dataset name")
    d.add_argument("--root", required=True, help="folder to download and extract into")
    d.add_argument("--from", dest="mirror", metavar="DIR_OR_URL", help="a mirror: a folder or base URL with the files")
    d.add_argument("--keep-archives", action="store_true", help="keep the archives after extraction")
    d.set_defaults(run=_download)

    c = group.add_parser("check", help="open every file; report unreadable ones, classes, splits, sizes",
                         description="Decodes every image file of the data (packed files: checksums; HDF5: "
                                     "structure; slides: OpenSlide) and reports counts per class and split, tile "
                                     "sizes and unreadable files. Exit code 1 when some are unreadable.")
    c.add_argument("paths", nargs="+", metavar="PATH", help="anything --data accepts (PATH@SPLIT for a split)")
    c.add_argument("--workers", type=int, help="decoding processes (default: up to 4)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--set", help="data options, e.g. data.tile_size=512 (for slides)", **SETS)
    c.set_defaults(run=_check)

    k = group.add_parser("pack", help="pack tiles into the fast memory-mapped format",
                         description="Writes every readable tile (square, --size px; others are centre-cropped and "
                                     "resized) with labels, classes and splits into a packed folder: uint8 shards "
                                     "with sha256 checksums, verified when opened. Use it with --data OUT.")
    k.add_argument("paths", nargs="+", metavar="PATH", help="anything --data accepts (PATH@SPLIT for a split)")
    k.add_argument("--out", required=True, help="output folder (e.g. pcam_train.pack)")
    k.add_argument("--size", type=int, help="tile side (default: the tiles' own size)")
    k.add_argument("--shard-mb", type=int, default=256, help="shard size in MiB (default 256)")
    k.add_argument("--workers", type=int, help="decoding processes (default: up to 4)")
    k.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    k.add_argument("--set", help="data options, e.g. data.tile_size=512 (for slides)", **SETS)
    k.set_defaults(run=_pack)


def add_bench_data(group) -> None:
    p = group.add_parser("data", help="time the pre-training input pipeline alone; prints one JSON line",
                         description="Times batches of the pre-training input pipeline as `sdmae pretrain` builds "
                                     "it (reading, per-sample crops and masks, device-side augmentation and "
                                     "normalisation), without the model. The last line is JSON with images_per_s.")
    p.add_argument("--data", nargs="+", help="anything --data accepts (default: the built-in sample slide)")
    p.add_argument("--config", help="YAML recipe (a path or a built-in name)")
    p.add_argument("--set", help="config overrides, e.g. model.img_size=96 data.num_workers=2", **SETS)
    p.add_argument("--batches", type=int, default=80, help="timed batches (default 80)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed batches first (default 2, plus on the device-crop path what each worker needs to "
                        "allocate its ring of tile buffers)")
    p.add_argument("--host-only", action="store_true",
                   help="time only what the training process receives on the device-crop path (uint8 tiles, "
                        "masks, crop parameters; pinned with CUDA), without the device-side work")

    def run(a) -> int:
        from sdmae.config import load_config
        from sdmae.train.bench_data import bench_data

        print(json.dumps(bench_data(load_config(a.config, a.set), a.data, a.batches, a.warmup, a.host_only)))
        return 0

    p.set_defaults(run=run)
