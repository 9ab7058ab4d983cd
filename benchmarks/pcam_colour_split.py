"""A validation split of PCam training tiles that mimics a slide shift: whole colour clusters are held out.

The shared PCam subset keeps no slide ids, and a split of random tiles shares slides (stain, scanner, tissue)
between its fit and val parts, so it rewards features that recognise the training slides (docs/evaluation.md).
Stain colour is mostly a property of the slide, so holding out whole clusters of tiles by colour statistics
(mean and standard deviation of each channel's optical density), within each class so that both classes
stay in val, makes val tiles look like no fit tile, as test slides do. It is a proxy for a slide-disjoint
split, not one: tiles of one slide can fall into several clusters.

    python benchmarks/pcam_colour_split.py ROOT/train OUT.csv [--clusters 20] [--val-per-class 500] [--seed 0]

writes `path,label,split` (splits `fit` and `val`, absolute paths) for `sdmae pretrain --data OUT.csv@fit` and
`sdmae eval ... --train OUT.csv@fit --test OUT.csv@val`.
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans


def colour_stats(path: Path) -> np.ndarray:
    """Mean and standard deviation of the optical density of each RGB channel of one tile."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    od = -np.log((rgb + 1.0) / 256.0)
    return np.concatenate([od.mean((0, 1)), od.std((0, 1))])


def held_out(files: list[Path], clusters: int, want: int, seed: int) -> set[Path]:
    """Whole k-means clusters of one class's tiles, in a seeded random order, until `want` tiles are held out."""
    x = np.stack([colour_stats(f) for f in files])
    x = (x - x.mean(0)) / x.std(0)
    ids = KMeans(clusters, n_init=10, random_state=seed).fit_predict(x)
    order = list(range(clusters))
    random.Random(seed).shuffle(order)
    out: set[Path] = set()
    for c in order:
        if len(out) >= want:
            break
        out |= {f for f, i in zip(files, ids) if i == c}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a class-folder tree: ROOT/0/*.jpg, ROOT/1/*.jpg")
    ap.add_argument("out", type=Path)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--val-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = []
    for cls in sorted(p for p in a.root.iterdir() if p.is_dir()):
        files = sorted(f.resolve() for f in cls.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        val = held_out(files, a.clusters, a.val_per_class, a.seed)
        rows += [(str(f), cls.name, "val" if f in val else "fit") for f in files]
        print(f"class {cls.name}: {len(files) - len(val)} fit, {len(val)} val")
    with open(a.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
