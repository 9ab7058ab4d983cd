"""The pre-training loop. It knows nothing about the method beyond `sdmae.methods.Method`: it feeds batches,
runs the shared optimiser step (`sdmae.train.step`), logs the parts the method returns (averaged over
processes) and checkpoints everything needed to resume exactly (`sdmae.train.checkpoint`). Under torchrun it
trains one shard of every global batch per process (rank 0 alone logs and writes checkpoints; every rank
resumes from them)."""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

import torch

from sdmae.config import DEMO_RECIPE, Config, load_config
from sdmae.data.batch import finish_images, move_batch
from sdmae.data.transforms import sample_generator
from sdmae.errors import SdmaeError
from sdmae.runlock import run_folder_lock
from sdmae.train import distributed as D
from sdmae.train.logger import RunLogger
from sdmae.train.run import Run, build_run


def pretrain(cfg: Config, data: Optional[Sequence[str]], out_dir: str) -> dict:
    """Runs (or resumes) pre-training into `out_dir`; returns a summary dict. An exception leaves the process
    group as it is: in a multi-process run `D.fail_fast` ends the process without waiting on the others."""
    env = D.setup(cfg.train.device, cfg.train.dist_timeout)
    with run_folder_lock(Path(out_dir)) if env.main else nullcontext():  # rank 0 writes for all ranks
        summary = _pretrain(cfg, data, Path(out_dir), env)
    D.cleanup()
    return summary


def _pretrain(cfg: Config, data, out: Path, env: D.Dist) -> dict:
    run = build_run(cfg, data, out, env)
    loader = run.loader()
    monitor = None
    if env.main and cfg.train.knn_every:  # kNN accuracy on a small labelled set (sdmae.eval.monitor)
        from sdmae.eval.monitor import KnnMonitor

        monitor = KnnMonitor(cfg, env.device)
    logger = RunLogger(out, run.schedule.total, run.step, env.main, cfg.train.tensorboard)
    signum = train_steps(run, loader, logger, monitor)
    stopped = bool(signum) and run.step < run.schedule.total
    logger.close(f"stopped at step {run.step}; run the same command to resume" if stopped else None)
    if env.main and not stopped and cfg.train.reconstructions and run.method.can_reconstruct:
        save_reconstructions(run.method, run.dataset, cfg, out / "reconstructions.png", env.device)
    return {"step": run.step, "total": run.schedule.total, "stopped": stopped, "signal": signum if stopped else 0,
            "out": str(out)}


def train_steps(run: Run, loader, logger: RunLogger, monitor=None) -> int:
    """Optimiser steps from `run.step` to the end, or to the first step after a stop signal (SIGTERM, SIGINT),
    checkpointed. Returns the signal number, 0 when none came."""
    cfg, method, sched = run.cfg, run.method, run.schedule
    method.train()
    parts: dict = {}
    micro, saved_at, signum = 0, run.step, 0
    clock = [time.perf_counter(), 0]  # start of the logging interval, images trained in it
    rows = LogRows(run, logger)
    with D.StopRequest() as stop:
        for batch in loader:
            batch = move_batch(batch, run.env.device, cfg, run.dataset.arrays)
            if micro % sched.accum == 0:
                method.set_progress(run.step, sched.total, sched.steps_per_epoch)
            micro += 1
            last_micro = micro % sched.accum == 0
            res = run.stepper.forward_backward(batch, last_micro)
            for k, v in res.items():
                parts[k] = parts.get(k, 0.0) + v.detach().float() / sched.accum
            if not last_micro:
                continue
            lr = sched.lr(run.step)
            run.stepper.optimizer_step(lr, run.step, sched.total, sched.steps_per_epoch)
            run.step += 1
            clock[1] += sched.global_batch
            logger.advance()
            _log(run, parts, lr, rows, monitor, clock)
            parts = {}
            save_last, kept = run.policy.save_last(run.step), run.policy.keep(run.step)
            if save_last or kept:
                rows.flush()  # the log never lags a checkpoint (a resumed run truncates it there)
            if save_last:
                run.save()
                saved_at = run.step
            if kept:
                run.save(kept)
            signum = D.agreed_max(run.env, stop.signum)  # every rank stops at the same step, or none does
            if signum and run.step < sched.total:
                rows.flush()
                if saved_at != run.step:
                    run.save()
                break
    rows.flush()
    return signum


