"""Overlay pictures: ground truth in green, prediction in yellow, on the H&E image."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

TRUE_RGB = (0, 220, 0)
PRED_RGB = (255, 230, 0)


def seg_overlay(image: np.ndarray, true: np.ndarray, pred: np.ndarray) -> Image.Image:
    """Instance outlines: true nuclei green, predicted ones yellow (where both agree, the later wins)."""
    out = image.copy()
    out[find_boundaries(true, mode="inner")] = TRUE_RGB
    out[find_boundaries(pred, mode="inner")] = PRED_RGB
    return Image.fromarray(out)


def det_overlay(image: np.ndarray, true_boxes: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                min_score: float) -> Image.Image:
    """True boxes green, predicted boxes with score >= min_score yellow."""
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    for b in true_boxes:
        draw.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=TRUE_RGB)
    for b, s in zip(boxes, scores):
        if s >= min_score:
            draw.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=PRED_RGB)
    return img
