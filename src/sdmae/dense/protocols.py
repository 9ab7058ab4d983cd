"""`segment` and `detect` as evaluation protocols (sdmae.eval.registry): one seed of fine-tuning an encoder on
annotated nuclei, then whole-image evaluation. The caller averages seeds and writes metrics.json."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import torch

from sdmae.config import DenseConfig, EvalConfig, load_eval_config
from sdmae.dense.backbone import set_drop_path
from sdmae.dense.crops import CropDataset
from sdmae.dense.seg_data import find_entries, load_entry
from sdmae.dense.trainer import run_identity, train
from sdmae.encoders import LoadedEncoder
from sdmae.errors import UsageError


def folder_of(split, role: str) -> Path:
    """The one split folder the dense protocols read (see sdmae.dense.seg_data for its layouts)."""
    if isinstance(split, (str, Path)):
        split = [split]
    if not isinstance(split, (list, tuple)) or len(split) != 1:
        raise UsageError(f"{role}: segment and detect read one folder (images/ with masks_binary/, "
                         f"masks_instance/ or XML outlines), got {split!r}")
    return Path(split[0])


def options(overrides: Optional[list]) -> EvalConfig:
    return load_eval_config([s for s in overrides or [] if s.split("=", 1)[0].strip().startswith("eval.")])


def device_of(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("eval.device=cuda but no CUDA device is available")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def norm_stats(encoder: LoadedEncoder) -> tuple[list, list]:
    """The normalisation the encoder was pre-trained with (timm weights: their pretrained_cfg)."""
    pcfg = getattr(encoder.model, "pretrained_cfg", None) or {}
    if encoder.name.startswith("timm:") and "mean" in pcfg:
        return list(pcfg["mean"]), list(pcfg["std"])
    return list(encoder.cfg.data.aug.mean), list(encoder.cfg.data.aug.std)


def _prepare(protocol: str, encoder: LoadedEncoder, train_split, test_split, overrides, seed: int):
    ecfg = options(overrides)
    cfg: DenseConfig = ecfg.dense
    train_entries = find_entries(folder_of(train_split, "--train"), "--train")
    test_entries = find_entries(folder_of(test_split, "--test"), "--test")
    device = device_of(ecfg.device)
    enc = copy.deepcopy(encoder.model)  # the caller's encoder is shared between seeds
    set_drop_path(enc, cfg.drop_path)
    torch.manual_seed(seed)  # the new layers' initialisation
    identity = run_identity(cfg, protocol=protocol, encoder=encoder.source, seed=seed,
                            train=[e.image.name for e in train_entries])
    return ecfg, cfg, device, enc, identity, [load_entry(e) for e in train_entries], \
        [load_entry(e) for e in test_entries]


def _finish(metrics: dict, train_imgs, test_imgs, summary: dict, eval_s: float) -> dict:
    return {**metrics, "n_train": len(train_imgs), "n_test": len(test_imgs),
            "instances_from_binary_masks": any(i.instances_from_mask for i in train_imgs + test_imgs),
            "train_iters_run": summary["steps_run"], "train_seconds": summary["seconds"], "eval_seconds": eval_s}


def segment(encoder: LoadedEncoder, train_split, test_split, val, out_dir: Path, overrides: list, seed: int) -> dict:
    """UperNet fine-tuning; metrics: dice, miou, pixel_accuracy, aji, pq (dq, sq), per_image."""
    from sdmae.dense.seg_train import SegStep, build_seg_model, evaluate_segmentation

    ecfg, cfg, device, enc, identity, train_imgs, test_imgs = _prepare("segment", encoder, train_split,
                                                                       test_split, overrides, seed)
    mean, std = norm_stats(encoder)
    model = build_seg_model(enc, cfg).to(device)
    out_dir = Path(out_dir)
    summary = train(model, "backbone.encoder", CropDataset(train_imgs, cfg, seed), SegStep(cfg, mean, std, device),
                    cfg, device, ecfg.num_workers, out_dir, identity, desc=f"segment seed {seed}")
    t = time.perf_counter()
    metrics = evaluate_segmentation(model, test_imgs, cfg, mean, std, device, out_dir / "overlays")
    return _finish(metrics, train_imgs, test_imgs, summary, time.perf_counter() - t)


def detect(encoder: LoadedEncoder, train_split, test_split, val, out_dir: Path, overrides: list, seed: int) -> dict:
    """Faster R-CNN fine-tuning; metrics: map, map50, map75, recall (AR), recall50, per_image."""
    from sdmae.dense.detect import ENCODER_PREFIX, DetStep, build_detector, evaluate_detection

    ecfg, cfg, device, enc, identity, train_imgs, test_imgs = _prepare("detect", encoder, train_split,
                                                                       test_split, overrides, seed)
    mean, std = norm_stats(encoder)
    model = build_detector(enc, cfg, mean, std).to(device)
    out_dir = Path(out_dir)
    summary = train(model, ENCODER_PREFIX, CropDataset(train_imgs, cfg, seed, boxes=True), DetStep(cfg, device),
                    cfg, device, ecfg.num_workers, out_dir, identity, desc=f"detect seed {seed}")
    t = time.perf_counter()
    metrics = evaluate_detection(model, test_imgs, cfg, device, out_dir / "overlays")
    return _finish(metrics, train_imgs, test_imgs, summary, time.perf_counter() - t)