class LogRows:
    """Log rows whose losses are still on the device. On CUDA they are read back together, every FLUSH_ROWS
    rows (one transfer and, under torchrun, one all-reduce), so a step never waits for its own log line; on
    other devices at once. Always flushed before a checkpoint, a kNN probe and the end. A diverged loss is
    reported when its row is read back."""

    FLUSH_ROWS = 32

    def __init__(self, run: Run, logger: RunLogger):
        self.run, self.logger, self.rows = run, logger, []
        self.every = self.FLUSH_ROWS if run.env.device.type == "cuda" else 1

    def add(self, head: dict, parts: dict, tail: dict) -> None:
        self.rows.append((head, parts, tail))
        if len(self.rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        keys = sorted(self.rows[0][1])
        means = D.mean_rows(self.run.env, [p for _, p, _ in self.rows], keys)  # the same on every rank
        for (head, _, tail), row in zip(self.rows, means):
            values = dict(zip(keys, row))
            if not math.isfinite(values["loss"]):
                self.rows = []
                raise SdmaeError(f"loss is {values['loss']} at step {head['step']}: training diverged "
                                 f"(try a lower optim.base_lr or optim.clip_grad)")
            self.logger.log({**head, **values, **tail})
        self.rows = []


def _log(run: Run, parts: dict, lr: float, rows: LogRows, monitor, clock: list) -> None:
    """Every train.log_every steps, at kNN steps and at the end: a row with the global batch's losses (read
    back by `LogRows`) and the throughput since the last row."""
    step, t = run.step, run.cfg.train
    knn_due = bool(t.knn_every) and step % t.knn_every == 0
    if not (step % t.log_every == 0 or step == run.schedule.total or knn_due):
        return
    knn = {}
    if monitor and knn_due:
        rows.flush()
        knn = monitor(run.method.encoder)
    dt = time.perf_counter() - clock[0] - knn.get("knn_seconds", 0.0)
    head = {"step": step, "epoch": (step - 1) // run.schedule.steps_per_epoch, "lr": lr}
    rows.add(head, parts, {**knn, "images_per_s": clock[1] / max(dt, 1e-9)})
    clock[:] = [time.perf_counter(), 0]


@torch.no_grad()
def save_reconstructions(method, dataset, cfg: Config, path: Path, device, n: int = 6) -> None:
    """A grid of the first tiles: original, masked input, reconstruction, reconstruction + visible patches."""
    from sdmae.viz.reconstruct import rows, save_grid

    n = min(n, len(dataset))
    items = [dataset.sample_fn(dataset.source.read(i), sample_generator(cfg.train.seed, 0, i)) for i in range(n)]
    images = finish_images(torch.stack([it["image"] for it in items]).to(device), cfg.data.aug)
    mask = torch.stack([it["mask"] for it in items]).to(device)
    was_training = method.training
    method.eval()
    grid = rows(method, images, mask, cfg.data.aug.mean, cfg.data.aug.std)
    method.train(was_training)
    save_grid(grid, path, scale=max(1, 128 // cfg.model.img_size))


def main_pretrain(config: Optional[str], overrides: list[str], method: Optional[str], data, out: str) -> int:
    """Exit status: 0 when done; 128 + signal number when stopped by SIGTERM / SIGINT (checkpoint written)."""
    with D.fail_fast("pretrain"):
        sets = ([f"method.name={method}"] if method else []) + list(overrides)
        if config is None and not data:
            config = str(DEMO_RECIPE)  # the built-in default: the small CPU recipe on the sample slide
        cfg = load_config(config, sets)
        summary = pretrain(cfg, data, out)
    if summary["stopped"]:
        return 128 + summary["signal"]
    if D.env_world()[0] == 0:
        print(f"done: {summary['step']} steps, outputs in {out}", file=sys.stderr)
    return 0
