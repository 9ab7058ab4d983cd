"""The BYOL views of MoCo v3 and DINO built on the training device, batched, from fixed-size uint8 tiles and the
parameters the workers drew (`views.ViewAugment.draw`, layout `views.VIEW_PARAMS`).

The same numbers as the PIL path, applied as batched tensor operations: crop + resize with `roi_align`
(bilinear with several samples per output pixel when a crop shrinks, where PIL resizes bicubically), flips and
turns, HED jitter, colour jitter with each sample's own order of brightness, contrast, saturation and hue,
grayscale, a Gaussian blur of each sample's sigma (a true Gaussian, where PIL approximates one with box
blurs), solarisation. Per-sample choices are `torch.where` selections, steps are switched by the config
alone: no step reads a tensor back (tests/test_no_sync.py). The views agree with the PIL path's to a few
grey levels (tests/test_device_views.py), not bit for bit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sdmae.config import Config
from sdmae.data.batch import device_constant, gray
from sdmae.data.stain import hed_jitter
from sdmae.methods.views import ViewSpec

EPS = 1e-8


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, hue in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = delta / maxc.clamp_min(EPS)
    d = delta.clamp_min(EPS)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, rgb in enumerate(table):
        for c in range(3):
            out[c] = torch.where(i == k, rgb[c], out[c])
    return torch.stack(out, 1)


def colour_ops(f: torch.Tensor) -> list:
    """The four jitter operations with per-sample factors f (B, 4)."""
    b, c, s, h = (f[:, k, None, None, None] for k in range(4))
    return [
        lambda y: (y * b.clamp_min(0)).clamp(0, 1),
        lambda y: (c.clamp_min(0) * y + (1 - c.clamp_min(0)) * gray(y).mean((-2, -1), keepdim=True)).clamp(0, 1),
        lambda y: (s.clamp_min(0) * y + (1 - s.clamp_min(0)) * gray(y)).clamp(0, 1),
        lambda y: hue_shift(y, h[:, 0]),
    ]


def hue_shift(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue with per-sample shifts h (B, 1, 1) in [-0.5, 0.5]."""
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(torch.cat([(hsv[:, :1] + h[:, None]) % 1.0, hsv[:, 1:]], 1))


def jitter_in_order(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each sample's four jitter operations in its own order (B, 4): at every position the operation that
    sample has there, selected with torch.where."""
    ops = colour_ops(factors)
    for k in range(4):
        for j, op in enumerate(ops):
            x = torch.where(order[:, k, None, None, None] == j, op(x), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """A separable Gaussian of each sample's sigma (B,); sigma 0 leaves the sample as it is."""
    B, C, H, W = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    w = torch.exp(-t[None] ** 2 / (2 * sigma.clamp_min(1e-3)[:, None].to(x.dtype) ** 2))
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B * C, K)
    y = F.pad(x.reshape(1, B * C, H, W), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, w[:, None, None, :], groups=B * C)
    y = F.conv2d(y, w[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def one_view(x: torch.Tensor, p: torch.Tensor, spec: ViewSpec, cfg: Config) -> torch.Tensor:
    """x (B, 3, H, W) float in [0, 1], p (B, len(VIEW_PARAMS)) -> (B, 3, size, size) in [0, 1]."""
    v, aug, size = cfg.method.views, cfg.data.aug, spec.size
    idx = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)[:, None]
    rois = torch.cat([idx, p[:, 0:2], p[:, 0:2] + p[:, 2:4]], 1)
    y = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    y = torch.where(p[:, 4, None, None, None] > 0.5, y.flip(-1), y)
    y = torch.where(p[:, 5, None, None, None] > 0.5, y.flip(-2), y)
    turns = p[:, 6, None, None, None]
    for k in (1, 2, 3):  # PIL's ROTATE_90 x k: counter-clockwise
        y = torch.where(turns == k, torch.rot90(y, k, dims=(-2, -1)), y)
    if aug.hed_jitter > 0:
        y = hed_jitter(y, p[:, 18:21], p[:, 21:24])
    if v.jitter_p > 0:
        y = jitter_in_order(y, p[:, 7:11], p[:, 11:15].round())
    if v.grayscale_p > 0:
        y = torch.where(p[:, 15, None, None, None] > 0.5, gray(y).expand_as(y), y)
    if spec.blur_p > 0:
        y = gaussian_blur(y, p[:, 16], max(v.blur_sigma) * size / 224)
    if spec.solarize_p > 0:
        y = torch.where((p[:, 17, None, None, None] > 0.5) & (y >= 128 / 255), 1 - y, y)
    return y


def device_views(tiles: torch.Tensor, params: torch.Tensor, specs: list[ViewSpec], cfg: Config) -> torch.Tensor:
    """uint8 tiles (B, H, W, 3) on the device + parameters (B, V, P) -> normalised views (B, V, 3, S, S)."""
    x = tiles.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    p = params.to(x.device, torch.float32)
    views = torch.stack([one_view(x, p[:, k], spec, cfg) for k, spec in enumerate(specs)], 1)
    aug = cfg.data.aug
    return views.sub_(device_constant(tuple(aug.mean), x.device, (3, 1, 1))).div_(
        device_constant(tuple(aug.std), x.device, (3, 1, 1)))


def batch_views(batch: dict, cfg: Config, global_specs: list[ViewSpec], local_specs: list[ViewSpec]) -> dict:
    """The batch with "views" (and "local") built on the device when the workers sent a tile and parameters."""
    if "tile" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k not in ("tile", "views_aug", "local_aug")}
    out["views"] = device_views(batch["tile"], batch["views_aug"], global_specs, cfg)
    if local_specs:
        out["local"] = device_views(batch["tile"], batch["local_aug"], local_specs, cfg)
    return out
