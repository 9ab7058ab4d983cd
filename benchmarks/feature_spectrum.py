"""Is there class signal in the low-variance directions of an encoder's features, hidden from kNN?

kNN weighs every direction of the (centred, L2-normalised) features by its variance. If pre-training put
what tells the classes apart into directions that the tile's colour outweighs, re-weighting the directions
would show it, and a regulariser that spreads the variance (KoLeo, VICReg) would be worth trying. For each
encoder this prints the spectrum of its training features (share of the first and first five principal
components, effective rank = exp of the entropy of the normalised spectrum) and sdmae's kNN (k 20, T 0.07)
on the features as they are, whitened on their first 64 components, with the first 1 or 3 components
removed, and with every dimension standardised. All statistics come from the training tiles. Last column: the
share of the training features' variance that a linear map of each tile's six colour statistics (mean and std
of R, G, B) explains; near 1, the features are mostly the tile's colour, whatever else they hold.

    python benchmarks/feature_spectrum.py --train TRAIN --test TEST [--random NAME:SIZE:SEEDS] [--ckpt CKPT...]

TRAIN / TEST are anything `sdmae eval --train / --test` accepts; features are sdmae eval's (and its cache's).
"""
from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from handcrafted_baseline import colour_statistics  # a sibling script: benchmarks/ is on sys.path
from sdmae.config import load_config
from sdmae.eval.frozen import load_frozen, options
from sdmae.eval.labelled import open_split
from sdmae.eval.knn import knn_probs
from sdmae.eval.run import EncoderSpec


def knn_score(x_train, y_train, x_test, y_test) -> float:
    probs = knn_probs(x_train.astype(np.float32), y_train, x_test.astype(np.float32), int(y_train.max()) + 1)
    return balanced_accuracy_score(y_test, probs.argmax(1))


def spectrum_row(x_train, y_train, x_test, y_test) -> dict:
    """Spectrum figures and kNN under four re-weightings of the directions, all fitted on x_train."""
    mu = x_train.mean(0)
    a, b = x_train - mu, x_test - mu
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    share = s ** 2 / (s ** 2).sum()
    row = {"pc1": share[0], "pc1_5": share[:5].sum(), "erank": np.exp(-(share * np.log(share + 1e-12)).sum()),
           "knn": knn_score(x_train, y_train, x_test, y_test)}
    w = vt[:64].T / s[:64]
    row["whitened64"] = knn_score(a @ w, y_train, b @ w, y_test)
    for r in (1, 3):
        p = np.eye(a.shape[1]) - vt[:r].T @ vt[:r]
        row[f"drop{r}"] = knn_score(a @ p, y_train, b @ p, y_test)
    sd = a.std(0) + 1e-12
    row["standardised"] = knn_score(a / sd, y_train, b / sd, y_test)
    return row


def tile_colours(split: list[str]) -> np.ndarray:
    """(N, 6) colour statistics of every tile of a split (handcrafted_baseline's), in sdmae eval's order."""
    source = open_split(split, load_config().data, "--train")
    return np.stack([colour_statistics(np.asarray(source.read(i).convert("RGB"))) for i in range(len(source))])


def colour_share(x: np.ndarray, colour: np.ndarray) -> float:
    """R^2 of the least-squares linear map (with intercept) from the colour statistics to the features."""
    a = x - x.mean(0)
    design = np.column_stack([colour, np.ones(len(colour))])
    coef, *_ = np.linalg.lstsq(design, a, rcond=None)
    return 1.0 - ((a - design @ coef) ** 2).sum() / (a ** 2).sum()


def named_encoders(random: str, ckpts: list[str]) -> list:
    """(label, encoder) for `--random NAME:IMG_SIZE:SEEDS` (one draw per seed) and each `--ckpt`."""
    name, size, seeds = random.split(":")
    spec = EncoderSpec(init="random", overrides=[f"model.name={name}", f"model.img_size={size}"])
    return [(f"random seed {r}", spec.load(r)) for r in range(int(seeds))] + [(c, EncoderSpec(ckpt=c).load())
                                                                             for c in ckpts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", nargs="+", required=True)
    ap.add_argument("--random", default="vit_tiny_patch16:96:3",
                    help="NAME:IMG_SIZE:SEEDS of random weights (SEEDS 0: none)")
    ap.add_argument("--ckpt", nargs="*", default=[])
    a = ap.parse_args()
    encoders = named_encoders(a.random, a.ckpt)
    ecfg, cfg = options([])
    colour = tile_colours(a.train)
    cols = ["pc1", "pc1_5", "erank", "knn", "whitened64", "drop1", "drop3", "standardised", "colour_r2"]
    print("| encoder | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for label, enc in encoders:
        d = load_frozen(enc, a.train, a.test, None, ecfg, cfg)
        row = spectrum_row(d.x_train.astype(np.float64), d.y_train, d.x_test.astype(np.float64), d.y_test)
        if len(colour) != len(d.x_train):
            raise SystemExit(f"{label}: {len(d.x_train)} training features for {len(colour)} tiles (unreadable tiles?)")
        row["colour_r2"] = colour_share(d.x_train.astype(np.float64), colour)
        print(f"| {label} | " + " | ".join(f"{row[c]:.3f}" if c != "erank" else f"{row[c]:.1f}" for c in cols) + " |",
              flush=True)


if __name__ == "__main__":
    main()
