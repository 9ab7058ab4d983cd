"""Nuclei instances from a probability map, and instances as boxes.

`components`: connected components of the thresholded map (touching nuclei merge). `watershed`: the
classical split of touching blobs: markers at the h-maxima of the smoothed distance transform (one per
nucleus centre; h suppresses shallow bumps), flooded over the inverted distance within the foreground
(scikit-image).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labels covering fewer than `min_size` pixels."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def clean_mask(fg: np.ndarray, min_size: int) -> np.ndarray:
    """Foreground without specks or pinholes smaller than `min_size` pixels."""
    fg = drop_small(ndimage.label(fg)[0], min_size) > 0
    holes = ndimage.binary_fill_holes(fg) & ~fg
    big_holes = drop_small(ndimage.label(holes)[0], min_size) > 0
    return fg | (holes & ~big_holes)


def split_touching(fg: np.ndarray, h: float, sigma: float = 1.0) -> np.ndarray:
    """Watershed of the inverted, Gaussian-smoothed distance transform from its h-maxima; a blob without any
    h-maximum stays whole. Smoothing removes the ridge maxima of raw distances along irregular outlines
    (on MoNuSeg's true masks: AJI 0.96 with sigma 1 and h 1, against 0.82 unsmoothed or 0.82 components)."""
    blobs, n = ndimage.label(fg)
    dist = ndimage.distance_transform_edt(fg)
    if sigma > 0:
        dist = ndimage.gaussian_filter(dist, sigma)
    peaks, n_peaks = ndimage.label(h_maxima(dist, h) > 0)
    has_peak = np.zeros(n + 1, bool)
    has_peak[blobs[peaks > 0]] = True
    orphans = (blobs > 0) & ~has_peak[blobs]  # blobs without a peak become their own marker
    markers = np.where(orphans, blobs + n_peaks, peaks)
    return watershed(-dist, markers, mask=fg)


def label_instances(prob: np.ndarray, threshold: float = 0.5, method: str = "watershed", h: float = 1.0,
                    sigma: float = 1.0, min_size: int = 10) -> np.ndarray:
    """(H, W) nucleus probabilities -> (H, W) int32 labels, 0 = background, 1..n = nuclei."""
    fg = clean_mask(prob > threshold, min_size)
    if method == "components":
        labels = ndimage.label(fg)[0]
    elif method == "watershed":
        labels = split_touching(fg, h, sigma)
    else:
        raise ValueError(f"unknown instance method '{method}' (watershed or components)")
    return relabel_sequential(drop_small(labels, min_size).astype(np.int32))[0]


def boxes_from_instances(labels: np.ndarray, min_side: int = 1) -> np.ndarray:
    """(H, W) instance labels -> (N, 4) float32 boxes [x0, y0, x1, y1) in pixels, one per present label whose
    box is at least `min_side` wide and high."""
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels) if s is not None]
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    keep = ((out[:, 2] - out[:, 0]) >= min_side) & ((out[:, 3] - out[:, 1]) >= min_side)
    return out[keep]
