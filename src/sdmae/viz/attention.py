"""Attention maps of the encoder on full images.

timm's blocks use fused attention (scaled_dot_product_attention), which never materialises the weights.
Here each block's attention input is captured with a forward pre-hook and the weights are recomputed
explicitly, softmax(q k^T / sqrt(d)), for this command only; the forward pass itself is untouched.
There is no class token, so a map shows the attention each patch *receives* (the mean over all queries
of the column of that key); attention rollout (Abnar & Zuidema, 2020) is the option that follows the
attention through all blocks, with the residual connection as an identity term.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

METHOD_LABELS = {"sdmae": "SD-MAE", "mae": "MAE", "mocov3": "MoCo v3", "dino": "DINO"}


def explicit_attention(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The weights of a timm `Attention` module on its input x (B, N, C): (B, heads, N, N), rows sum to 1."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def block_attentions(encoder: torch.nn.Module, images: torch.Tensor, blocks: Optional[Sequence[int]] = None
                     ) -> list[torch.Tensor]:
    """Explicit attention weights (B, heads, N, N) of the chosen blocks (all by default) on full images."""
    chosen = range(len(encoder.blocks)) if blocks is None else blocks
    inputs: dict[int, torch.Tensor] = {}
    hooks = [encoder.blocks[i].attn.register_forward_pre_hook(
        lambda mod, args, i=i: inputs.__setitem__(i, args[0])) for i in chosen]
    try:
        encoder.forward_features(images)
    finally:
        for h in hooks:
            h.remove()
    return [explicit_attention(encoder.blocks[i].attn, inputs[i]).float() for i in chosen]


def received(attn: torch.Tensor) -> torch.Tensor:
    """(..., N queries, N keys) -> (..., N): the attention each patch receives, averaged over queries."""
    return attn.mean(dim=-2)


def rollout(attns: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout over blocks: prod_l (A_l + I) / 2 with A_l averaged over heads, rows renormalised.
    (B, N, N): how much each output token draws on each input patch."""
    eye = torch.eye(attns[0].shape[-1], device=attns[0].device)
    out = eye.expand_as(attns[0][:, 0]).clone()
    for a in attns:
        a = 0.5 * a.mean(dim=1) + 0.5 * eye
        out = (a / a.sum(dim=-1, keepdim=True)) @ out
    return out


def attention_maps(encoder: torch.nn.Module, images: torch.Tensor, use_rollout: bool = False) -> dict:
    """{'heads': (B, H, g, g) last-block maps per head, 'summary': (B, g, g) their mean (or the rollout)}."""
    grid = encoder.patch_embed.grid_size
    if use_rollout:
        attns = block_attentions(encoder, images)
        last = attns[-1]
        summary = received(rollout(attns))
    else:
        last = block_attentions(encoder, images, [len(encoder.blocks) - 1])[0]
        summary = received(last).mean(dim=1)
    heads = received(last)
    return {"heads": heads.reshape(*heads.shape[:2], *grid), "summary": summary.reshape(-1, *grid)}


def overlay(tile: np.ndarray, amap: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """A (g, g) map, scaled to [0, 1] and upsampled bilinearly, blended over an (H, W, 3) uint8 tile."""
    from matplotlib import colormaps

    h, w = tile.shape[:2]
    m = F.interpolate(amap[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    heat = colormaps[cmap](m.numpy())[..., :3] * 255
    return (tile * (1 - alpha) + heat * alpha).round().clip(0, 255).astype(np.uint8)


def label_of(cfg, name: str) -> str:
    return METHOD_LABELS.get(cfg.method.name, name)


def main_attention(ckpt: str, data: Optional[Sequence[str]], out: str, compare: Optional[str] = None, n: int = 8,
                   use_rollout: bool = False, overrides: Sequence[str] = ()) -> int:
    from sdmae.config import load_config, to_dict
    from sdmae.data.batch import finish_images
    from sdmae.data.sources import open_sources
    from sdmae.encoders import load_encoder
    from sdmae.viz.figure import safe_name, save_image_grid
    from sdmae.viz.tiles import pick_tiles

    encoders = [load_encoder(ckpt=ckpt)] + ([load_encoder(ckpt=compare)] if compare else [])
    cfg = load_config(base=to_dict(encoders[0].cfg), overrides=list(overrides))
    source = open_sources(data, cfg.data)
    shown, paths = pick_tiles(source, n, cfg)  # the tiles at the first model's size
    tiles = [im.permute(1, 2, 0).numpy() for im in shown]
    labels = [label_of(e.cfg, e.name) for e in encoders]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = [f"{lab} ({e.name})" for lab, e in zip(labels, encoders)]
    kind = "rollout" if use_rollout else "mean of heads"
    results = []
    for e in encoders:
        ecfg = e.cfg
        images = shown if ecfg.model.img_size == cfg.model.img_size else pick_tiles(source, n, cfg,
                                                                                    ecfg.model.img_size)[0]
        results.append(attention_maps(e.model.eval(), finish_images(images, ecfg.data.aug), use_rollout))
    if compare:
        titles = ["tile"] + [f"{lab}: {kind}" for lab in labels]
        grid = [[tiles[i]] + [overlay(tiles[i], r["summary"][i]) for r in results] for i in range(len(tiles))]
    else:
        heads = results[0]["heads"].shape[1]
        titles = ["tile", f"{labels[0]}: {kind}"] + [f"head {h + 1}" for h in range(heads)]
        grid = [[tiles[i], overlay(tiles[i], results[0]["summary"][i])]
                + [overlay(tiles[i], results[0]["heads"][i, h]) for h in range(heads)] for i in range(len(tiles))]
    folder = Path(out)
    save_image_grid(grid, folder / "attention.png", titles)
    for k, (row, p) in enumerate(zip(grid, paths)):
        save_image_grid([row], folder / "images" / f"{k:03d}_{safe_name(p)}.png", titles)
    np.savez(folder / "attention.npz", paths=np.array(paths, dtype=str), labels=np.array(labels, dtype=str),
             **{f"summary_{j}": r["summary"].numpy() for j, r in enumerate(results)},
             **{f"heads_{j}": r["heads"].numpy() for j, r in enumerate(results)})
    print(f"wrote {folder / 'attention.png'}, {len(grid)} per-image PNGs and attention.npz in {folder}",
          file=sys.stderr)
    return 0
