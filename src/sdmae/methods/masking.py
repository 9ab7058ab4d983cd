"""Patches, random masks and reconstruction targets, shared by the masked-image methods."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), each patch flattened as (y, x, c) like the official code's targets."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify` for square images."""
    B, N, _ = patches.shape
    h = int(round(N ** 0.5))
    x = patches.reshape(B, h, h, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, h * p, h * p)


def normalize_targets(patches: torch.Tensor, mode: str, channels: int = 3) -> torch.Tensor:
    """Per-patch target normalisation.

    per_channel (official SD-MAE code): each patch and colour channel to zero mean and unit (unbiased) std,
        y = (x - mean) / (std + 1e-6);
    joint (MAE): one mean and variance per patch over all its values, y = (x - mean) / sqrt(var + 1e-6);
    none: raw pixels.
    """
    if mode == "none":
        return patches
    if mode == "joint":
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, unbiased=True, keepdim=True)
        return (patches - mean) / (var + 1e-6) ** 0.5
    if mode == "per_channel":
        B, N, D = patches.shape
        x = patches.reshape(B, N, D // channels, channels)
        mean = x.mean(dim=2, keepdim=True)
        std = x.var(dim=2, unbiased=True, keepdim=True).sqrt()
        return ((x - mean) / (std + 1e-6)).reshape(B, N, D)
    raise ValueError(f"unknown target normalisation '{mode}'")


def patch_stats(patches: torch.Tensor, mode: str, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) such that normalize_targets(x) = (x - mean) / scale, broadcastable to `patches`;
    used to turn predictions back into pixels."""
    B, N, D = patches.shape
    if mode == "none":
        return torch.zeros_like(patches), torch.ones_like(patches)
    if mode == "joint":
        mean = patches.mean(dim=-1, keepdim=True)
        scale = (patches.var(dim=-1, unbiased=True, keepdim=True) + 1e-6) ** 0.5
        return mean.expand_as(patches), scale.expand_as(patches)
    x = patches.reshape(B, N, D // channels, channels)
    mean = x.mean(dim=2, keepdim=True).expand_as(x).reshape(B, N, D)
    scale = (x.var(dim=2, unbiased=True, keepdim=True).sqrt() + 1e-6).expand_as(x).reshape(B, N, D)
    return mean, scale


@dataclass
class MaskSampler:
    """Draws a boolean mask hiding exactly `num_mask` of `num_patches` patches from a sample's generator."""

    num_patches: int
    num_mask: int

    def __call__(self, gen: torch.Generator) -> dict:
        mask = np.zeros(self.num_patches, dtype=bool)  # numpy: a third of the per-sample cost of torch here
        mask[torch.randperm(self.num_patches, generator=gen).numpy()[: self.num_mask]] = True
        return {"mask": torch.from_numpy(mask)}


def split_ids(mask: torch.Tensor, num_mask: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool mask (B, N), same count per row -> (visible ids (B, V), masked ids (B, M)), each ascending.
    `num_mask`, which training steps pass (the sample function's masks hide exactly that many), saves reading
    the count back from the device (a GPU sync); without it the count is read from the mask."""
    if num_mask is None:
        num_mask = int(mask[0].sum())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    n_vis = mask.shape[1] - num_mask
    return order[:, :n_vis], order[:, n_vis:]
