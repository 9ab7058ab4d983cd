"""Classification metrics as pathology papers report them, and their mean and spread over seeds.

Everything is computed from scikit-learn on integer labels; the confusion matrix (rows = true class) is the
source of truth, so accuracy, balanced accuracy and per-class recall in metrics.json always agree with it.
Undefined values (AUROC with one class in the test set, recall of an absent class) are None, never NaN,
so metrics.json stays valid JSON.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

# Per-seed entries that are identifiers, not measurements: never averaged.
NOT_AVERAGED = {"seed", "classes", "protocol"}


def _none_if_nan(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def auroc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> Optional[float]:
    """Binary: score of the positive class (index 1). Multi-class: one-vs-rest macro over the classes present
    in `y_true` (each needs positives and negatives). None when undefined."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if n_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    scores = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], probs: Optional[np.ndarray],
                           classes: Sequence[str]) -> dict:
    """accuracy, balanced_accuracy, macro_f1, auroc, confusion_matrix, per_class_recall, n_test, classes."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(k))
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(cm) / support
    present = support > 0
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else None,
        # over every class the encoder was asked to tell apart (scikit-learn's f1_score with those labels,
        # zero_division=0): a class predicted but absent from the test set counts, rather than flattering it
        "macro_f1": float(f1_score(y_true, y_pred, labels=np.arange(k), average="macro", zero_division=0)),
        "auroc": auroc(y_true, probs, k) if probs is not None else None,
        "n_test": int(len(y_true)),
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "per_class_recall": [_none_if_nan(r) for r in recall],
    }


def _mean_std(values: list) -> tuple[Any, Any]:
    """Mean and sample std (ddof 1, the one std sdmae reports; 0 for one value) of numbers, element-wise for
    (nested) lists and dicts; None-aware."""
    first = values[0]
    if isinstance(first, dict):
        keys = [k for k in first if k not in NOT_AVERAGED]
        pairs = {k: _mean_std([v.get(k) for v in values]) for k in keys}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items() if s is not None}
    if isinstance(first, list) and first and all(isinstance(v, list) and len(v) == len(first) for v in values):
        pairs = [_mean_std([v[i] for v in values]) for i in range(len(first))]
        return [m for m, _ in pairs], [s for _, s in pairs]
    if isinstance(first, bool) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return first, None  # strings, None, ragged lists: kept from the first seed
    if all(v == first for v in values):
        return first, 0.0  # keeps integers (n_test, counts) as integers
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1))


def aggregate(runs: list[dict]) -> dict:
    """Per-seed metric dicts -> their mean (same layout) plus `std`. With several seeds the confusion matrix
    is the element-wise mean, which agrees exactly with the mean accuracy and mean balanced accuracy (every
    seed classifies the same test set)."""
    mean, std = _mean_std(runs)
    for key in NOT_AVERAGED:
        if key in runs[0] and key != "seed":
            mean[key] = runs[0][key]
    mean["std"] = {k: v for k, v in std.items() if isinstance(v, (int, float))
                   or (isinstance(v, dict) and v)}
    return mean
