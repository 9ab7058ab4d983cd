"""Experiment runner: `sdmae` with `method.target=hog` swapped for per-patch LBP histograms (not a supported target).

Why (docs/results.md, "Texture that transfers"): hand-crafted local binary patterns (LBP) of the grey level and of
the haematoxylin density beat random ViT weights on PCam's test slides with kNN, where colour does not; as a
reconstruction target they would ask the encoder for texture that a stain shift leaves alone. Each hidden patch's
target: rotation-invariant uniform LBP codes (8 neighbours on a circle, bilinear, at radius 1 and 2) of the grey
level and of the haematoxylin optical density, histogrammed per patch (4 x 10 bins), square-rooted (Hellinger)
and scaled by sqrt(10) so that the values' mean square is about that of a normalised pixel target. On PCam's
colour-cluster split it did no better than pixels, so it stays here, not in `sdmae.methods`.

    python benchmarks/lbp_target_run.py pretrain --config cpu_pcam_sdmae --data ... --set method.target=hog ...
    python benchmarks/lbp_target_run.py eval knn --ckpt RUN/checkpoints/last.pt ...

Any other `sdmae` command line works as with `sdmae`; `method.target=hog` is what selects the LBP target.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

import sdmae.methods.mae as mae
from sdmae.cli import main
from sdmae.data.stain import LOG_ADJUST, rgb_to_hed

BINS = 10  # riu2 codes of 8 neighbours: 0..8 set bits for uniform patterns, 9 for the rest
RADII = (1, 2)


def shifted(padded: torch.Tensor, margin: int, dy: float, dx: float, h: int, w: int) -> torch.Tensor:
    """(B, 1, H + 2m, W + 2m) -> (B, H, W): each pixel's value at offset (dy, dx), bilinear between 4 pixels."""
    fy, fx = math.floor(dy), math.floor(dx)
    wy, wx = dy - fy, dx - fx
    at = lambda y, x: padded[:, 0, margin + y:margin + y + h, margin + x:margin + x + w]  # noqa: E731
    return ((1 - wy) * (1 - wx) * at(fy, fx) + (1 - wy) * wx * at(fy, fx + 1)
            + wy * (1 - wx) * at(fy + 1, fx) + wy * wx * at(fy + 1, fx + 1))


def lbp_histograms(channel: torch.Tensor, radius: int, patch: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, N, 10): each patch's histogram of riu2 LBP codes (scikit-image's `uniform` method,
    edges replicated), patches in row-major order like `patchify`."""
    margin = radius + 1
    padded = F.pad(channel, (margin,) * 4, mode="replicate")
    h, w = channel.shape[-2:]
    offsets = [(round(-radius * math.sin(2 * math.pi * k / 8), 5), round(radius * math.cos(2 * math.pi * k / 8), 5))
               for k in range(8)]
    bits = torch.stack([(shifted(padded, margin, dy, dx, h, w) >= channel[:, 0]).float() for dy, dx in offsets], 1)
    transitions = (bits - bits.roll(1, dims=1)).abs().sum(1)
    codes = torch.where(transitions <= 2, bits.sum(1), torch.full_like(transitions, BINS - 1)).long()
    counts = F.avg_pool2d(F.one_hot(codes, BINS).permute(0, 3, 1, 2).float(), patch)
    return counts.flatten(2).transpose(1, 2)


def lbp_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) -> per-patch targets (B, N, 40), in place of `hog_patches`."""
    rgb = images.float().clamp(0.0, 1.0)
    grey = torch.einsum("bchw,c->bhw", rgb, rgb.new_tensor(mae.LUMA))[:, None]
    haem = rgb_to_hed(rgb)[:, :1] * LOG_ADJUST
    hists = [lbp_histograms(c, r, patch) for c in (grey, haem) for r in RADII]
    return torch.cat(hists, -1).sqrt() * BINS ** 0.5


def install() -> None:
    """Points MAE / SD-MAE's `hog` target at the LBP histograms (this process only)."""
    mae.hog_dim = lambda patch_size, channels=3: 2 * len(RADII) * BINS
    mae.hog_patches = lbp_patches


if __name__ == "__main__":
    install()
    sys.exit(main(sys.argv[1:]))
