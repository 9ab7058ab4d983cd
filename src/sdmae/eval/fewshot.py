"""Few-shot classification with SimpleShot prototypes (Wang et al. 2019), as UNI reports it.

Each episode draws `eval.shots` training tiles per class, centres support and test features by the support
mean and L2-normalises them (CL2N), averages each class's support features into a prototype and assigns
every test tile to the nearest prototype (Euclidean). The result of a seed is the mean over
`eval.episodes` episodes (confusion matrix averaged too) with the spread over episodes in `episode_std`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from sdmae.encoders import LoadedEncoder
from sdmae.eval.frozen import load_frozen, options
from sdmae.eval.labelled import Split
from sdmae.eval.metrics import aggregate, classification_metrics


def draw_support(y: np.ndarray, n_classes: int, shots: int, rng: np.random.Generator) -> np.ndarray:
    """`shots` indices per class (all of a class's items when it has fewer)."""
    picks = []
    for c in range(n_classes):
        pool = np.flatnonzero(y == c)
        picks.append(rng.choice(pool, size=min(shots, len(pool)), replace=False))
    return np.concatenate(picks)


def _cl2n(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def simpleshot_probs(x_support: np.ndarray, y_support: np.ndarray, x_test: np.ndarray, n_classes: int) -> np.ndarray:
    """Softmax of negative squared distances to the class prototypes; classes without support get 0."""
    mean = x_support.mean(0, keepdims=True)
    s, t = _cl2n(x_support, mean), _cl2n(x_test, mean)
    present = np.unique(y_support)
    protos = np.stack([s[y_support == c].mean(0) for c in present])
    d2 = (t ** 2).sum(1, keepdims=True) - 2 * t @ protos.T + (protos ** 2).sum(1)[None]
    logits = -d2
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = np.zeros((len(x_test), n_classes))
    probs[:, present] = e / e.sum(1, keepdims=True)
    return probs


def run(encoder: LoadedEncoder, train: Split, test: Split, val: Optional[Split], out_dir: Path,
        overrides: list, seed: int) -> dict:
    ecfg, cfg = options(overrides)
    d = load_frozen(encoder, train, test, None, ecfg, cfg)
    k = len(d.classes)
    episodes = []
    for e in range(ecfg.episodes):
        rng = np.random.default_rng([seed, e])
        sup = draw_support(d.y_train, k, ecfg.shots, rng)
        probs = simpleshot_probs(d.x_train[sup], d.y_train[sup], d.x_test, k)
        episodes.append(classification_metrics(d.y_test, probs.argmax(1), probs, d.classes))
    res = aggregate(episodes)
    res["episode_std"] = res.pop("std")
    return {**res, "n_train": int(len(sup)), "n_train_pool": int(len(d.y_train)), "shots": ecfg.shots,
            "episodes": ecfg.episodes, "skipped": {r: len(p) for r, p in d.skipped.items()}}
