"""Reconstruction pictures: original | masked input | reconstruction | reconstruction with visible patches.

`sdmae viz reconstruct` rebuilds the whole pre-training model (encoder and decoder) from a checkpoint;
masks come from a fixed seed, one generator per row, so the same command gives the same picture.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from sdmae.errors import UsageError
from sdmae.methods.masking import MaskSampler, patch_stats, patchify, unpatchify


@torch.no_grad()
def reconstruct(method, images: torch.Tensor, mask: torch.Tensor) -> dict:
    """Normalised images (B, 3, H, W) and masks (B, N) -> dict of (B, 3, H, W) tensors in the input's
    normalised space: `masked` (hidden patches zeroed), `pred` (predictions at masked patches, zero at
    visible ones) and `pasted` (the prediction with the input's visible patches pasted back).

    Predictions are de-normalised with each masked patch's own mean and std in pixels (the targets' space),
    inverting the target normalisation, then mapped back to the input's normalisation."""
    p = method.encoder.patch_size
    _, _, pred, ids_keep, ids_mask = method.encode_decode(images, mask)
    patches = patchify(images, p)
    index = ids_mask[..., None].expand(-1, -1, patches.shape[-1])
    mean, scale = patch_stats(torch.gather(method.pixel_patches(images), 1, index), method.target_norm)
    predicted = method.to_input_space(pred.float() * scale + mean)
    pred_full = torch.zeros_like(patches)
    pred_full.scatter_(1, index, predicted)
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
    """One row per image: original, masked input (hidden patches grey), reconstruction at the masked patches
    (visible ones grey), reconstruction with the visible patches pasted back; (H, W, 3) uint8 each."""
    out = reconstruct(method, images, mask)
    masked_rows = []
    for i in range(images.shape[0]):
        vis = to_uint8(out["masked"][i], mean, std)
        hidden = unpatchify(mask[i:i + 1, :, None].float().cpu().expand(1, -1, 3 * method.encoder.patch_size ** 2),
                            method.encoder.patch_size)[0].permute(1, 2, 0).bool().numpy()
        vis = np.where(hidden, np.uint8(128), vis)  # hidden patches shown grey
        pred = np.where(hidden, to_uint8(out["pred"][i], mean, std), np.uint8(128))  # only masked ones predicted
        masked_rows.append([to_uint8(images[i], mean, std), vis, pred, to_uint8(out["pasted"][i], mean, std)])
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


def load_method(ckpt_path: str):
    """The full pre-training model of a checkpoint, in eval mode, and its config."""
    from sdmae.config import load_config
    from sdmae.methods import build_method
    from sdmae.checkpoint import load_checkpoint, load_weights

    path = Path(ckpt_path)
    if path.is_dir():
        raise UsageError(f"--ckpt {ckpt_path} is a folder; reconstructions need a pre-training checkpoint "
                         "(export folders hold the encoder only, without the decoder)")
    if not path.exists():
        raise UsageError(f"--ckpt: no such file: {ckpt_path}")
    ckpt = load_checkpoint(path)
    cfg = load_config(base=ckpt.get("config", {}))
    method = build_method(cfg)
    if not method.can_reconstruct:
        kind = {"hog": "gradient histograms", "random_features": "a random network's features"}.get(cfg.method.target)
        what = (f"method.target={cfg.method.target}: its decoder predicts {kind}, not pixels" if kind else
                f"method '{cfg.method.name}', which has no pixel decoder")
        raise UsageError(f"{path} was trained with {what}")
    load_weights(method, ckpt["model"], path, f"method '{cfg.method.name}' with {cfg.model.name} of its config")
    return method.eval(), cfg


def fixed_masks(n: int, num_patches: int, ratio: float, seed: int) -> torch.Tensor:
    """(n, N) boolean masks; row k comes from the generator of (seed, 0, k), as a training sample's would."""
    from sdmae.data.transforms import sample_generator

    if not 0.0 < ratio < 1.0:
        raise UsageError(f"--mask-ratio must be in (0, 1), got {ratio}")
    sampler = MaskSampler(num_patches, int(ratio * num_patches))
    return torch.stack([sampler(sample_generator(seed, 0, k))["mask"] for k in range(n)])


def main_reconstruct(ckpt: str, data: Optional[Sequence[str]], out: str, n: int = 8, seed: int = 0,
                     mask_ratio: Optional[float] = None, overrides: Sequence[str] = ()) -> int:
    from sdmae.config import load_config, to_dict
    from sdmae.data.batch import finish_images
    from sdmae.data.sources import open_sources
    from sdmae.viz.figure import safe_name, save_image_grid
    from sdmae.viz.tiles import pick_tiles

    method, cfg = load_method(ckpt)
    cfg = load_config(base=to_dict(cfg), overrides=list(overrides))
    ratio = cfg.method.mask_ratio if mask_ratio is None else mask_ratio
    images, paths = pick_tiles(open_sources(data, cfg.data), n, cfg)
    mask = fixed_masks(len(paths), method.encoder.num_patches, ratio, seed)
    grid = rows(method, finish_images(images, cfg.data.aug), mask, cfg.data.aug.mean, cfg.data.aug.std)
    titles = ["original", f"masked ({ratio:.0%})", "reconstruction", "reconstruction\n+ visible patches"]
    folder = Path(out)
    save_image_grid(grid, folder / "reconstructions.png", titles)
    for k, (row, p) in enumerate(zip(grid, paths)):
        save_image_grid([row], folder / "images" / f"{k:03d}_{safe_name(p)}.png", titles)
    print(f"wrote {folder / 'reconstructions.png'} and {len(grid)} per-image PNGs in {folder / 'images'}",
          file=sys.stderr)
    return 0
