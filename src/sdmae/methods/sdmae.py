"""SD-MAE: MAE plus self-distillation on visible tokens (decoder features teach encoder features)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdmae.config import Config
from sdmae.methods.base import loss_precision
from sdmae.methods.diagnostics import collapse_stats
from sdmae.methods.ema import cosine_momentum, ema_update, frozen_copy, update_center
from sdmae.methods.mae import MAE
from sdmae.methods.masking import split_ids
from sdmae.methods.mocov3 import DEFAULT_MOMENTUM as MOCO_MOMENTUM  # sd_view=full: short runs, as MoCo v3
from sdmae.models import DINOHead


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
                      teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_sd = mean_batch(-sum_k P_k log q_k), P = softmax((t - c) / tau_t), log q = log_softmax(s / tau_s).

    Returns (loss, P, log q)."""
    probs = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_q = F.log_softmax(student / student_temp, dim=-1)
    return -(probs * log_q).sum(dim=-1).mean(), probs, log_q


class SDMAE(MAE):
    name = "sdmae"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        m, s = cfg.model, cfg.method
        self.student_head = DINOHead(self.encoder.embed_dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim,
                                     init=m.init)
        self.teacher_head = DINOHead(m.decoder_dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim, init=m.init)
        self.register_buffer("center", torch.zeros(1, m.head_out_dim))
        self.s = s
        if s.sd_view == "full":  # built last: a copy of the initial draw of everything it holds
            self.momentum_branch = frozen_copy(self.online_branch())
            self.base_momentum = MOCO_MOMENTUM if s.momentum is None else s.momentum

    def has_unused_parameters(self) -> bool:
        """p = 0 trains no head; a stopped teacher gradient, or a momentum teacher, leaves the teacher head
        without one."""
        return self.s.p == 0 or self.s.teacher_stop_grad or self.s.sd_view == "full"

    def train(self, mode: bool = True) -> "SDMAE":
        """The momentum copy is a teacher: always in eval mode (no drop path when `model.drop_path` > 0)."""
        super().train(mode)
        if self.s.sd_view == "full":
            self.momentum_branch.eval()
        return self

    def after_optimizer_step(self, step: int, total: int) -> None:
        if self.s.sd_view == "full":
            ema_update(self.momentum_branch, self.online_branch(), cosine_momentum(step + 1, total, self.base_momentum))

    def online_branch(self) -> nn.ModuleDict:
        """What `sd_view=full`'s momentum teacher follows. Not the teacher head: it gets no gradient, so it keeps
        its draw and the teacher reads it as it is."""
        return nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})

    @torch.no_grad()
    def momentum_teacher(self, images: torch.Tensor) -> torch.Tensor:
        """`sd_view=full`: the momentum copy's decoder features of *every* patch of the crop, mean-pooled through
        its teacher head (MSN's masked-siamese target, with SD-MAE's decoder as the teacher)."""
        b = self.momentum_branch
        ids_all = torch.arange(self.encoder.num_patches, device=images.device).expand(images.shape[0], -1)
        _, h = b["decoder"](b["encoder"].forward_visible(images, ids_all), ids_all, ids_all[:, :0])
        return self.teacher_head.forward_mean(h, self.s.head_shortcut)

    def forward(self, batch: dict) -> dict:
        z, h, loss_rec, parts = self.reconstruction(self.decoder_view(batch))
        out = dict(parts)
        if self.s.p == 0:
            out["loss"] = loss_rec
            return out
        if self.s.sd_view == "stain":  # the student: the same visible patches, stain-jittered
            ids_keep, _ = split_ids(batch["mask"], self.num_mask)
            z = self.encoder.forward_visible(batch["image"], ids_keep)
        student = loss_precision(self.student_head.forward_mean(z, self.s.head_shortcut))
        if self.s.sd_view == "full":
            teacher = loss_precision(self.momentum_teacher(batch["image"]))
        else:
            teacher = loss_precision(self.teacher_head.forward_mean(h, self.s.head_shortcut))
        if self.s.teacher_stop_grad:  # paper text / DINO: no gradient through the teacher branch at all
            teacher = teacher.detach()
        loss_sd, probs, log_q = distillation_loss(student, teacher, self.center, self.s.student_temp,
                                                  self.s.teacher_temp)
        update_center(self.center, probs if self.s.center_on == "probs" else teacher, self.s.center_momentum)
        out["loss"] = self.s.p * loss_sd + (1 - self.s.p) * loss_rec
        out["loss_sd"] = loss_sd.detach()
        out.update(collapse_stats(probs.detach(), log_q.detach(), z.detach().mean(dim=1)))
        return out

    def decoder_view(self, batch: dict) -> dict:
        """What the reconstruction reads. `sd_view=stain`: the crop without stain and colour jitter, as input and
        target, so that the teacher (decoder features of the clean view) asks the student (encoder on the
        jittered view) for features that do not change with the stain; the paper's term compares one view."""
        if self.s.sd_view != "stain":
            return batch
        return {"image": batch["image_clean"], "mask": batch["mask"]}
