"""Weighted k-nearest-neighbour classification of frozen features (DINO's protocol, UNI's preprocessing).

Features are centred by the training mean (`eval.knn_center`) and L2-normalised; each test tile takes its
k most cosine-similar training tiles, each voting for its class with weight exp(similarity / T)
(k = 20, T = 0.07 by default). Class probabilities are the normalised votes (used for AUROC).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from sdmae.encoders import LoadedEncoder
from sdmae.eval.frozen import load_frozen, options
from sdmae.eval.labelled import Split
from sdmae.eval.metrics import classification_metrics


def knn_probs(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, k: int = 20,
              temperature: float = 0.07, center: bool = True, chunk: int = 1024) -> np.ndarray:
    """(N_test, n_classes) vote shares of the k nearest training features."""
    tr, te = torch.from_numpy(x_train).float(), torch.from_numpy(x_test).float()
    if center:
        mu = tr.mean(0, keepdim=True)
        tr, te = tr - mu, te - mu
    tr, te = F.normalize(tr, dim=1), F.normalize(te, dim=1)
    labels = torch.from_numpy(y_train).long()
    k = min(k, len(tr))
    out = []
    for start in range(0, len(te), chunk):
        sim, idx = (te[start:start + chunk] @ tr.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), n_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        out.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(out).numpy()


def run(encoder: LoadedEncoder, train: Split, test: Split, val: Optional[Split], out_dir: Path,
        overrides: list, seed: int) -> dict:
    """kNN has no trained parameters and no randomness: seeds repeat the same number (val is unused)."""
    ecfg, cfg = options(overrides)
    d = load_frozen(encoder, train, test, None, ecfg, cfg)
    probs = knn_probs(d.x_train, d.y_train, d.x_test, len(d.classes), ecfg.knn_k, ecfg.knn_temperature,
                      ecfg.knn_center)
    m = classification_metrics(d.y_test, probs.argmax(1), probs, d.classes)
    return {**m, "n_train": int(len(d.y_train)), "k": min(ecfg.knn_k, len(d.y_train)),
            "skipped": {r: len(p) for r, p in d.skipped.items()}}
