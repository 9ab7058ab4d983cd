"""Frozen features: mean-pooled encoder tokens, computed once per (weights, data, transform) and cached.

How the official SD-MAE code evaluates (modeling_finetune.py with use_mean_pooling=True, used by
run_mae_eval_linear.py and run_class_finetuning.py): the encoder's final LayerNorm is replaced by an
identity, the patch tokens are averaged, and a *new* LayerNorm (`fc_norm`, weight 1, bias 0) normalises
the pooled vector; the pre-trained final norm's weights are dropped as unused keys. `eval.feature_norm`:

- `official` (default): pre-norm tokens -> mean -> parameter-free LayerNorm (the fresh `fc_norm`);
- `encoder`: the encoder's own final norm on every token, then the mean (the exported timm model with
  `global_pool='avg'`);
- `none`: the plain mean of the pre-norm tokens.

Tiles are resized to the encoder's `img_size` (whole tile, no crop) and normalised with the encoder's
mean and std. The cache key hashes the weights' bytes (not the file name), every item's path and label
(with size and mtime for real files), the transform and the precision (bf16 features of a GPU are not
served to an fp32 run), so a new checkpoint at the same path never reuses stale features.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sdmae.atomic import atomic_path
from sdmae.cachedir import cache_dir
from sdmae.config import DataConfig, EvalConfig
from sdmae.data.sources import UnreadableTile
from sdmae.data.transforms import to_uint8_chw
from sdmae.encoders import LoadedEncoder
from sdmae.errors import SdmaeError
from sdmae.train.distributed import pick_device

CACHE_VERSION = 1
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def as_classifier(model: nn.Module, num_classes: int, feature_norm: str) -> nn.Module:
    """Arranges a timm model (in place) so that `forward_head(forward_features(x), pre_logits=True)` is the
    pooled feature of `feature_norm` and `model(x)` the logits of a fresh linear head."""
    model.reset_classifier(num_classes)
    if hasattr(model, "fc_norm") and hasattr(model, "global_pool") and hasattr(model, "norm"):  # a ViT
        model.global_pool = "avg"
        width = model.embed_dim
        if feature_norm == "official":
            model.norm, model.fc_norm = nn.Identity(), nn.LayerNorm(width, eps=1e-6)
        elif feature_norm == "none":
            model.norm, model.fc_norm = nn.Identity(), nn.Identity()
        else:
            model.fc_norm = nn.Identity()
    return model


def pooled(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, 3, H, W) -> pooled features (B, D) of a model arranged by `as_classifier`."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def feature_model(encoder: LoadedEncoder, feature_norm: str) -> nn.Module:
    """A frozen copy of the encoder in eval mode that `pooled` runs; the encoder itself stays untouched."""
    model = as_classifier(copy.deepcopy(encoder.model), 0, feature_norm).eval()
    return model.requires_grad_(False)


def normalisation(encoder: LoadedEncoder) -> tuple[list, list]:
    """timm weights bring their own mean/std; sdmae encoders use the pre-training config's."""
    cfg = getattr(encoder.model, "pretrained_cfg", None) or {}
    if encoder.source.startswith("timm:") and "mean" in cfg:
        return list(cfg["mean"]), list(cfg["std"])
    return list(encoder.cfg.data.aug.mean), list(encoder.cfg.data.aug.std)


def normalise(images: torch.Tensor, mean: list, std: list) -> torch.Tensor:
    x = images.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


class EvalImages(Dataset):
    """Tiles resized to `size` as uint8 CHW; an unreadable tile comes back as zeros with its error."""

    def __init__(self, source, size: int, interpolation: str):
        self.source, self.size, self.resample = source, size, RESAMPLE[interpolation]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        try:
            img = self.source.read(i)
        except UnreadableTile as e:
            return {"image": torch.zeros(3, self.size, self.size, dtype=torch.uint8), "error": e.reason}
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), self.resample)
        return {"image": to_uint8_chw(img), "error": ""}


def precision(device: torch.device) -> str:
    """What features are computed in: bf16 autocast on CUDA (the speed of a GPU), fp32 elsewhere."""
    return "bf16" if device.type == "cuda" else "fp32"


