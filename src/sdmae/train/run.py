"""Building a pre-training run: the method, its data, the optimiser and schedule, resumed from the run folder
when it holds a checkpoint. The loop (`sdmae.train.loop`) only drives what this builds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from sdmae.checkpoint import save_atomic
from sdmae.config import Config, dump_yaml
from sdmae.data.check import SKIPPED_FILE, drop_unreadable
from sdmae.data.loader import GlobalBatchSampler, PretrainDataset, build_loader, crop_on_device
from sdmae.data.sources import open_sources
from sdmae.methods import Method, build_method
from sdmae.models import ARCHS
from sdmae.train import distributed as D
from sdmae.train.checkpoint import CheckpointPolicy, restore, resume_state, training_state
from sdmae.train.logger import truncate_log
from sdmae.train.optim import Schedule, build_optimizer
from sdmae.train.step import Stepper, compile_blocks, resolve_precision


@dataclass
class Run:
    cfg: Config
    env: D.Dist
    out: Path
    method: Method
    dataset: PretrainDataset
    schedule: Schedule
    policy: CheckpointPolicy
    stepper: Stepper
    step: int  # optimiser steps done

    def save(self, name: str = "last.pt") -> None:
        """Writes the whole training state (rank 0 only; every rank holds the same weights)."""
        if self.env.main:
            s = self.stepper
            state = training_state(self.method, s.opt, s.scaler, self.step, self.policy.epoch(self.step), self.cfg)
            save_atomic(state, self.out / "checkpoints" / name)

    def loader(self):
        """The remaining batches of the run, every rank its shard of each global batch."""
        cfg, env, accum = self.cfg, self.env, self.schedule.accum
        sampler = GlobalBatchSampler(len(self.dataset), cfg.data.batch_size, env.world, env.rank, cfg.train.seed,
                                     start=self.step * accum, total=self.schedule.total * accum)
        loader = build_loader(self.dataset, sampler, cfg.data.num_workers, pin=env.device.type == "cuda")
        D.detach_workers(loader)
        return loader


def build_run(cfg: Config, data, out: Path, env: D.Dist) -> Run:
    """Everything a run needs, in the order that makes a resumed run identical to an uninterrupted one."""
    ckpt = resume_state(out, cfg)
    source = drop_unreadable(open_sources(data, cfg.data), cfg.data, out, env.main,  # strict: stops here
                             min_side=ARCHS.get(cfg.model.name, (1,))[0])  # tiles under a patch: out
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg).to(env.device)
    dataset = PretrainDataset(source, method.sample_fn(), cfg.train.seed, skipped_log=out / SKIPPED_FILE,
                              arrays=crop_on_device(source, cfg.data.aug, env.device))
    schedule = Schedule.create(cfg, len(dataset), env.world)
    stepper, step = _optimisation(cfg, method, schedule, env, ckpt)
    if env.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))
        truncate_log(out / "log.jsonl", step)
    policy = CheckpointPolicy.create(cfg.train, schedule.steps_per_epoch, schedule.total)
    return Run(cfg, env, out, method, dataset, schedule, policy, stepper, step)


def _optimisation(cfg: Config, method: Method, schedule: Schedule, env: D.Dist,
                  ckpt: Optional[dict]) -> tuple[Stepper, int]:
    """The optimiser, loss scaler and step runner (compiled blocks, DDP wrapper); restored from `ckpt`."""
    device = env.device
    precision = resolve_precision(cfg, device)
    opt = build_optimizer(method, schedule.peak_lr, cfg.optim.weight_decay, cfg.optim.betas, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = restore(ckpt, method, opt, scaler) if ckpt is not None else 0
    if cfg.train.compile:
        compile_blocks(method)
    ddp = None
    if env.world > 1:
        ddp = DDP(method, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=method.has_unused_parameters())
    return Stepper(method, opt, scaler, precision, device, schedule.accum, cfg.optim.clip_grad, ddp), step
