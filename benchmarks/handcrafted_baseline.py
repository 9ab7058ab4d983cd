"""How far do hand-crafted tile statistics go? The floor under a random-weights row, and a bar above it.

Feature sets, per tile, RGB in [0, 1]:
- `colour`: the mean (3 numbers) or the mean and standard deviation (6) of each RGB channel;
- `stain`: haematoxylin and eosin optical density (scikit-image's colour deconvolution): mean, std and the 10th,
  50th and 90th percentiles of haematoxylin, mean and std of eosin (7);
- `texture`: rotation-invariant uniform local binary patterns (LBP, Ojala et al. 2002) of the grey level and of
  the haematoxylin density, 8 neighbours at radius 1 and 16 at radius 2, as normalised histograms (56). LBP
  codes compare each pixel with its neighbours, so they do not change under a monotone change of intensity:
  a texture description that a stain shift leaves nearly alone.
Probed with sdmae's own protocols and defaults: kNN (centred, L2-normalised, k 20, T 0.07) on the features as
they are and standardised with the training tiles' mean and std (the sets mix scales), and the `fast` linear
probe (standardised logistic regression, C chosen on a stratified 10 % of the training tiles). Freshly drawn
ViT weights pool their tokens into features dominated by the mean colour of the tile (docs/results.md, session
of 2026-12-04), so a pre-trained encoder should be read against these rows too.

    python benchmarks/handcrafted_baseline.py --train TRAIN... --test TEST... [--workers 2]

TRAIN / TEST are anything `sdmae eval --train / --test` accepts (class folders, `list.csv@split`, ...).
Prints one line per feature set, then a JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from skimage.color import rgb2gray, rgb2hed
from skimage.feature import local_binary_pattern
from sklearn.metrics import balanced_accuracy_score

from sdmae.config import load_config, load_eval_config
from sdmae.eval.knn import knn_probs
from sdmae.eval.labelled import labels_of, open_split
from sdmae.eval.linear import fit_fast

LBP_SCALES = ((8, 1), (16, 2))  # (neighbours, radius)
GROUPS = {"mean RGB": ("colour", 3), "colour": ("colour", 6), "stain": ("stain", 7), "texture": ("texture", 56)}
SETS = ("mean RGB", "colour", "stain", "texture", "colour+stain", "colour+texture", "colour+stain+texture")


def lbp_histogram(channel: np.ndarray, neighbours: int, radius: int) -> np.ndarray:
    """Normalised histogram of the rotation-invariant uniform LBP codes (neighbours + 2 bins)."""
    lo, hi = channel.min(), channel.max()
    grey = np.round((channel - lo) / max(hi - lo, 1e-8) * 255).astype(np.uint8)
    codes = local_binary_pattern(grey, neighbours, radius, method="uniform").astype(np.int64)
    return np.bincount(codes.ravel(), minlength=neighbours + 2) / codes.size


def colour_statistics(rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 tile -> the mean and std of R, G, B in [0, 1] (6 numbers)."""
    a = rgb.astype(np.float64) / 255.0
    return np.concatenate([a.mean((0, 1)), a.std((0, 1))])


def tile_features(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """An (H, W, 3) uint8 tile -> its colour (6), stain (7) and texture (56) statistics."""
    a = rgb.astype(np.float64) / 255.0
    hed = rgb2hed(a)
    haem, eosin = hed[..., 0], hed[..., 1]
    texture = [lbp_histogram(c, n, r) for c in (rgb2gray(a), haem) for n, r in LBP_SCALES]
    return {"colour": colour_statistics(rgb),
            "stain": np.array([haem.mean(), haem.std(), *np.percentile(haem, [10, 50, 90]), eosin.mean(), eosin.std()]),
            "texture": np.concatenate(texture)}


def _read_features(source, i: int) -> dict[str, np.ndarray]:
    return tile_features(np.asarray(source.read(i).convert("RGB")))


def feature_table(source, workers: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{group: (N, D)} for every tile of a labelled source, and its labels."""
    read = partial(_read_features, source)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(read, range(len(source)), chunksize=64))
    else:
        rows = [read(i) for i in range(len(source))]
    return {g: np.stack([r[g] for r in rows]) for g in rows[0]}, labels_of(source)


def columns(table: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The columns of a feature set named as in SETS ("colour+texture": both groups side by side)."""
    parts = []
    for part in name.split("+"):
        group, width = GROUPS[part]
        parts.append(table[group][:, :width])
    return np.concatenate(parts, axis=1)


def probe(x_tr, y_tr, x_te, y_te, n_classes: int, ecfg) -> dict[str, float]:
    """Balanced accuracy of kNN (as is, standardised) and of the fast linear probe."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    out = {}
    for tag, (a, b) in {"knn": (x_tr, x_te), "knn_standardised": ((x_tr - mu) / sd, (x_te - mu) / sd)}.items():
        probs = knn_probs(a, y_tr, b, n_classes, ecfg.knn_k, ecfg.knn_temperature, ecfg.knn_center)
        out[tag] = float(balanced_accuracy_score(y_te, probs.argmax(1)))
    model, _, _ = fit_fast(x_tr, y_tr, None, None, ecfg, seed=0)
    out["linear"] = float(balanced_accuracy_score(y_te, model.predict(x_te)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", nargs="+", required=True)
    ap.add_argument("--workers", type=int, default=2, help="processes reading tiles (default 2)")
    a = ap.parse_args()
    dcfg, ecfg = load_config().data, load_eval_config([])
    train, test = open_split(a.train, dcfg, "--train"), open_split(a.test, dcfg, "--test")
    if list(train.classes) != list(test.classes):
        raise SystemExit(f"--train classes {train.classes} differ from --test classes {test.classes}")
    (t_tr, y_tr), (t_te, y_te) = feature_table(train, a.workers), feature_table(test, a.workers)
    out = {}
    for name in SETS:
        x_tr, x_te = columns(t_tr, name), columns(t_te, name)
        out[name] = r = probe(x_tr, y_tr, x_te, y_te, len(train.classes), ecfg)
        print(f"{name} ({x_tr.shape[1]}): balanced accuracy kNN {r['knn']:.3f} (standardised "
              f"{r['knn_standardised']:.3f}), linear {r['linear']:.3f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
