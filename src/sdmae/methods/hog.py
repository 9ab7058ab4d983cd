"""Histograms of oriented gradients per patch: a reconstruction target that describes texture, not pixels.

Why it was tried (docs/results.md, issue 13): in H&E tiles where exactly the nuclei of a hidden patch lie
cannot be told from its neighbours, so the pixel loss's best guess for a per-patch normalised target is
close to zero; a hidden patch's *texture statistics* (how much edge there is, in which directions) might be
predictable where its pixels are not. On PCam at CPU scale they were not (loss_rec_rel 0.96 after 2,100
steps) and the features were worse than with pixels; the option stays for other data and budgets. MaskFeat
(Wei et al., CVPR 2022) uses this target: gradients by [-1, 0, 1] filters on each RGB channel, unsigned orientations in 9 bins
(each pixel's magnitude split linearly between its two nearest bins), histograms of 8 x 8 px cells, and
each patch's vector of cell histograms L2-normalised (local contrast normalisation). Here the vector is then
scaled to a mean square of 1 per value, the scale of a per-patch normalised pixel target, so that the loss
has the pixel loss's size and `method.p` weighs distillation against it as in the paper.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdmae.methods.base import loss_precision

BINS = 9
CELL = 8


def cell_size(patch_size: int) -> int:
    """8 px cells where they tile the patch (MaskFeat), else one cell per patch."""
    return CELL if patch_size % CELL == 0 else patch_size


def hog_dim(patch_size: int, channels: int = 3) -> int:
    """Length of one patch's target: channels x bins x cells per patch."""
    return channels * BINS * (patch_size // cell_size(patch_size)) ** 2


def gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> x and y derivatives by central differences, edges replicated, per channel."""
    c = images.shape[1]
    kx = images.new_tensor([[-1.0, 0.0, 1.0]]).view(1, 1, 1, 3).repeat(c, 1, 1, 1)
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded[:, :, 1:-1, :], kx, groups=c)
    gy = F.conv2d(padded[:, :, :, 1:-1], kx.transpose(2, 3), groups=c)
    return gx, gy


def hog_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) -> per-patch HOG vectors (B, N, D = C * 9 * cells), patches in row-major
    order like `patchify`, each of L2 norm sqrt(D) (zero where the patch has no gradient at all).

    Each pixel adds its magnitude straight into its cell's two bins (one scatter into B x C x cells x 9
    sums), without a per-pixel histogram of 9 values."""
    B, C, H, W = images.shape
    gx, gy = gradients(loss_precision(images))
    magnitude = torch.sqrt(gx * gx + gy * gy)
    position = torch.atan2(gy, gx).remainder(math.pi) * (BINS / math.pi)  # in [0, BINS]
    low = position.floor()
    upper_share = position - low
    low = low.long().remainder(BINS)
    cell = cell_size(patch_size)
    rows, cols = torch.arange(H, device=images.device), torch.arange(W, device=images.device)
    first_bin = ((rows // cell)[:, None] * (W // cell) + cols // cell) * BINS  # (H, W): the pixel's cell
    sums = magnitude.new_zeros(B, C, (H // cell) * (W // cell) * BINS)
    sums.scatter_add_(2, (first_bin + low).flatten(2), (magnitude * (1 - upper_share)).flatten(2))
    sums.scatter_add_(2, (first_bin + (low + 1) % BINS).flatten(2), (magnitude * upper_share).flatten(2))
    k, gh, gw = patch_size // cell, H // patch_size, W // patch_size
    x = sums.view(B, C, gh, k, gw, k, BINS).permute(0, 2, 4, 1, 6, 3, 5).reshape(B, gh * gw, -1)
    return F.normalize(x, dim=-1) * x.shape[-1] ** 0.5
