"""Full fine-tuning of an encoder with the official recipe, assembled from timm's pieces.

The classifier is the encoder arranged as the official code's (mean pooling; `eval.feature_norm`
decides the norm, see sdmae.eval.features) with a fresh linear head (trunc-normal 0.02 x init_scale).
Training: AdamW with layer-wise lr decay (timm.optim, 0.75), drop path 0.1 rising linearly with depth,
timm Mixup 0.8 / CutMix 1.0 with label smoothing 0.1 folded into the soft targets, timm's RandAugment
train transform (random resized crop, flips, rand-m9-mstd0.5-inc1, random erasing 0.25), lr = base_lr *
global batch / 256 with per-step warm-up and cosine. Global batches come from the pre-training sampler
(sdmae.data.loader.GlobalBatchSampler), and each sample's augmentation from a generator seeded by
(seed, epoch, index), so `torchrun` with k processes sees the batches of one process, and an interrupted
run resumes exactly from OUT/checkpoints/last.pt (written atomically at epoch ends, every
`eval.finetune.ckpt_every_steps` and on SIGTERM/SIGINT).

The test set is evaluated every `eval.finetune.eval_every` epochs. Reported: the last evaluation (full
metrics), `best_on_test` (the epoch with the highest test accuracy, as the official script prints it: selected on
the test set, hence optimistic), `last10_mean` (mean of the last 10 evaluations, the official code's
other number) and, with `--val`, `val_selected` (test metrics at the epoch with the best validation
balanced accuracy).
"""
from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from sdmae import __version__
from sdmae.config import EvalConfig, FinetuneConfig, to_dict
from sdmae.data.loader import GlobalBatchSampler, read_with_fallback
from sdmae.data.transforms import sample_generator
from sdmae.encoders import LoadedEncoder
from sdmae.errors import SdmaeError, UsageError
from sdmae.eval.features import EvalImages, as_classifier, normalisation, normalise
from sdmae.eval.frozen import options
from sdmae.eval.labelled import Split, class_space, labels_of, open_split, remap
from sdmae.eval.metrics import classification_metrics
from sdmae.train import distributed as D
from sdmae.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from sdmae.train.optim import lr_at
from sdmae.train.step import autocast

# Changing these between an interrupted run and its resumption does not change what is trained.
RESUME_FREE = {"eval_every", "ckpt_every_steps"}
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


