"""DINO-style projection head: MLP -> L2 normalise -> weight-normalised linear layer with its norm fixed at 1."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdmae.models.init import official_trunc_normal_


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, init: str = "official"):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1)
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():  # official: trunc_normal(0.02) cut at one std; mae (DINO's): at 2 absolute
            if isinstance(m, nn.Linear):
                if init == "official":
                    official_trunc_normal_(m.weight, std=0.02)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight_norm(Linear) with g fixed at 1 is Linear with unit-norm rows: keep the direction only.
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        nn.init.kaiming_uniform_(self.last_layer.weight, a=math.sqrt(5))

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """MLP then L2 normalisation: the input of the linear last layer."""
        return F.normalize(self.mlp(x), dim=-1)

    def last(self, u: torch.Tensor) -> torch.Tensor:
        return F.linear(u, F.normalize(self.last_layer.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.bottleneck(x))

    def forward_mean(self, tokens: torch.Tensor, shortcut: bool = True) -> torch.Tensor:
        """mean_i head(x_i) over tokens (B, V, d) -> (B, out).

        The last layer is linear, so mean_i W u_i = W mean_i u_i: with `shortcut` the mean is taken
        first and the widest layer runs once per image instead of once per token (exact up to rounding).
        """
        u = self.bottleneck(tokens)
        if shortcut:
            return self.last(u.mean(dim=1))
        return self.last(u).mean(dim=1)
