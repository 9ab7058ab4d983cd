"""Nuclei segmentation: UperNet on the ViT pyramid, cross-entropy + Dice on random crops, sliding-window
inference on whole images, pixel and instance metrics, overlays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from sdmae.config import DenseConfig
from sdmae.dense.backbone import ViTPyramid
from sdmae.dense.crops import normalise, to_unit
from sdmae.dense.instances import label_instances
from sdmae.dense.overlays import seg_overlay
from sdmae.dense.seg_data import NucleiImage
from sdmae.dense.seg_metrics import aji, confusion, panoptic_quality, pixel_scores
from sdmae.dense.trainer import autocast
from sdmae.dense.upernet import SegModel
from sdmae.dense.windows import sliding_window


def build_seg_model(encoder: torch.nn.Module, cfg: DenseConfig) -> SegModel:
    return SegModel(ViTPyramid(encoder, cfg.out_indices), cfg.seg.head_channels, num_classes=2,
                    aux=cfg.seg.aux_weight > 0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the nucleus class over the whole batch (V-Net style, smoothed by eps)."""
    p = logits.float().softmax(1)[:, 1]
    t = target.float()
    return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


class SegStep:
    """One training forward: stain jitter + normalisation on the device, CE + Dice (+ auxiliary head)."""

    def __init__(self, cfg: DenseConfig, mean, std, device: torch.device):
        self.cfg, self.mean, self.std, self.device = cfg, mean, std, device

    def __call__(self, model: SegModel, batch: dict) -> dict:
        dev = self.device
        x = to_unit(batch["image"].to(dev, non_blocking=True), batch["stain"].to(dev), self.cfg.stain_jitter)
        x = normalise(x, self.mean, self.std)
        y = batch["mask"].to(dev, non_blocking=True)
        out = model(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        ce, dice = F.cross_entropy(logits.float(), y), dice_loss(logits, y)
        parts = {"loss_ce": ce, "loss_dice": dice, "loss": ce + self.cfg.seg.dice_weight * dice}
        if aux is not None:
            parts["loss_aux"] = F.cross_entropy(aux.float(), y) + self.cfg.seg.dice_weight * dice_loss(aux, y)
            parts["loss"] = parts["loss"] + self.cfg.seg.aux_weight * parts["loss_aux"]
        return parts


@torch.no_grad()
def predict_prob(model: SegModel, image: np.ndarray, cfg: DenseConfig, mean, std, device: torch.device) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) nucleus probability from overlapping windows of cfg.crop_size."""
    model.eval()
    x = normalise(to_unit(torch.from_numpy(image).permute(2, 0, 1)[None].to(device)), mean, std)[0]
    with autocast(device, cfg.precision):
        logits = sliding_window(model, x, cfg.crop_size, cfg.overlap, batch_size=2 * cfg.batch_size)
    return logits.softmax(0)[1].cpu().numpy()


def evaluate_segmentation(model: SegModel, images: list[NucleiImage], cfg: DenseConfig, mean, std,
                          device: torch.device, overlay_dir: Path) -> dict:
    """Pixel metrics over all test pixels together, instance metrics (AJI, PQ) as the mean over images,
    and every value per image; overlays of the first cfg.overlays images."""
    total = np.zeros((2, 2), np.int64)
    rows, ajis, pqs = [], [], []
    for i, item in enumerate(tqdm(images, desc="segment: test images", unit="img", dynamic_ncols=True)):
        prob = predict_prob(model, item.image, cfg, mean, std, device)
        pred = (prob > cfg.seg.threshold).astype(np.uint8)
        conf = confusion(pred, item.mask)
        total += conf
        inst = label_instances(prob, cfg.seg.threshold, cfg.seg.instances, cfg.seg.watershed_h,
                               cfg.seg.watershed_sigma, cfg.seg.min_size)
        pq = panoptic_quality(item.instances, inst)
        a = aji(item.instances, inst)
        ajis.append(a)
        pqs.append(pq)
        n_true = int(np.count_nonzero(np.bincount(item.instances.ravel())[1:]))
        rows.append({"image": item.name, **pixel_scores(conf), "aji": a, **pq, "n_true": n_true,
                     "n_pred": int(inst.max())})
        if i < cfg.overlays:
            overlay_dir.mkdir(parents=True, exist_ok=True)
            seg_overlay(item.image, item.instances, inst).save(overlay_dir / f"{item.name}.png")
            Image.fromarray((prob * 255).round().astype(np.uint8)).save(overlay_dir / f"{item.name}_prob.png")
    return {**pixel_scores(total), "aji": float(np.mean(ajis)), "pq": float(np.mean([p["pq"] for p in pqs])),
            "dq": float(np.mean([p["dq"] for p in pqs])), "sq": float(np.mean([p["sq"] for p in pqs])),
            "per_image": rows}
