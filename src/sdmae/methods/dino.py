"""DINO (Caron et al. 2021): self-distillation with no labels, multi-crop, an EMA teacher.

    teacher  P_a = softmax((g_t(f_t(x_a)) - c) / tau_t)      a in the 2 global views, no gradient
    student  log Q_v = log_softmax(g_s(f_s(x_v)) / tau_s)     v in the 2 global + N local views
    L = mean over pairs (a, v), v != a, of mean_batch( - sum_k P_a,k log Q_v,k )
    c <- m_c c + (1 - m_c) mean over the global batch of the teacher's logits (both global views)

f: the encoder, mean-pooled tokens; g: DINO head (3-layer MLP, L2 normalisation, weight-normalised
last layer). The teacher is an EMA of the student with a cosine momentum schedule; tau_t warms up
linearly from `warmup_teacher_temp`; the student head's last layer is frozen at first. The teacher's
encoder is what DINO evaluates, so it is the one stored as `encoder.*` and exported.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from sdmae.config import Config
from sdmae.methods.base import Method, scalar
from sdmae.methods.device_views import batch_views
from sdmae.methods.diagnostics import collapse_stats
from sdmae.methods.ema import cosine_momentum, ema_update, frozen_copy, update_center
from sdmae.methods.views import MultiViewSampleFn, global_specs, local_specs
from sdmae.models import DINOHead, build_encoder

DEFAULT_MOMENTUM = 0.996
GLOBAL_SCALE = (0.4, 1.0)


def encode(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean-pooled final-norm tokens of full images of any size (a multiple of the patch size). At other
    sizes than the encoder's, its fixed position embedding is resampled to the crop's grid, as DINO does."""
    if tuple(images.shape[-2:]) == tuple(encoder.patch_embed.img_size):
        tokens = encoder.forward_features(images)
    else:
        p = encoder.patch_size
        grid = [images.shape[-2] // p, images.shape[-1] // p]
        x = encoder.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, h*w, D)
        pos = resample_abs_pos_embed(encoder.pos_embed, grid, num_prefix_tokens=0)
        tokens = encoder.norm(encoder.blocks(encoder.norm_pre(encoder.pos_drop(x + pos))))
    return encoder.forward_head(tokens, pre_logits=True)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """student (V*B, K) and teacher (2*B, K) logits, view-major. Returns (loss, P (2B, K), log Q (V*B, K))."""
    probs = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_q = F.log_softmax(student / student_temp, dim=-1)
    p_views, q_views = probs.chunk(2), log_q.chunk(student.shape[0] // (probs.shape[0] // 2))
    terms = [-(p * q).sum(-1).mean() for a, p in enumerate(p_views) for v, q in enumerate(q_views) if v != a]
    return sum(terms) / len(terms), probs, log_q


class DINO(Method):
    name = "dino"

    def __init__(self, cfg: Config):
        super().__init__()
        m, s = cfg.model, cfg.method
        self.cfg, self.s = cfg, s
        self.student_encoder = build_encoder(m.name, m.img_size, m.pos_embed, m.drop_path, m.init)
        self.student_head = DINOHead(self.student_encoder.embed_dim, m.head_out_dim, m.head_hidden_dim,
                                     m.head_bottleneck_dim, init=m.init)
        teacher = build_encoder(m.name, m.img_size, m.pos_embed, init=m.init)  # the teacher has no drop path
        teacher.load_state_dict(self.student_encoder.state_dict())
        self.encoder = teacher.requires_grad_(False)
        self.teacher_head = frozen_copy(self.student_head)
        self.register_buffer("center", torch.zeros(1, m.head_out_dim))
        self.base_momentum = DEFAULT_MOMENTUM if s.momentum is None else s.momentum
        self.set_progress(0, 1, 1)

    def sample_fn(self) -> MultiViewSampleFn:
        return MultiViewSampleFn(self.cfg, *self.specs())

    def specs(self) -> tuple[list, list]:
        return global_specs(self.cfg, GLOBAL_SCALE), local_specs(self.cfg, self.encoder.patch_size)

    def _steps(self, epochs: float, total: int) -> int:
        """Epochs of the recipe as optimiser steps, scaled like the loop's warm-up (a share of train.epochs)."""
        return int(round(total * epochs / self.cfg.train.epochs))

    def set_progress(self, step: int, total: int, steps_per_epoch: int) -> None:
        s = self.s
        warm = self._steps(s.warmup_teacher_temp_epochs, total)
        t = min(1.0, step / warm) if warm > 0 else 1.0
        self.teacher_temp = s.warmup_teacher_temp + t * (s.teacher_temp - s.warmup_teacher_temp)
        self.freeze_steps = self._steps(s.freeze_last_layer_epochs, total)
        self.momentum = cosine_momentum(step, total, self.base_momentum)

    def forward(self, batch: dict) -> dict:
        batch = batch_views(batch, self.cfg, *self.specs())  # device-crop path: views made here
        views = batch["views"]  # (B, 2, 3, S, S)
        globals_ = views.transpose(0, 1).flatten(0, 1)  # (2B, 3, S, S), view-major like DINO
        with torch.no_grad():
            t_feat = encode(self.encoder, globals_)
            teacher = self.teacher_head(t_feat).float()
        student = [self.student_head(encode(self.student_encoder, globals_))]
        if "local" in batch:
            local = batch["local"].transpose(0, 1).flatten(0, 1)  # (N*B, 3, s, s)
            student.append(self.student_head(encode(self.student_encoder, local)))
        student = torch.cat(student).float()
        loss, probs, log_q = dino_loss(student, teacher, self.center, self.s.student_temp, self.teacher_temp)
        update_center(self.center, teacher, self.s.center_momentum)
        out = {"loss": loss, "teacher_temp": scalar(self.teacher_temp, loss), "momentum": scalar(self.momentum, loss)}
        out.update(collapse_stats(probs.detach(), log_q[: probs.shape[0]].detach(), t_feat))
        return out

    def before_optimizer_step(self, step: int, steps_per_epoch: int) -> None:
        if step < self.freeze_steps:  # DINO: the last layer stays put while the rest finds its feet
            for p in self.student_head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_momentum(step, total, self.base_momentum)
        ema_update(self.encoder, self.student_encoder, m)
        ema_update(self.teacher_head, self.student_head, m)
