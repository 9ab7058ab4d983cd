"""Nuclei detection: torchvision's Faster R-CNN on the ViT pyramid (+ an FPN, as ViTDet), trained on random
crops with boxes from the instance labels, run window by window over whole images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from tqdm import tqdm

from sdmae.config import DenseConfig
from sdmae.dense.backbone import ViTPyramid
from sdmae.dense.crops import to_unit
from sdmae.dense.det_metrics import coco_metrics
from sdmae.dense.instances import boxes_from_instances
from sdmae.dense.overlays import det_overlay
from sdmae.dense.seg_data import NucleiImage
from sdmae.dense.trainer import autocast
from sdmae.dense.windows import window_starts


class PyramidFPN(nn.Module):
    """ViT pyramid (strides 4..32) -> torchvision FPN levels '0'..'3' and 'pool' (stride 64)."""

    def __init__(self, pyramid: ViTPyramid, channels: int):
        super().__init__()
        self.body = pyramid
        self.fpn = FeaturePyramidNetwork([pyramid.out_channels] * 4, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: torch.Tensor):
        return self.fpn(self.body(x))


ENCODER_PREFIX = "backbone.body.encoder"


def build_detector(encoder: nn.Module, cfg: DenseConfig, mean, std) -> FasterRCNN:
    """Two classes (background, nucleus); images are never resized (min_size = max_size = crop size). The box
    head, proposal and sampling counts are cut from torchvision's (COCO-sized) defaults: a window holds tens
    of nuclei, and the box head dominated the run time on a CPU."""
    backbone = PyramidFPN(ViTPyramid(encoder, cfg.out_indices), cfg.det.fpn_channels)
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in cfg.det.anchor_sizes),
                              aspect_ratios=((0.5, 1.0, 2.0),) * len(cfg.det.anchor_sizes))
    d = cfg.det
    box_head = TwoMLPHead(d.fpn_channels * 7 * 7, d.box_head_dim)  # on torchvision's 7x7 RoIAlign
    return FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, min_size=cfg.crop_size,
                      max_size=cfg.crop_size, image_mean=list(mean), image_std=list(std),
                      rpn_pre_nms_top_n_train=1000, rpn_pre_nms_top_n_test=1000,
                      rpn_post_nms_top_n_train=d.proposals, rpn_post_nms_top_n_test=d.proposals,
                      box_head=box_head, box_predictor=FastRCNNPredictor(d.box_head_dim, 2),
                      box_batch_size_per_image=d.roi_samples, box_score_thresh=d.score_thresh,
                      box_nms_thresh=d.nms_thresh, box_detections_per_img=d.max_detections)


class DetStep:
    """One training forward: stain jitter on the device, torchvision's RPN + box losses summed."""

    def __init__(self, cfg: DenseConfig, device: torch.device):
        self.cfg, self.device = cfg, device

    def __call__(self, model: FasterRCNN, batch: dict) -> dict:
        dev = self.device
        x = to_unit(batch["image"].to(dev, non_blocking=True), batch["stain"].to(dev), self.cfg.stain_jitter)
        targets = [{"boxes": b.to(dev), "labels": torch.ones(len(b), dtype=torch.int64, device=dev)}
                   for b in batch["boxes"]]
        losses = model(list(x), targets)
        return {**losses, "loss": sum(losses.values())}


def _owner(centres: np.ndarray, starts: list[int], window: int) -> np.ndarray:
    """Index of the window (along one axis) whose centre is nearest to each box centre."""
    mids = np.asarray(starts, dtype=np.float64) + window / 2
    return np.abs(centres[:, None] - mids[None, :]).argmin(1)


@torch.no_grad()
def detect_image(model: FasterRCNN, image: np.ndarray, cfg: DenseConfig, device: torch.device):
    """(H, W, 3) uint8 -> boxes (N, 4), scores (N,). Each window keeps the boxes whose centre is nearer to its
    centre than to any other window's, so nuclei on overlaps are counted once, by the window that sees
    them whole."""
    model.eval()
    H, W = image.shape[:2]
    S = cfg.crop_size
    x = to_unit(torch.from_numpy(image).permute(2, 0, 1)[None].to(device))[0]
    x = nn.functional.pad(x, (0, max(0, S - W), 0, max(0, S - H)))
    rows, cols = window_starts(x.shape[1], S, cfg.overlap), window_starts(x.shape[2], S, cfg.overlap)
    grid = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
    boxes, scores = [], []
    for i in range(0, len(grid), 2 * cfg.batch_size):
        part = grid[i:i + 2 * cfg.batch_size]
        with autocast(device, cfg.precision):
            outs = model([x[:, rows[r]:rows[r] + S, cols[c]:cols[c] + S] for r, c in part])
        for (r, c), o in zip(part, outs):
            b = o["boxes"].float().cpu().numpy() + np.array([cols[c], rows[r], cols[c], rows[r]], np.float32)
            s = o["scores"].float().cpu().numpy()
            keep = ((_owner((b[:, 0] + b[:, 2]) / 2, cols, S) == c) & (_owner((b[:, 1] + b[:, 3]) / 2, rows, S) == r))
            boxes.append(b[keep])
            scores.append(s[keep])
    b = np.concatenate(boxes).reshape(-1, 4)
    b[:, 0::2] = b[:, 0::2].clip(0, W)
    b[:, 1::2] = b[:, 1::2].clip(0, H)
    return b, np.concatenate(scores)


def evaluate_detection(model: FasterRCNN, images: list[NucleiImage], cfg: DenseConfig, device: torch.device,
                       overlay_dir: Path) -> dict:
    """COCO-style metrics over all test images, AP50 per image, overlays of the first cfg.overlays images."""
    trues, preds, rows = [], [], []
    for i, item in enumerate(tqdm(images, desc="detect: test images", unit="img", dynamic_ncols=True)):
        true = boxes_from_instances(item.instances)
        boxes, scores = detect_image(model, item.image, cfg, device)
        trues.append(true)
        preds.append((boxes, scores))
        one = coco_metrics([true], [(boxes, scores)])
        rows.append({"image": item.name, "map": one["map"], "map50": one["map50"], "recall50": one["recall50"],
                     "n_true": len(true), "n_pred": int((scores >= cfg.det.overlay_score).sum())})
        if i < cfg.overlays:
            overlay_dir.mkdir(parents=True, exist_ok=True)
            det_overlay(item.image, true, boxes, scores, cfg.det.overlay_score).save(overlay_dir / f"{item.name}.png")
    return {**coco_metrics(trues, preds), "per_image": rows}