@torch.no_grad()
def extract(model: nn.Module, dataset: EvalImages, mean: list, std: list, ecfg: EvalConfig,
            device: torch.device, desc: str, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float32 and a mask of the readable items (unreadable rows are zeros)."""
    model = model.to(device)
    loader = DataLoader(dataset, batch_size=ecfg.batch_size, num_workers=ecfg.num_workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if precision(device) == "bf16" else contextlib.nullcontext()
    feats, ok, start = [], [], 0
    for batch in tqdm(loader, desc=desc, unit="batch", file=sys.stderr, dynamic_ncols=True, mininterval=1.0):
        errors = batch["error"]
        for j, err in enumerate(errors):
            if err:
                path = dataset.source.path(start + j)
                if strict:
                    raise SdmaeError(f"unreadable tile {path}: {err} (data.strict=true)")
                print(f"warning: skipping unreadable tile {path} ({err})", file=sys.stderr)
        with amp:
            f = pooled(model, normalise(batch["image"].to(device, non_blocking=True), mean, std))
        feats.append(f.float().cpu().numpy())
        ok.extend(not e for e in errors)
        start += len(errors)
    return np.concatenate(feats).astype(np.float32), np.asarray(ok, dtype=bool)


def weights_digest(model: nn.Module) -> str:
    """Hash of every tensor of the state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_digest(source, labels: np.ndarray) -> str:
    """Hash of the items' absolute paths, labels and class names, plus size and mtime of every file behind them."""
    h = hashlib.sha256(json.dumps(list(source.classes)).encode())
    h.update(labels.tobytes())
    containers = set()
    for i in range(len(source)):
        p = os.path.abspath(source.path(i))  # `data/x` and `./data/x` are the same data
        h.update(p.encode())
        try:
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:  # an item inside a container (slide tile, HDF5 row, packed tile): hash the container
            containers.add(p.split("#", 1)[0])
    for container in sorted(containers):
        try:
            st = os.stat(container)
            h.update(f"{container}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            pass
    return h.hexdigest()


def cache_root(ecfg: EvalConfig) -> Path:
    return Path(ecfg.cache_dir) if ecfg.cache_dir else cache_dir("features")


@dataclass
class Features:
    features: np.ndarray  # (N, D) float32, rows of unreadable tiles removed
    labels: np.ndarray  # (N,) labels in the source's class list (-1: unlabelled)
    index: np.ndarray  # (N,) item index in the source
    cached: bool  # loaded from the cache
    skipped: list  # paths of unreadable items


def encode(encoder: LoadedEncoder, source, labels: np.ndarray, ecfg: EvalConfig, dcfg: DataConfig,
           desc: str) -> Features:
    """Features of every readable item of `source`, from the cache when the same weights saw the same data."""
    mean, std = normalisation(encoder)
    size = encoder.cfg.model.img_size
    data_keys = {k: v for k, v in asdict(dcfg).items() if k in ("tile_size", "mpp", "level", "tissue_min")}
    device = pick_device(ecfg.device)
    key_src = json.dumps({"v": CACHE_VERSION, "weights": weights_digest(encoder.model), "precision": precision(device),
                          "arch": type(encoder.model).__name__, "norm": ecfg.feature_norm, "size": size,
                          "interp": ecfg.interpolation, "mean": mean, "std": std,
                          "data": data_digest(source, labels), "data_cfg": data_keys}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    file = cache_root(ecfg) / f"{key}.npz"
    if ecfg.cache and file.is_file():
        try:
            with np.load(file) as z:
                feats, ok = z["features"], z["ok"]
            if len(ok) == len(source):
                print(f"{desc}: features from cache {file}", file=sys.stderr)
                return _kept(feats, ok, labels, source, True)
        except (OSError, ValueError, KeyError):
            pass  # a torn or foreign file: recompute and overwrite
    dataset = EvalImages(source, size, ecfg.interpolation)
    feats, ok = extract(feature_model(encoder, ecfg.feature_norm), dataset, mean, std, ecfg, device, desc,
                        strict=dcfg.strict)
    if ecfg.cache:
        with atomic_path(file, suffix=".npz") as tmp:
            np.savez(tmp, features=feats, ok=ok)
    return _kept(feats, ok, labels, source, False)


def _kept(feats: np.ndarray, ok: np.ndarray, labels: np.ndarray, source, cached: bool) -> Features:
    idx = np.flatnonzero(ok)
    return Features(feats[idx], labels[idx], idx, cached, [source.path(int(i)) for i in np.flatnonzero(~ok)])
