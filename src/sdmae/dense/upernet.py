"""UperNet decode head (pyramid pooling + FPN fusion) on the ViT pyramid, as in BEiT/MAE segmentation.

Xiao et al., "Unified Perceptual Parsing" (2018); the official SD-MAE MoNuSeg recipe uses it with 4 pyramid
levels, pool scales (1, 2, 3, 6), dropout 0.1 and an auxiliary FCN head (loss weight 0.4) on the
stride-16 level.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdmae.dense.backbone import ViTPyramid


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """Average-pool the coarsest map to s x s grids, project, upsample back and fuse with the map itself."""

    def __init__(self, cin: int, channels: int, scales=(1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(cin, channels, 1))
                                    for s in scales)
        self.fuse = conv_bn_relu(cin + len(scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return self.fuse(torch.cat([x] + [_resize(stage(x), size) for stage in self.stages], dim=1))


class UperHead(nn.Module):
    """Maps at strides (4, 8, 16, 32) -> class logits at stride 4."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lats = [lat(f) for lat, f in zip(self.lateral, feats)] + [self.ppm(feats[-1])]
        for i in range(len(lats) - 1, 0, -1):  # top-down pathway
            lats[i - 1] = lats[i - 1] + _resize(lats[i], lats[i - 1].shape[-2:])
        outs = [s(x) for s, x in zip(self.smooth, lats[:-1])] + [lats[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(fused)


class FCNHead(nn.Module):
    """Auxiliary head: one 3x3 conv block and a classifier on one pyramid level (training signal only)."""

    def __init__(self, cin: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, channels, 3), nn.Dropout2d(dropout),
                                  nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SegModel(nn.Module):
    """ViT pyramid + UperNet: (B, 3, H, W) -> logits (B, K, H, W); in training also the auxiliary logits."""

    AUX_LEVEL = 2  # stride 16, the ViT's own resolution for patch size 16

    def __init__(self, pyramid: ViTPyramid, channels: int, num_classes: int = 2, aux: bool = True):
        super().__init__()
        self.backbone = pyramid
        c = pyramid.out_channels
        self.head = UperHead([c] * 4, channels, num_classes)
        self.aux_head: Optional[FCNHead] = FCNHead(c, channels, num_classes) if aux else None

    def forward(self, x: torch.Tensor):
        feats = list(self.backbone(x).values())
        logits = _resize(self.head(feats), x.shape[-2:])
        if self.training and self.aux_head is not None:
            return logits, _resize(self.aux_head(feats[self.AUX_LEVEL]), x.shape[-2:])
        return logits
