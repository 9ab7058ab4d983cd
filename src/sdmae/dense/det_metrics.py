"""COCO-style box metrics for one class (nuclei), written out rather than pulled from pycocotools.

As in COCO's evaluation: per image, detections in descending score order each take the still unmatched
true box of highest IoU at or above the threshold; over all images, precision is made monotone
(the envelope) and read at 101 recall points; mAP averages IoU thresholds 0.50:0.05:0.95. `recall` is
COCO's AR (maximum recall, averaged over the same thresholds) with every kept detection (nuclei
images hold hundreds, far above COCO's 100). With no true boxes at all, AP is 1 if nothing was
detected, else 0.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) boxes [x0, y0, x1, y1) -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(true: np.ndarray, boxes: np.ndarray, scores: np.ndarray, thresholds=THRESHOLDS) -> tuple:
    """One image -> (scores sorted descending, (T, D) bool: detection d is a true positive at threshold t)."""
    order = np.argsort(-scores, kind="mergesort")
    iou = box_iou(boxes[order], true)
    tp = np.zeros((len(thresholds), len(order)), bool)
    for ti, t in enumerate(thresholds):
        free = np.ones(len(true), bool)
        for d in range(len(order)):
            cand = np.where(free, iou[d], -1.0)
            g = int(np.argmax(cand)) if len(true) else -1
            if g >= 0 and cand[g] >= t:
                tp[ti, d] = True
                free[g] = False
    return scores[order], tp


def _ap(scores: np.ndarray, tp: np.ndarray, n_true: int) -> tuple[float, float]:
    """(AP at 101 recall points, maximum recall) of pooled detections at one threshold."""
    if n_true == 0:
        return float(len(scores) == 0), float(len(scores) == 0)
    if len(scores) == 0:
        return 0.0, 0.0
    order = np.argsort(-scores, kind="mergesort")
    hits = tp[order]
    ctp, cfp = np.cumsum(hits), np.cumsum(~hits)
    recall = ctp / n_true
    precision = ctp / np.maximum(ctp + cfp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    prec = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(prec.mean()), float(recall[-1])


def coco_metrics(trues: list[np.ndarray], preds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """trues: per image (G, 4) boxes; preds: per image ((D, 4) boxes, (D,) scores) ->
    map, map50, map75, recall (AR), recall50."""
    matched = [match(t, b, s) for t, (b, s) in zip(trues, preds)]
    scores = np.concatenate([m[0] for m in matched]) if matched else np.zeros(0)
    tps = np.concatenate([m[1] for m in matched], axis=1) if matched else np.zeros((len(THRESHOLDS), 0), bool)
    n_true = int(sum(len(t) for t in trues))
    per_t = [_ap(scores, tps[i], n_true) for i in range(len(THRESHOLDS))]
    aps, recalls = np.array([p[0] for p in per_t]), np.array([p[1] for p in per_t])
    at = {float(t): i for i, t in enumerate(THRESHOLDS)}
    return {"map": float(aps.mean()), "map50": float(aps[at[0.5]]), "map75": float(aps[at[0.75]]),
            "recall": float(recalls.mean()), "recall50": float(recalls[at[0.5]])}
