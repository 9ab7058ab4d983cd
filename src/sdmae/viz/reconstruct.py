"""Reconstruction pictures: original | masked input | reconstruction | reconstruction with visible patches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdmae.methods.masking import patch_stats, patchify, split_ids, unpatchify


@torch.no_grad()
def reconstruct(method, images: torch.Tensor, mask: torch.Tensor) -> dict:
    """Normalised images (B, 3, H, W) and masks (B, N) -> dict of (B, 3, H, W) tensors in the input's
    normalised space: `masked` (hidden patches zeroed), `pred` (predictions at masked patches, zero at
    visible ones) and `pasted` (the prediction with the input's visible patches pasted back).

    Predictions are de-normalised with each masked patch's own mean and std, inverting the target
    normalisation."""
    p = method.encoder.patch_size
    _, _, pred, ids_keep, ids_mask = method.encode_decode(images, mask)
    patches = patchify(images, p)
    masked_true = torch.gather(patches, 1, ids_mask[..., None].expand(-1, -1, patches.shape[-1]))
    mean, scale = patch_stats(masked_true, method.target_norm)
    pixels = pred.float() * scale + mean
    pred_full = torch.zeros_like(patches)
    pred_full.scatter_(1, ids_mask[..., None].expand_as(pixels), pixels)
    keep = (~mask)[..., None].to(patches.dtype)
    return {
        "masked": unpatchify(patches * keep, p),
        "pred": unpatchify(pred_full, p),
        "pasted": unpatchify(pred_full * (1 - keep) + patches * keep, p),
    }


def to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """One normalised (3, H, W) image -> (H, W, 3) uint8."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return ((x.cpu().float() * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def rows(method, images: torch.Tensor, mask: torch.Tensor, mean, std) -> list[list[np.ndarray]]:
    out = reconstruct(method, images, mask)
    masked_rows = []
    for i in range(images.shape[0]):
        vis = to_uint8(out["masked"][i], mean, std)
        hidden = unpatchify((mask[i:i + 1, :, None].float()).expand(1, -1, 3 * method.encoder.patch_size ** 2),
                            method.encoder.patch_size)[0].permute(1, 2, 0).bool().numpy()
        vis = np.where(hidden, np.uint8(128), vis)  # hidden patches shown grey
        masked_rows.append([to_uint8(images[i], mean, std), vis, to_uint8(out["pred"][i], mean, std),
                            to_uint8(out["pasted"][i], mean, std)])
    return masked_rows


def save_grid(image_rows: list[list[np.ndarray]], path: str | Path, pad: int = 2, scale: int = 1) -> None:
    """Rows of equally sized (H, W, 3) images -> one PNG with white gutters."""
    h, w = image_rows[0][0].shape[:2]
    cols = max(len(r) for r in image_rows)
    canvas = np.full((len(image_rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(image_rows):
        for j, im in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = im
    img = Image.fromarray(canvas)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
