"""Initialisation and parameter conventions: the official SD-MAE code's (the default) and MAE's (`model.init`)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block


def official_trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """The official SD-MAE code's trunc_normal_: a normal of `std` cut at plus or minus one std (std ~0.54 std)."""
    return trunc_normal_(t, std=std, a=-std, b=std)


class QVBiasLinear(nn.Linear):
    """The fused qkv projection with BEiT-style biases, as in the official code: its k third is never added.

    The parameter keeps timm's shape and name (`qkv.bias`, 3 x dim) so that weights export to timm as they are;
    its k third is zero, gets an exactly-zero gradient and so is never moved by AdamW. (A k bias adds the same
    number to all of a query's scores, which softmax ignores: it could never change an output, only drift.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return F.linear(x, self.weight)
        d = self.bias.shape[0] // 3
        bias = torch.cat([self.bias[:d], torch.zeros_like(self.bias[d:2 * d]), self.bias[2 * d:]])
        return F.linear(x, self.weight, bias)


def qv_bias_only(blocks: Iterable[Block]) -> None:
    """Swaps each block's qkv Linear for a QVBiasLinear holding the same parameters, its k bias zeroed."""
    for blk in blocks:
        old = blk.attn.qkv
        new = nn.utils.skip_init(QVBiasLinear, old.in_features, old.out_features, bias=old.bias is not None)
        new.weight = old.weight
        if old.bias is not None:
            new.bias = old.bias
            d = old.bias.shape[0] // 3
            with torch.no_grad():
                new.bias[d:2 * d].zero_()
        blk.attn.qkv = new


def init_linears_and_norms(module: nn.Module) -> None:
    """Xavier-uniform linear weights, zero biases, unit LayerNorms: both initialisations' transformer blocks."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
