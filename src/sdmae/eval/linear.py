"""Linear probing on frozen, cached features.

- `fast` (default): standardised features, scikit-learn logistic regression (L-BFGS), its inverse
  regularisation C chosen by balanced accuracy on a validation split (`--val`, or a stratified
  `eval.val_fraction` carved from train), then refitted on the whole training split with that C.
- `paper` (`--set eval.linear=paper`): the official code's probe, BatchNorm without affine + linear layer,
  SGD momentum 0.9, lr = base_lr * batch / 256 with linear warm-up then cosine to 0, 90 epochs. It trains on
  cached features of un-augmented tiles (the official probe crops and flips each epoch) and reports the
  last epoch (the official script prints the best test epoch, which selects on the test set).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sdmae.config import EvalConfig
from sdmae.encoders import LoadedEncoder
from sdmae.eval.frozen import load_frozen, options
from sdmae.eval.labelled import Split
from sdmae.eval.metrics import classification_metrics
from sdmae.train.optim import lr_at


def carve_val(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (when every class has two items) train/val indices."""
    idx = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)


def logistic(c: float, max_iter: int, seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))


def fit_fast(x: np.ndarray, y: np.ndarray, x_val: Optional[np.ndarray], y_val: Optional[np.ndarray],
             ecfg: EvalConfig, seed: int):
    """The logistic regression with the best C on the validation split, and the validation scores."""
    if x_val is None:
        tr, va = carve_val(y, ecfg.val_fraction, seed)
        fit_x, fit_y, sel_x, sel_y = x[tr], y[tr], x[va], y[va]
    else:
        fit_x, fit_y, sel_x, sel_y = x, y, x_val, y_val
    scores = {}
    for c in ecfg.linear_cs:
        model = logistic(c, ecfg.linear_max_iter, seed).fit(fit_x, fit_y)
        scores[float(c)] = float(balanced_accuracy_score(sel_y, model.predict(sel_x)))
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    final = logistic(best, ecfg.linear_max_iter, seed).fit(x, y)
    return final, best, scores


def predict_proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities for every class index, also those missing from the training labels."""
    p = np.zeros((len(x), n_classes))
    p[:, model.classes_] = model.predict_proba(x)
    return p


def train_paper(x: np.ndarray, y: np.ndarray, n_classes: int, ecfg: EvalConfig, seed: int) -> nn.Module:
    """BatchNorm1d(affine=False) + Linear trained with SGD on features, as the official linear probe."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)
    head = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6), nn.Linear(x.shape[1], n_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01, generator=g)
    nn.init.zeros_(head[1].bias)
    batch = min(ecfg.linear_batch_size, len(x))
    per_epoch = len(x) // batch  # drop_last, as the official loader
    total, warmup = ecfg.linear_epochs * per_epoch, ecfg.linear_warmup_epochs * per_epoch
    peak = ecfg.linear_base_lr * batch / 256
    opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=0.9, weight_decay=ecfg.linear_weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    head.train()
    step = 0
    for _ in range(ecfg.linear_epochs):
        perm = torch.randperm(len(x), generator=g)
        for k in range(per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, peak, 0.0)
            idx = perm[k * batch:(k + 1) * batch]
            loss = loss_fn(head(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval()


def run(encoder: LoadedEncoder, train: Split, test: Split, val: Optional[Split], out_dir: Path,
        overrides: list, seed: int) -> dict:
    ecfg, cfg = options(overrides)
    d = load_frozen(encoder, train, test, val, ecfg, cfg)
    k = len(d.classes)
    extra: dict = {"linear": ecfg.linear}
    if ecfg.linear == "fast":
        model, c, scores = fit_fast(d.x_train, d.y_train, d.x_val, d.y_val, ecfg, seed)
        probs = predict_proba(model, d.x_test, k)
        extra.update(C=c, val_balanced_accuracy={str(c_): s for c_, s in scores.items()})
    else:
        head = train_paper(d.x_train, d.y_train, k, ecfg, seed)
        with torch.no_grad():
            probs = torch.softmax(head(torch.from_numpy(d.x_test).float()), 1).numpy()
    m = classification_metrics(d.y_test, probs.argmax(1), probs, d.classes)
    return {**m, "n_train": int(len(d.y_train)), **extra,
            "skipped": {r: len(p) for r, p in d.skipped.items()}}
