"""The encoder: timm's VisionTransformer (so weights keep timm's key names) that can run on visible tokens only.

No class token, fixed sine-cosine position embedding added before masking, final LayerNorm, average
pooling for downstream use. A fixed number of visible tokens per image keeps every shape static.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sdmae.errors import UsageError
from sdmae.models.init import init_linears_and_norms, qv_bias_only
from sdmae.models.pos_embed import sincos

# name -> (patch size, width, depth, heads)
ARCHS = {
    "vit_tiny_patch16": (16, 192, 12, 3),
    "vit_small_patch16": (16, 384, 12, 6),
    "vit_base_patch16": (16, 768, 12, 12),
    "vit_tiny_patch8": (8, 192, 12, 3),
    "vit_small_patch8": (8, 384, 12, 6),
    "vit_base_patch8": (8, 768, 12, 12),
}


def timm_arch_name(name: str) -> str:
    """A timm model name with the same width, depth and heads (patch size and image size go in model_args)."""
    return {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
            "vit_base": "vit_base_patch16_224"}[name.rsplit("_patch", 1)[0]]


def timm_model_args(name: str, img_size: int) -> dict:
    """Keyword arguments that make timm build exactly this encoder (weights loaded separately)."""
    patch, width, depth, heads = ARCHS[name]
    return dict(img_size=img_size, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                num_classes=0, global_pool="avg", class_token=False, fc_norm=False, qkv_bias=True)


class MaskedViT(VisionTransformer):
    """timm ViT plus `forward_visible`, which embeds and encodes only the kept patches."""

    def __init__(self, name: str, img_size: int, pos_embed: str = "1d", drop_path: float = 0.0,
                 init: str = "official"):
        if name not in ARCHS:
            raise UsageError(f"unknown model.name '{name}' (known: {', '.join(ARCHS)})")
        patch = ARCHS[name][0]
        if img_size % patch:
            raise UsageError(f"model.img_size {img_size} is not a multiple of the patch size {patch} of {name}")
        super().__init__(**timm_model_args(name, img_size), drop_path_rate=drop_path,
                         norm_layer=partial(nn.LayerNorm, eps=1e-6), weight_init="skip")
        self.arch = name
        self.pos_kind = pos_embed
        grid = img_size // patch
        self.pos_embed.requires_grad_(False)  # fixed, never trained
        with torch.no_grad():
            self.pos_embed.copy_(sincos(pos_embed, grid, grid, self.embed_dim)[None])
        self.init_weights(init)
        qv_bias_only(self.blocks)

    def init_weights(self, init: str = "official") -> None:
        """`official` (the SD-MAE code): xavier linears, and the patch embedding keeps PyTorch's Conv2d
        default (kaiming-uniform weight, uniform bias); `mae`: the patch embedding too is xavier (viewed as a
        linear layer) with a zero bias."""
        init_linears_and_norms(self)
        proj = self.patch_embed.proj
        if init == "official":
            proj.reset_parameters()
        else:
            nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
            nn.init.zeros_(proj.bias)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, K, C*p*p) patches in (c, y, x) order -> (B, K, D): the patch convolution as one matmul."""
        w = self.patch_embed.proj.weight
        return F.linear(patches, w.reshape(w.shape[0], -1), self.patch_embed.proj.bias)

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) and kept patch indices (B, V) -> encoded visible tokens (B, V, D).

        Only the kept patches are embedded, so masked patches cost nothing in the encoder.
        """
        B, C, H, W = x.shape
        p = self.patch_size
        patches = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        kept = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))
        tokens = self.embed_patches(kept) + self.pos_embed[0][ids_keep]
        tokens = self.norm_pre(tokens)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All patch tokens of full images after the final norm: (B, N, D)."""
        return self.forward_features(x)


def build_encoder(name: str, img_size: int, pos_embed: str = "1d", drop_path: float = 0.0,
                  init: str = "official") -> MaskedViT:
    return MaskedViT(name, img_size, pos_embed, drop_path, init)
