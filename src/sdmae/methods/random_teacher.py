"""A frozen copy of the encoder's random initialisation whose token features are the reconstruction targets.

Why (docs/results.md, issue 13): on PCam at CPU scale, freshly drawn weights are hard to beat, because a
random ViT's pooled tokens already read colour and texture that carry over to other slides, and pixel
reconstruction trains the encoder away from that. dBOT (Liu et al., "Exploring target representations for
masked autoencoders", 2022) found that a *randomly initialised* teacher is a usable masked-prediction target:
the student must predict, from the visible patches, what a random network reads in the hidden ones. Random
weights also lose information with depth (on PCam's colour split their third block's pooled tokens gave
5.7 kNN points more than their last), so the teacher can be cut after `method.target_block` blocks.

The teacher sees the whole image; its tokens after that block are layer-normalised without parameters, so
that each target value has unit scale, like a per-patch normalised pixel, and `method.p` keeps its meaning. It is
the student's own starting point (a copy taken before the first step), frozen and saved with the run, so a
resumed run keeps the same targets.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdmae.errors import UsageError


class RandomTeacher(nn.Module):
    def __init__(self, encoder: nn.Module, block: int):
        super().__init__()
        depth = len(encoder.blocks)
        if block > depth:
            raise UsageError(f"config key 'method.target_block' {block} is more than the {depth} blocks of the encoder")
        net = copy.deepcopy(encoder)
        net.blocks = net.blocks[:block or depth]
        net.norm = nn.Identity()  # the targets take a parameter-free layer norm instead
        self.net = net.requires_grad_(False)

    def train(self, mode: bool = True) -> "RandomTeacher":
        """Always in eval mode: drop-path in the teacher would make its targets random."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> layer-normalised tokens (B, N, D) after the teacher's last block."""
        x = self.net.forward_tokens(images).float()
        return F.layer_norm(x, x.shape[-1:], eps=1e-6)
