"""How far do a tile's colour statistics alone go? The floor under the random-weights row.

Features: the mean (3 numbers) or the mean and standard deviation (6) of each RGB channel of a tile, in
[0, 1]. Probed with sdmae's own protocols and defaults: kNN (centred, L2-normalised, k 20, T 0.07) and the
`fast` linear probe (standardised logistic regression, C chosen on a stratified 10 % of the training tiles).
Freshly drawn ViT weights pool their tokens into features dominated by the mean colour of the tile
(docs/results.md, session of 2026-12-04), so a pre-trained encoder should be read against this row too.

    python benchmarks/colour_stats_baseline.py --train TRAIN... --test TEST...

TRAIN / TEST are anything `sdmae eval --train / --test` accepts (class folders, `list.csv@split`, ...).
Prints one line per feature set and protocol, then a JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from sdmae.config import load_config, load_eval_config
from sdmae.eval.knn import knn_probs
from sdmae.eval.labelled import labels_of, open_split
from sdmae.eval.linear import fit_fast


def colour_features(source) -> tuple[np.ndarray, np.ndarray]:
    """(N, 6) mean and std of R, G, B per tile, and the labels."""
    rows = []
    for i in range(len(source)):
        a = np.asarray(source.read(i).convert("RGB"), dtype=np.float32) / 255.0
        rows.append(np.concatenate([a.mean((0, 1)), a.std((0, 1))]))
    return np.stack(rows), labels_of(source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", nargs="+", required=True)
    a = ap.parse_args()
    dcfg, ecfg = load_config().data, load_eval_config([])
    train, test = open_split(a.train, dcfg, "--train"), open_split(a.test, dcfg, "--test")
    if list(train.classes) != list(test.classes):
        raise SystemExit(f"--train classes {train.classes} differ from --test classes {test.classes}")
    (x_tr, y_tr), (x_te, y_te) = colour_features(train), colour_features(test)
    out = {}
    for name, cols in (("mean RGB", slice(0, 3)), ("mean + std RGB", slice(0, 6))):
        probs = knn_probs(x_tr[:, cols], y_tr, x_te[:, cols], len(train.classes), ecfg.knn_k, ecfg.knn_temperature,
                          ecfg.knn_center)
        model, _, _ = fit_fast(x_tr[:, cols], y_tr, None, None, ecfg, seed=0)
        out[name] = {"knn": float(balanced_accuracy_score(y_te, probs.argmax(1))),
                     "linear": float(balanced_accuracy_score(y_te, model.predict(x_te[:, cols])))}
        print(f"{name}: balanced accuracy kNN {out[name]['knn']:.3f}, linear {out[name]['linear']:.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
