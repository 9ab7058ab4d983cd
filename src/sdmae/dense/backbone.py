"""A plain ViT as a multi-scale backbone: intermediate blocks -> the ViTDet simple feature pyramid.

The ViT's tokens all live at stride p (the patch size). As in ViTDet and BEiT/MAE segmentation (and the
official SD-MAE UperNet), four blocks' outputs are taken with timm's `forward_intermediates` and
rescaled to strides 4, 8, 16 and 32: transposed convolutions up, max pooling down.

Input size: any multiple of the patch size. The encoder is switched to timm's dynamic-image-size mode,
in which `_pos_embed` resamples the stored position table to each input's patch grid with
`resample_abs_pos_embed` (bicubic, antialiased; a no-class-token model has no prefix entries to keep
aside, a timm model with a class token keeps its entry). For sdmae encoders the table is the fixed
sine-cosine one from pre-training and stays frozen; timm encoders' learned tables are fine-tuned.
See docs/dense.md for why this and not the official code's regenerated 1-D table.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
from timm.layers import DropPath, Format, LayerNorm2d

from sdmae.errors import UsageError

STRIDES = (4, 8, 16, 32)


def make_dynamic(encoder: nn.Module) -> None:
    """Flip the switches timm's ViT sets for `dynamic_img_size=True` on an already built model."""
    pe = encoder.patch_embed
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format.NHWC
    encoder.dynamic_img_size = True


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth for fine-tuning, rising linearly to `rate` at the last block (timm's rule)."""
    blocks = encoder.blocks
    for i, blk in enumerate(blocks):
        r = rate * i / max(1, len(blocks) - 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(r) if r > 0 else nn.Identity())


def _rescale(dim: int, scale: float) -> nn.Module:
    """Resample a stride-p map by `scale` (a power of two): 2x deconvolutions up (LayerNorm + GELU between),
    max pooling down."""
    if scale == 1:
        return nn.Identity()
    if scale < 1:
        k = round(1 / scale)
        return nn.MaxPool2d(kernel_size=k, stride=k)
    layers: list[nn.Module] = []
    for i in range(round(math.log2(scale))):
        if i:
            layers += [LayerNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class ViTPyramid(nn.Module):
    """(B, 3, H, W) -> OrderedDict of 4 maps (B, D, H/s, W/s) for s in STRIDES, from blocks `out_indices`."""

    def __init__(self, encoder: nn.Module, out_indices=(3, 5, 7, 11)):
        super().__init__()
        depth = len(encoder.blocks)
        if len(out_indices) != len(STRIDES) or not all(0 <= i < depth for i in out_indices):
            raise UsageError(f"dense.out_indices must be {len(STRIDES)} block indices in [0, {depth - 1}] "
                             f"(0-based), got {list(out_indices)}")
        self.patch = encoder.patch_embed.patch_size[0]
        bad = [s for s in STRIDES if (self.patch / s) not in (0.25, 0.5, 1, 2, 4)]
        if bad:
            raise UsageError(f"patch size {self.patch} cannot be rescaled to strides {STRIDES}")
        make_dynamic(encoder)
        self.encoder = encoder
        self.out_indices = list(out_indices)
        self.out_channels = encoder.embed_dim
        self.rescale = nn.ModuleList(_rescale(self.out_channels, self.patch / s) for s in STRIDES)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        H, W = x.shape[-2:]
        if H % self.patch or W % self.patch:
            raise ValueError(f"input {H}x{W} is not a multiple of the patch size {self.patch}")
        feats = self.encoder.forward_intermediates(x, indices=self.out_indices, intermediates_only=True,
                                                   output_fmt="NCHW", stop_early=True)
        return OrderedDict((str(i), op(f)) for i, (op, f) in enumerate(zip(self.rescale, feats)))


def layer_decay_groups(model: nn.Module, encoder_prefix: str, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with layer decay as the official recipe's BEiT/mmseg constructor: embedding = layer 0,
    block i = layer i + 1, the new layers (pyramid, heads) = layer depth + 1 with scale 1, and layer l scaled
    by decay^(depth + 1 - l). timm groups the encoder; its scales stop at the last block, so they are
    multiplied by one more `layer_decay`."""
    from timm.optim import param_groups_layer_decay

    encoder = model.get_submodule(encoder_prefix)
    groups = param_groups_layer_decay(encoder, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=tuple(encoder.no_weight_decay()))
    for g in groups:
        g["lr_scale"] *= layer_decay
    in_encoder = {id(p) for g in groups for p in g["params"]}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in in_encoder:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups += [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
               {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    return [g for g in groups if g["params"]]
