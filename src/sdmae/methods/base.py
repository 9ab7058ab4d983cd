"""What the training loop and `sdmae bench` know of a pre-training method, and nothing more.

A method is an nn.Module whose forward(batch) returns {"loss": ..., parts...} (the parts are logged) and
whose sample_fn() does the per-sample work (crops, masks, views) in the data workers. The hooks below are
called by the shared optimiser step (`sdmae.train.step`); their defaults do nothing.
"""
from __future__ import annotations

import abc

import torch
import torch.nn as nn


class Method(nn.Module, abc.ABC):
    name: str = ""
    can_reconstruct: bool = False  # has a pixel decoder: encode_decode() and reconstruction pictures

    @abc.abstractmethod
    def sample_fn(self):
        """A picklable callable (image, torch.Generator) -> dict of tensors for one sample."""

    def has_unused_parameters(self) -> bool:
        """Whether some trainable parameters get no gradient in a step (DDP's find_unused_parameters)."""
        return False

    def set_progress(self, step: int, total: int, steps_per_epoch: int) -> None:
        """Before the forward pass of optimiser step `step`: schedules inside the method (momentum, temperature)."""

    def before_optimizer_step(self, step: int, steps_per_epoch: int) -> None:
        """Gradients are ready (and unscaled, clipped): e.g. DINO drops its last layer's gradients early on."""

    def after_optimizer_step(self, step: int, total: int) -> None:
        """Weights are updated: e.g. the EMA teacher follows the student."""


def loss_precision(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 under autocast (fp16 / bf16 activations) and never below the model's
    own precision (float64 stays float64: the official-code oracle compares in it)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A Python number as a 0-d tensor on `like`'s device for the log: a fill, not a host-to-device copy."""
    return torch.full((), value, dtype=like.dtype, device=like.device)
