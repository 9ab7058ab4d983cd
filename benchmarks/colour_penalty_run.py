"""Experiment runner: `sdmae` with a colour-decorrelation penalty added to MAE / SD-MAE's reconstruction loss.

Why (docs/results.md, "Texture that transfers"): six colour statistics explain 78 to 99 % of the pooled features'
variance of every encoder measured on PCam, and kNN on other slides follows that colour. The penalty asks the
encoder's pooled visible tokens not to follow each image's colour: within the batch, the features and the
image's colour statistics (mean and std of R, G, B of the input crop) are standardised, and the penalty is
the mean over feature dimensions of the summed squared correlations with the six statistics, weighted by
COLOUR_PENALTY (environment, default 1.0) and added to the reconstruction loss; logged as `colour_corr`.
On PCam's colour-cluster split it stopped reconstruction from learning at weight 1.0, so it stays here, not in
`sdmae.methods`.

    COLOUR_PENALTY=0.1 python benchmarks/colour_penalty_run.py pretrain --config cpu_pcam_sdmae --data ... --out RUN
"""
from __future__ import annotations

import os
import sys

import torch

import sdmae.methods.mae as mae
from sdmae.cli import main

plain_reconstruction = mae.MAE.reconstruction


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def colour_correlation(features: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(B, D) features, (B, 3, H, W) pixels -> mean over D of the summed squared batch correlations with the
    six colour statistics of each image."""
    colour = torch.cat([pixels.mean((2, 3)), pixels.std((2, 3))], 1)
    corr = standardised(features).T @ standardised(colour) / features.shape[0]
    return corr.square().sum(1).mean()


def penalised_reconstruction(self, batch: dict):
    z, h, loss, parts = plain_reconstruction(self, batch)
    penalty = colour_correlation(z.float().mean(1), self.to_pixels(batch["image"].float()))
    weight = float(os.environ.get("COLOUR_PENALTY", "1.0"))
    return z, h, loss + weight * penalty, {**parts, "colour_corr": penalty.detach()}


if __name__ == "__main__":
    mae.MAE.reconstruction = penalised_reconstruction
    sys.exit(main(sys.argv[1:]))
