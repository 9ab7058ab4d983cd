"""The light MAE decoder: it reconstructs masked patches and gives the teacher features of visible ones."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from sdmae.models.pos_embed import sincos
from sdmae.models.init import init_linears_and_norms, official_trunc_normal_, qv_bias_only


class MaskedDecoder(nn.Module):
    """Linear(enc -> dim, no bias), mask token, fixed position embedding, pre-norm blocks, final LayerNorm,
    linear pixel head applied at masked positions only."""

    def __init__(self, enc_dim: int, grid: int, patch_size: int, dim: int = 192, depth: int = 4,
                 heads: int = 3, pos_embed: str = "1d", in_chans: int = 3, init: str = "official",
                 out_dim: int | None = None):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos(pos_embed, grid, grid, dim)[None], persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth))
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, out_dim or patch_size * patch_size * in_chans)  # out_dim: a non-pixel target
        self.init_weights(init)
        qv_bias_only(self.blocks)

    def init_weights(self, init: str = "official") -> None:
        """`official`: xavier blocks and pixel head, the encoder-to-decoder projection keeps PyTorch's Linear
        default (the official code never applies its initialiser to it), mask token trunc_normal(0.02) cut at
        one std; `mae`: xavier everywhere, mask token normal(0.02)."""
        init_linears_and_norms(self)
        if init == "official":
            self.embed.reset_parameters()
            official_trunc_normal_(self.mask_token, std=0.02)
        else:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, z: torch.Tensor, ids_keep: torch.Tensor, ids_mask: torch.Tensor):
        """Visible encoder tokens (B, V, De) -> (pixel predictions at masked positions (B, M, p*p*c),
        decoder features at visible positions (B, V, dim)).

        Tokens go in as [visible..., masked...], each with its own position embedding: attention has no
        other notion of order, so this equals MAE's unshuffle without the scatter.
        """
        pos = self.pos_embed[0]
        vis = self.embed(z) + pos[ids_keep]
        msk = self.mask_token + pos[ids_mask]
        x = torch.cat([vis, msk], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        v = z.shape[1]
        return self.pred(x[:, v:]), x[:, :v]
