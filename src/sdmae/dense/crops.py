"""Training crops for the dense tasks, with per-sample randomness (DESIGN section 8).

Sample i of a run is drawn from a generator seeded by (seed, 0, i): which image, the crop's scale and
place, flips, 90-degree turns and the stain perturbation's parameters. Step s of a run therefore sees
samples s*B .. s*B+B-1 whatever the number of workers, and a resumed run continues exactly.
Workers return uint8 crops; the stain perturbation and normalisation run batched on the device.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

from sdmae.config import DenseConfig
from sdmae.data.stain import hed_factors, hed_jitter
from sdmae.data.transforms import sample_generator
from sdmae.dense.instances import boxes_from_instances
from sdmae.dense.seg_data import NucleiImage


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _resize(arr: np.ndarray, size: int, resample) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    if arr.dtype == np.int32:
        return np.asarray(Image.fromarray(arr, mode="I").resize((size, size), resample), dtype=np.int32)
    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


class CropDataset(torch.utils.data.Dataset):
    """Index i -> {"image": (3, S, S) uint8, "mask": (S, S) int64, "stain": (6,) uniforms, ["boxes": (N, 4)]}."""

    def __init__(self, images: list[NucleiImage], cfg: DenseConfig, seed: int, boxes: bool = False):
        self.images, self.cfg, self.seed, self.boxes = images, cfg, seed, boxes

    def __getitem__(self, index: int) -> dict:
        cfg, S = self.cfg, self.cfg.crop_size
        g = sample_generator(self.seed, 0, index)
        item = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        H, W = item.mask.shape
        side = min(H, W, max(1, round(S / float(_uniform(g, cfg.scale_min, cfg.scale_max)))))
        top = int(torch.randint(H - side + 1, (1,), generator=g))
        left = int(torch.randint(W - side + 1, (1,), generator=g))
        flips = torch.rand(2, generator=g)
        turns = int(torch.randint(4, (1,), generator=g))
        stain = torch.rand(6, generator=g, dtype=torch.float64)  # uniforms of the HED jitter's factors
        box = (slice(top, top + side), slice(left, left + side))
        arrays = [_resize(item.image[box], S, Image.BILINEAR), _resize(item.mask[box], S, Image.NEAREST)]
        if self.boxes:
            arrays.append(_resize(item.instances[box], S, Image.NEAREST))
        if cfg.hflip and flips[0] < 0.5:
            arrays = [a[:, ::-1] for a in arrays]
        if cfg.vflip and flips[1] < 0.5:
            arrays = [a[::-1] for a in arrays]
        if cfg.rot90 and turns:
            arrays = [np.rot90(a, turns) for a in arrays]
        arrays = [np.ascontiguousarray(a) for a in arrays]
        out = {"image": torch.from_numpy(arrays[0]).permute(2, 0, 1).contiguous(),
               "mask": torch.from_numpy(arrays[1].astype(np.int64)), "stain": stain}
        if self.boxes:
            out["boxes"] = torch.from_numpy(boxes_from_instances(arrays[2], cfg.det.min_box))
        return out


def collate(items: list[dict]) -> dict:
    """Stacks fixed-size entries; boxes (a different number per crop) stay a list."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "boxes"}
    if "boxes" in items[0]:
        out["boxes"] = [it["boxes"] for it in items]
    return out


def to_unit(images: torch.Tensor, stain: Optional[torch.Tensor] = None, sigma: float = 0.0) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 1]; HED stain jitter of strength `sigma` (Tellez et al. 2018) when the
    per-sample uniforms `stain` (B, 6) are given."""
    x = images.float().div_(255.0)
    if stain is None or sigma <= 0:
        return x
    alpha, beta = hed_factors(stain.to(x), sigma)
    return hed_jitter(x, alpha, beta)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
