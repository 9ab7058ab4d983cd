"""One optimiser step, shared by the training loop and `sdmae bench train` so that the benchmark times exactly
what training runs: forward under autocast, backward (gradients all-reduced only on the last micro-batch of
an accumulated step), optional clipping, the method's hooks, the optimiser step."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from sdmae.config import Config
from sdmae.methods import Method

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(cfg: Config, device: torch.device) -> str:
    """The step's precision; on CUDA it also sets TF32 for fp32 work (`train.tf32`), as timm and DINO do:
    several times the fp32 matmul rate on tensor cores, for a 10-bit mantissa in the inputs."""
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP[precision])


def compile_blocks(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`train.compile`: torch.compile applied in place to every transformer block ("regional compilation").
    A ViT's blocks are alike, so one compiled graph serves them all and compiling takes seconds, not minutes;
    data-dependent code around the blocks (mask handling, collectives) cannot break the graphs; state-dict keys
    and DDP are unaffected. The blocks hold nearly all of the time that compilation can save."""
    for m in model.modules():
        if isinstance(m, Block):
            m.compile(backend=backend)
    return model


@dataclass
class Stepper:
    """Runs `method` (through its DDP wrapper `ddp` in a multi-process run) and steps `opt`."""

    method: Method
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str
    device: torch.device
    accum: int = 1
    clip_grad: Optional[float] = None
    ddp: Optional[nn.Module] = None

    def forward_backward(self, batch: dict, last: bool = True) -> dict:
        """One micro-batch; returns the method's outputs (loss and its parts). Without `last`, DDP skips the
        gradient all-reduce (gradient accumulation)."""
        model = self.method if self.ddp is None else self.ddp
        sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast(self.precision, self.device):
                res = model(batch)
            self.scaler.scale(res["loss"] / self.accum).backward()
        return res

    def optimizer_step(self, lr: float, step: int, total: int, steps_per_epoch: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.clip_grad:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.clip_grad)
        self.method.before_optimizer_step(step, steps_per_epoch)  # e.g. DINO freezes its last layer early on
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(step, total)  # e.g. EMA teacher update
