"""kNN accuracy during pre-training, so a collapsing or stalled run shows early in log.jsonl.

With `train.knn_every=N`, `train.knn_train=PATH` and `train.knn_val=PATH` (small labelled sets; at most
`train.knn_max` tiles of each, a fixed random subset), every N steps the main process computes frozen
features of both sets (same pooling as `sdmae eval knn`) and logs `knn_accuracy` and
`knn_balanced_accuracy` (and `knn_seconds`, left out of `images_per_s`) with that step. The tiles are
decoded and resized once, at start; the check draws no random numbers, so it does not change the
training run it watches.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn

from sdmae.config import Config, EvalConfig
from sdmae.encoders import LoadedEncoder
from sdmae.errors import UsageError
from sdmae.eval.features import EvalImages, feature_model, normalise, pooled
from sdmae.eval.knn import knn_probs
from sdmae.eval.labelled import class_space, labels_of, open_split, remap
from sdmae.eval.metrics import classification_metrics


def _load(source, labels: np.ndarray, size: int, limit: int, interpolation: str) -> tuple[torch.Tensor, np.ndarray]:
    """A fixed random subset of at most `limit` readable, labelled tiles as one uint8 tensor."""
    candidates = np.flatnonzero(labels >= 0)
    order = np.random.default_rng(0).permutation(candidates)
    data = EvalImages(source, size, interpolation)
    images, kept = [], []
    for i in order:
        if len(kept) == limit:
            break
        item = data[int(i)]
        if not item["error"]:
            images.append(item["image"])
            kept.append(labels[i])
    if not kept:
        raise UsageError("kNN monitoring: no readable labelled tiles")
    return torch.stack(images), np.asarray(kept)


class KnnMonitor:
    def __init__(self, cfg: Config, device: torch.device):
        t = cfg.train
        if not t.knn_train or not t.knn_val:
            raise UsageError("train.knn_every needs train.knn_train=PATH and train.knn_val=PATH (labelled tiles)")
        self.every, self.device, self.cfg = t.knn_every, device, cfg
        self.ecfg = EvalConfig()
        src_train = open_split([t.knn_train], cfg.data, "train.knn_train")
        src_test = open_split([t.knn_val], cfg.data, "train.knn_val")
        self.classes = class_space(src_train.classes, [], "train.knn_train")
        size = cfg.model.img_size
        y_train = remap(labels_of(src_train), src_train.classes, self.classes, [], "train.knn_train")
        y_test = remap(labels_of(src_test), src_test.classes, self.classes, [], "train.knn_val")
        self.x_train, self.y_train = _load(src_train, y_train, size, t.knn_max, self.ecfg.interpolation)
        self.x_test, self.y_test = _load(src_test, y_test, size, t.knn_max, self.ecfg.interpolation)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def _features(self, model: nn.Module, images: torch.Tensor) -> np.ndarray:
        aug = self.cfg.data.aug
        out = []
        for start in range(0, len(images), self.ecfg.batch_size):
            x = normalise(images[start:start + self.ecfg.batch_size].to(self.device), aug.mean, aug.std)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out.append(pooled(model, x).float().cpu())
        return torch.cat(out).numpy()

    def __call__(self, encoder: nn.Module) -> dict:
        """kNN accuracy of `encoder` (a timm ViT; it is copied, never modified) and the seconds it took."""
        t0 = time.perf_counter()
        model = feature_model(LoadedEncoder(encoder, self.cfg, "monitor", "monitor"), self.ecfg.feature_norm)
        model = model.to(self.device)
        f_train, f_test = self._features(model, self.x_train), self._features(model, self.x_test)
        probs = knn_probs(f_train, self.y_train, f_test, len(self.classes), self.ecfg.knn_k,
                          self.ecfg.knn_temperature, self.ecfg.knn_center)
        m = classification_metrics(self.y_test, probs.argmax(1), probs, self.classes)
        return {"knn_accuracy": m["accuracy"], "knn_balanced_accuracy": m["balanced_accuracy"],
                "knn_seconds": time.perf_counter() - t0}