class TrainTiles(Dataset):
    """(epoch, index) -> (augmented image, label). An unreadable tile is replaced by the next readable one."""

    def __init__(self, source, items: np.ndarray, labels: np.ndarray, transform, seed: int):
        self.source, self.items, self.labels, self.transform, self.seed = source, items, labels, transform, seed
        self.reported: set = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        epoch, index = key
        j, img = read_with_fallback(lambda k: self.source.read(int(self.items[k])), len(self.items), index,
                                    self.reported)
        # timm's transforms draw from the global `random`, numpy and torch generators: seed all three per
        # sample and restore them after, so augmentation depends on (seed, epoch, index) only
        s = int(torch.randint(0, 2 ** 62, (1,), generator=sample_generator(self.seed, epoch, index)))
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2 ** 32)
            x = self.transform(img)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return x, int(self.labels[j])


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 to `rate` over the blocks (timm's rule)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or rate <= 0:
        return
    for i, blk in enumerate(blocks):
        r = rate * i / max(1, len(blocks) - 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(r) if r > 0 else nn.Identity())


def build_classifier(encoder: LoadedEncoder, n_classes: int, ecfg: EvalConfig) -> nn.Module:
    model = as_classifier(copy.deepcopy(encoder.model), n_classes, ecfg.feature_norm)
    set_drop_path(model, ecfg.finetune.drop_path)
    nn.init.trunc_normal_(model.head.weight, std=0.02)
    with torch.no_grad():
        model.head.weight.mul_(ecfg.finetune.init_scale)
        nn.init.zeros_(model.head.bias)
    return model  # sdmae's fixed sine-cosine position embedding stays frozen (requires_grad False)


@torch.no_grad()
def predict(model: nn.Module, dataset: EvalImages, mean, std, batch: int, workers: int, device, precision: str,
            world: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every item, sharded over processes; (probs, readable mask)."""
    idx = list(range(rank, len(dataset), world))
    loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch, shuffle=False,
                        num_workers=workers)
    model.eval()
    probs, ok = [], []
    for b in loader:
        with autocast(precision, device):
            logits = model(normalise(b["image"].to(device), mean, std))
        probs.append(torch.softmax(logits.float(), 1).cpu())
        ok.extend(not e for e in b["error"])
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0))
    parts = [(idx, p, ok)]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (idx, p, ok))
    n = len(dataset)
    k = max(x[1].shape[1] for x in parts if len(x[0]))
    all_p, all_ok = np.zeros((n, k)), np.zeros(n, dtype=bool)
    for ids, pp, oo in parts:
        if len(ids):
            all_p[ids], all_ok[ids] = pp, oo
    return all_p, all_ok


def resolve_precision(ft: FinetuneConfig, device: torch.device) -> str:
    if ft.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return ft.precision


def _eval_split(model, dataset, labels, mean, std, ecfg, device, precision, env, classes) -> dict:
    probs, ok = predict(model, dataset, mean, std, ecfg.finetune.batch_size, ecfg.num_workers, device, precision,
                        env.world, env.rank)
    keep = ok & (labels >= 0)
    return classification_metrics(labels[keep], probs[keep].argmax(1), probs[keep], classes)


@dataclass(frozen=True)
class Plan:
    """The fine-tuning run's length and learning rate, in optimiser steps of one global batch."""
    global_batch: int
    per_epoch: int
    total: int
    epochs: int
    warmup: int
    peak: float

    @classmethod
    def create(cls, ft: FinetuneConfig, n_train: int, world: int) -> "Plan":
        global_batch = ft.batch_size * world
        per_epoch = n_train // global_batch
        if per_epoch == 0:
            raise UsageError(f"--train has {n_train} labelled tiles, fewer than one global batch of "
                             f"{global_batch}: lower eval.finetune.batch_size")
        total = ft.epochs * per_epoch if ft.max_steps is None else min(ft.epochs * per_epoch, ft.max_steps)
        return cls(global_batch, per_epoch, total, -(-total // per_epoch), int(round(total * ft.warmup_epochs /
                                                                                     ft.epochs)),
                   ft.base_lr * global_batch / 256)


@dataclass
class State:
    """What a checkpoint holds beyond the weights: the step, the evaluations so far, the epoch's losses."""
    step: int = 0
    history: list = field(default_factory=list)
    last: Optional[dict] = None
    losses: list = field(default_factory=list)


def _labelled_splits(train: Split, test: Split, val: Optional[Split], cfg, ecfg: EvalConfig):
    """(sources by role, class names, labels by role (-1: excluded), indices of the training tiles)."""
    roles = [("--train", train), ("--test", test)] + ([("--val", val)] if val is not None else [])
    sources = {role: open_split(split, cfg.data, role) for role, split in roles}
    classes = class_space(sources["--train"].classes, ecfg.exclude_classes)
    labels = {role: remap(labels_of(s), s.classes, classes, ecfg.exclude_classes, role) for role, s in sources.items()}
    return sources, classes, labels, np.flatnonzero(labels["--train"] >= 0)


def _objective(ft: FinetuneConfig, n_classes: int):
    """(timm Mixup / CutMix or None, the loss on its soft or smoothed targets)."""
    mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.smoothing,
                  num_classes=n_classes) if ft.mixup > 0 or ft.cutmix > 0 else None
    criterion = (SoftTargetCrossEntropy() if mixup else
                 LabelSmoothingCrossEntropy(ft.smoothing) if ft.smoothing > 0 else nn.CrossEntropyLoss())
    return mixup, criterion


