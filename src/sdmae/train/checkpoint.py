"""Pre-training checkpoints: what they hold, when they are written and how a run resumes from them. The file
I/O (atomic writes, reads that never unpickle code) is `sdmae.checkpoint`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sdmae import __version__
from sdmae.checkpoint import load_checkpoint, rng_state, set_rng_state
from sdmae.config import Config, TrainConfig, diff_training_keys, to_dict
from sdmae.errors import UsageError


def resume_state(out: Path, cfg: Config) -> Optional[dict]:
    """The checkpoint to resume from, after checking that it trains the same thing as `cfg`."""
    last = out / "checkpoints" / "last.pt"
    if not last.exists():
        return None
    ckpt = load_checkpoint(last)
    changed = diff_training_keys(ckpt.get("config", {}), to_dict(cfg))
    if changed:
        raise UsageError(f"{out} holds a run with a different config; refusing to resume. Differing keys: "
                         f"{', '.join(changed)} (use another --out, or the same settings)")
    return ckpt


def training_state(method, opt, scaler, step: int, epoch: int, cfg: Config) -> dict:
    """Everything needed to resume exactly: weights, optimiser and scaler state, step, RNG, config."""
    return {"model": method.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "step": step, "epoch": epoch, "rng": rng_state(), "config": to_dict(cfg),
            "method": cfg.method.name, "sdmae_version": __version__}


def restore(ckpt: dict, method: torch.nn.Module, opt, scaler) -> int:
    """Loads a `training_state` into the run's objects; returns the step to continue from."""
    method.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


@dataclass(frozen=True)
class CheckpointPolicy:
    """After which optimiser steps `last.pt` is rewritten and which `epoch_XXXX.pt` files are kept."""

    steps_per_epoch: int
    total: int
    every_steps: int = 0  # 0: at epoch ends and at the end only
    every_epochs: int = 1  # 0: never at epoch ends
    keep_every_epochs: int = 0  # 0: keep none

    @classmethod
    def create(cls, t: TrainConfig, steps_per_epoch: int, total: int) -> "CheckpointPolicy":
        return cls(steps_per_epoch, total, t.ckpt_every_steps, t.ckpt_every_epochs, t.keep_every_epochs)

    def epoch(self, step: int) -> int:
        """Epochs completed after `step` optimiser steps (what a checkpoint records)."""
        return step // self.steps_per_epoch

    def save_last(self, step: int) -> bool:
        """Whether `last.pt` is written after `step` steps (counted from 1)."""
        epochs = self.epoch(step)
        epoch_end = step % self.steps_per_epoch == 0
        return (step == self.total or (epoch_end and self.every_epochs > 0 and epochs % self.every_epochs == 0)
                or (self.every_steps > 0 and step % self.every_steps == 0))

    def keep(self, step: int) -> Optional[str]:
        """The name of the epoch checkpoint kept after `step` steps, or None."""
        epochs = self.epoch(step)
        if step % self.steps_per_epoch == 0 and self.keep_every_epochs > 0 and epochs % self.keep_every_epochs == 0:
            return f"epoch_{epochs:04d}.pt"
        return None
