"""Segmentation metrics: pixel-level (mIoU, nuclei Dice, pixel accuracy) and instance-level (AJI, PQ).

Conventions: class 1 = nucleus. mIoU averages the IoU of background and nuclei (as mmseg reports it for
MoNuSeg's two classes). When an image has no nuclei in both the truth and the prediction, instance
metrics are 1 (nothing to find, nothing claimed); Dice and IoU of a class absent from both are 1 too.
"""
from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, true: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """(K, K) pixel counts, rows = true class, columns = predicted class."""
    idx = true.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def pixel_scores(conf: np.ndarray) -> dict:
    """mIoU, per-class IoU, nuclei Dice (F1) and pixel accuracy from a confusion matrix."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
    fg_sum = conf[1].sum() + conf[:, 1].sum()
    return {"miou": float(iou.mean()), "iou_background": float(iou[0]), "iou_nuclei": float(iou[1]),
            "dice": float(2 * tp[1] / fg_sum) if fg_sum else 1.0,
            "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1))}


def overlaps(true: np.ndarray, pred: np.ndarray):
    """Pairs of overlapping instances: (true ids, pred ids, intersection areas), plus each label's area."""
    t, p = true.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    both = (t > 0) & (p > 0)
    width = int(p.max()) + 1
    codes, inter = np.unique(t[both] * width + p[both], return_counts=True)
    t_area, p_area = np.bincount(t, minlength=int(t.max()) + 1), np.bincount(p, minlength=width)
    return codes // width, codes % width, inter, t_area, p_area


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, the MoNuSeg challenge metric): each true nucleus is paired
    with the predicted one of highest IoU (a prediction may serve several); C sums the pairs' intersections,
    U their unions plus the true nuclei without any overlap and the predictions never paired. AJI = C / U."""
    ti, pi, inter, t_area, p_area = overlaps(true, pred)
    n_true, n_pred = np.count_nonzero(t_area[1:]), np.count_nonzero(p_area[1:])
    if n_true == 0 and n_pred == 0:
        return 1.0
    union = t_area[ti] + p_area[pi] - inter
    iou = inter / union
    order = np.lexsort((-iou, ti))  # by true id, best IoU first
    first = order[np.r_[True, ti[order][1:] != ti[order][:-1]]] if len(order) else order
    c = inter[first].sum()
    u = union[first].sum()
    unpaired_true = np.ones(len(t_area), bool)
    unpaired_true[0] = False
    unpaired_true[ti[first]] = False
    used = np.zeros(len(p_area), bool)
    used[pi[first]] = True
    used[0] = True
    u += t_area[unpaired_true].sum() + p_area[~used].sum()
    return float(c / u) if u else 0.0


def panoptic_quality(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """PQ = DQ * SQ (Kirillov et al. 2019; Graham et al. 2019 for nuclei): matches are pairs with IoU above 0.5
    (unique by construction), DQ = TP / (TP + FP/2 + FN/2) is the detection F1, SQ the matches' mean IoU."""
    ti, pi, inter, t_area, p_area = overlaps(true, pred)
    n_true, n_pred = np.count_nonzero(t_area[1:]), np.count_nonzero(p_area[1:])
    if n_true == 0 and n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    iou = inter / (t_area[ti] + p_area[pi] - inter)
    matched = iou[iou > iou_threshold]
    tp = len(matched)
    fp, fn = n_pred - tp, n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched.mean()) if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": int(fp), "fn": int(fn)}