def _resume(ckpt_path: Path, run_config: dict, model, opt, scaler, env, total: int) -> State:
    if not ckpt_path.exists():
        return State()
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("config") != run_config:
        changed = sorted(k for k in set(run_config) | set(ckpt.get("config", {}))
                         if run_config.get(k) != ckpt.get("config", {}).get(k))
        raise UsageError(f"{ckpt_path.parent.parent} holds a fine-tuning run with different settings "
                         f"({', '.join(changed)}); use another --out")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = State(int(ckpt["step"]), list(ckpt["history"]), ckpt.get("last_eval"), list(ckpt["epoch_losses"]))
    if env.main:
        print(f"finetune: resuming {ckpt_path} at step {state.step}/{total}", file=sys.stderr)
    return state


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Posterize as Pillow < 11 did: 0 bits kept is a black image (Pillow 11 raises instead)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def pillow_safe_posterize(transform):
    """The official RandAugment ('rand-m9-mstd0.5-inc1') asks for 0-bit posterize whenever the sampled magnitude
    reaches 10; Pillow 11 refuses that, and a fine-tuning run crashed at a random step. The images are those of
    the official code under Pillow < 11."""
    for t in getattr(transform, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize
    return transform


def _train_loader(source, items, labels, size: int, mean, std, ft: FinetuneConfig, ecfg: EvalConfig, seed: int,
                  env, start: int, total: int) -> DataLoader:
    transform = create_transform(size, is_training=True, hflip=0.5, vflip=0.5 if ft.vflip else 0.0,
                                 color_jitter=ft.color_jitter, auto_augment=ft.randaug or None,
                                 interpolation="bicubic", mean=tuple(mean), std=tuple(std), re_prob=ft.reprob,
                                 re_mode="pixel", re_count=1)
    dataset = TrainTiles(source, items, labels[items], pillow_safe_posterize(transform), seed)
    sampler = GlobalBatchSampler(len(items), ft.batch_size, env.world, env.rank, seed, start=start, total=total)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=ecfg.num_workers,
                        pin_memory=env.device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    D.detach_workers(loader)
    return loader


def _optimizer_step(model, net, opt, scaler, criterion, images, targets, lr: float, ft: FinetuneConfig,
                    precision: str, device, step: int) -> torch.Tensor:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    with autocast(precision, device):
        loss = criterion(net(images), targets)
    if not torch.isfinite(loss):
        raise SdmaeError(f"fine-tuning loss is {loss.item()} at step {step}: lower eval.finetune.base_lr")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if ft.clip_grad:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad)
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def run(encoder: LoadedEncoder, train: Split, test: Split, val: Optional[Split], out_dir: Path,
        overrides: list, seed: int) -> dict:
    ecfg, cfg = options(overrides)
    ft = ecfg.finetune
    if (ft.mixup > 0 or ft.cutmix > 0) and ft.batch_size % 2:
        raise UsageError(f"eval.finetune.batch_size must be even with mixup/cutmix (got {ft.batch_size})")
    sources, classes, labels, items = _labelled_splits(train, test, val, cfg, ecfg)
    env = D.setup(ecfg.device)
    device, precision = env.device, resolve_precision(ft, env.device)
    mean, std = normalisation(encoder)
    plan = Plan.create(ft, len(items), env.world)
    torch.manual_seed(seed)
    model = build_classifier(encoder, len(classes), ecfg).to(device)
    opt = create_optimizer_v2(model, opt="adamw", lr=plan.peak, weight_decay=ft.weight_decay,
                              layer_decay=ft.layer_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    mixup, criterion = _objective(ft, len(classes))
    run_config = {"finetune": {k: v for k, v in to_dict(ft).items() if k not in RESUME_FREE},
                  "feature_norm": ecfg.feature_norm, "encoder": encoder.source, "classes": classes, "seed": seed,
                  "global_batch": plan.global_batch, "n_train": int(len(items))}
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    torch.manual_seed(seed + 1000 * env.rank)  # drop path differs per process
    st = _resume(ckpt_path, run_config, model, opt, scaler, env, plan.total)

    loader = _train_loader(sources["--train"], items, labels["--train"], encoder.cfg.model.img_size, mean, std, ft,
                           ecfg, seed, env, st.step, plan.total)
    evals = {role: EvalImages(sources[role], encoder.cfg.model.img_size, ecfg.interpolation)
             for role in sources if role != "--train"}
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if env.world > 1 else model

    def evaluate(role: str) -> dict:
        return _eval_split(model, evals[role], labels[role], mean, std, ecfg, device, precision, env, classes)

    with D.StopRequest() as stop:
        model.train()
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if mixup:
                np.random.seed((seed * 1_000_003 + st.step) % 2 ** 32)  # timm's Mixup draws from numpy's global RNG
                images, targets = mixup(images, targets)
            lr = lr_at(st.step, plan.total, plan.warmup, plan.peak, ft.min_lr)
            loss = _optimizer_step(model, net, opt, scaler, criterion, images, targets, lr, ft, precision, device,
                                   st.step)
            st.step += 1
            st.losses.append(D.mean_across(env, {"loss": loss})["loss"])  # the global batch's loss
            epoch_end = st.step % plan.per_epoch == 0 or st.step == plan.total
            if epoch_end and (((st.step - 1) // plan.per_epoch + 1) % ft.eval_every == 0 or st.step == plan.total):
                _end_of_epoch(st, plan, lr, evaluate, "--val" in evals, env)
                model.train()
            signum = D.agreed_max(env, stop.signum)  # every rank stops at the same step, or none does
            if epoch_end or (ft.ckpt_every_steps and st.step % ft.ckpt_every_steps == 0) or signum:
                if env.main:
                    _save(ckpt_path, model, opt, scaler, st, plan, run_config)
            if signum and st.step < plan.total:
                if env.main:
                    print(f"finetune: stopped at step {st.step}; run the same command to resume", file=sys.stderr)
                raise KeyboardInterrupt
    if st.last is None:
        raise SdmaeError(f"{ckpt_path} finished without a test evaluation; remove it to rerun")
    return {**st.last, "n_train": int(len(items)), "steps": st.step, "epochs": plan.epochs, **report(st.history)}


def _save(path: Path, model, opt, scaler, st: State, plan: Plan, run_config: dict) -> None:
    save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                 "step": st.step, "epoch": st.step // plan.per_epoch, "history": st.history, "last_eval": st.last,
                 "epoch_losses": st.losses, "rng": rng_state(), "config": run_config,
                 "sdmae_version": __version__}, path)


def _end_of_epoch(st: State, plan: Plan, lr: float, evaluate, has_val: bool, env) -> None:
    """Test (and validation) metrics of the epoch just finished, appended to the history."""
    epoch = (st.step - 1) // plan.per_epoch + 1
    row = {"epoch": epoch, "step": st.step, "lr": lr, "train_loss": float(np.mean(st.losses))}
    st.last = evaluate("--test")
    row["test"] = {k: st.last[k] for k in SUMMARY_KEYS}
    if has_val:
        v = evaluate("--val")
        row["val"] = {k: v[k] for k in SUMMARY_KEYS}
    st.history.append(row)
    st.losses = []
    if env.main:
        print(f"finetune epoch {epoch}/{plan.epochs}: loss {row['train_loss']:.4f}, test balanced "
              f"accuracy {st.last['balanced_accuracy']:.4f}", file=sys.stderr)


def report(history: list) -> dict:
    """best_on_test (by test accuracy, like the official script: optimistic), last10_mean and, with a validation
    split, val_selected."""
    out: dict = {"history": history}
    best = max(history, key=lambda r: r["test"]["accuracy"])
    out["best_on_test"] = {"epoch": best["epoch"], **best["test"]}
    tail = history[-10:]
    out["last10_mean"] = {k: (float(np.mean([r["test"][k] for r in tail])) if all(r["test"][k] is not None
                                                                                   for r in tail) else None)
                          for k in SUMMARY_KEYS}
    if all("val" in r for r in history):
        sel = max(history, key=lambda r: (r["val"]["balanced_accuracy"] or 0.0, -r["epoch"]))
        out["val_selected"] = {"epoch": sel["epoch"], **sel["test"]}
    return out
