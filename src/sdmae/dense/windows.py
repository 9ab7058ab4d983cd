"""Sliding windows over whole images: the model sees at test time exactly the crop size it was trained on
(so the resampled position table is the same one), and overlapping outputs are averaged (mmseg's 'slide')."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets covering [0, length) with windows of `window` overlapping by about `overlap`; the last
    window ends at the border. A length shorter than the window gives one window at 0 (the input is padded)."""
    if length <= window:
        return [0]
    stride = max(1, round(window * (1 - overlap)))
    n = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(n)]


def window_grid(height: int, width: int, window: int, overlap: float) -> list[tuple[int, int]]:
    """(top, left) of every window, row by row."""
    return [(t, l) for t in window_starts(height, window, overlap) for l in window_starts(width, window, overlap)]


@torch.no_grad()
def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int, overlap: float,
                   batch_size: int = 8) -> torch.Tensor:
    """fn: (N, 3, w, w) -> (N, K, w, w) logits. image: (3, H, W) normalised -> (K, H, W) logits averaged over
    the windows covering each pixel. Images smaller than a window are zero-padded (the mean colour after
    normalisation) at the bottom and right, and the output cropped back."""
    _, H, W = image.shape
    ph, pw = max(0, window - H), max(0, window - W)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
    Hp, Wp = image.shape[-2:]
    grid = window_grid(Hp, Wp, window, overlap)
    total = count = None
    for i in range(0, len(grid), batch_size):
        part = grid[i:i + batch_size]
        out = fn(torch.stack([image[:, t:t + window, l:l + window] for t, l in part])).float()
        if total is None:
            total = out.new_zeros(out.shape[1], Hp, Wp)
            count = out.new_zeros(1, Hp, Wp)
        for (t, l), o in zip(part, out):
            total[:, t:t + window, l:l + window] += o
            count[:, t:t + window, l:l + window] += 1
    return (total / count)[:, :H, :W]
