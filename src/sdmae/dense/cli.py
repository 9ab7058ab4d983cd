"""Command-line parsers of `sdmae eval segment` and `sdmae eval detect` (the shared `sdmae eval` options)."""
from __future__ import annotations

from sdmae.eval.cli import protocol_command

LAYOUT = ("--train/--test: one folder each, images/ (or Tissue_Images/) with masks_binary/, masks_instance/ "
          "or MoNuSeg XML outlines (annotations_xml/, Annotations/ or beside the images). ")

add_segment = protocol_command(
    "segment", "nuclei segmentation: UperNet on the ViT pyramid (Dice, mIoU, AJI, PQ; resumes)",
    "Fine-tunes the encoder with a UperNet head on its simple feature pyramid (blocks 4, 6, 8, 12 at strides "
    "4-32) with cross-entropy + Dice on random crops (flips, 90-degree turns, HED stain jitter), AdamW with "
    "layer decay 0.65 and a poly schedule; predicts whole test images with overlapping sliding windows; "
    "instances by watershed. Writes metrics.json (per image too), overlays/*.png and checkpoints/ (resumes). "
    + LAYOUT + "Options: --set eval.dense.* (CPU-sized defaults; the paper's schedule: eval.dense.crop_size=512 "
    "eval.dense.iters=20000 eval.dense.batch_size=16, see docs/dense.md).")
add_detect = protocol_command(
    "detect", "nuclei detection: Faster R-CNN on the ViT pyramid (COCO mAP, mAP@0.5, recall; resumes)",
    "Fine-tunes the encoder inside torchvision's Faster R-CNN (ViT pyramid + FPN) on random crops with boxes "
    "from the instance labels; detects window by window over whole test images. Writes metrics.json (COCO "
    "mAP, mAP@0.5, mAP@0.75, AR, per image), overlays/*.png and checkpoints/ (resumes). " + LAYOUT +
    "Options: --set eval.dense.* and eval.dense.det.* (see docs/dense.md).")
