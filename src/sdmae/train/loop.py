"""The pre-training loop. It knows nothing about the method: it feeds batches, runs the shared optimiser step
(`sdmae.train.step`), logs the parts the method returns (averaged over processes) and checkpoints everything
needed to resume exactly. Under torchrun it trains one shard of every global batch per process (rank 0 alone
logs and writes checkpoints; every rank resumes from them)."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from sdmae import __version__
from sdmae.config import DEMO_RECIPE, Config, diff_training_keys, dump_yaml, load_config, to_dict
from sdmae.data.batch import finish_images
from sdmae.data.check import drop_unreadable
from sdmae.data.loader import GlobalBatchSampler, PretrainDataset, build_loader, crop_on_device
from sdmae.data.sources import open_sources
from sdmae.data.transforms import sample_generator
from sdmae.errors import SdmaeError, UsageError
from sdmae.methods import build_method
from sdmae.train import distributed as D
from sdmae.train.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from sdmae.train.logger import RunLogger, truncate_log
from sdmae.train.optim import build_optimizer, lr_at
from sdmae.train.step import Stepper, compile_blocks, resolve_precision


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


def move_batch(batch: dict, device: torch.device, cfg: Config) -> dict:
    """Moves tensors to the device and normalises every uint8 image field (..., 3, H, W): "image", or a
    multi-view method's "views" / "local"."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    for k, v in out.items():
        if torch.is_tensor(v) and v.dtype == torch.uint8 and v.ndim >= 4 and v.shape[-3] == 3:
            out[k] = finish_images(v, cfg.data.aug, out.get(f"{k}_aug"))
    return out


def pretrain(cfg: Config, data: Optional[Sequence[str]], out_dir: str) -> dict:
    """Runs (or resumes) pre-training into `out_dir`; returns a summary dict. An exception leaves the process
    group as it is: in a multi-process run `D.fail_fast` ends the process without waiting on the others."""
    env = D.setup(cfg.train.device)
    summary = _pretrain(cfg, data, Path(out_dir), env)
    D.cleanup()
    return summary


def _pretrain(cfg: Config, data, out: Path, env: D.Dist) -> dict:
    device = env.device
    ckpt = resume_state(out, cfg)
    precision = resolve_precision(cfg, device)

    source = drop_unreadable(open_sources(data, cfg.data), cfg.data, out, env.main)  # strict: stops here
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg).to(device)
    dataset = PretrainDataset(source, method.sample_fn(), cfg.train.seed,
                              arrays=crop_on_device(source, cfg.data.aug, device))

    accum = cfg.optim.accum_steps
    global_batch = cfg.data.batch_size * env.world * accum
    micro_per_epoch = len(dataset) // (cfg.data.batch_size * env.world)
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch == 0:
        raise UsageError(f"the data has {len(dataset)} tiles, fewer than one global batch of {global_batch}: "
                         f"lower data.batch_size")
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    warmup = int(round(total * cfg.optim.warmup_epochs / cfg.train.epochs))
    peak_lr = cfg.optim.base_lr * global_batch / 256

    opt = build_optimizer(method, peak_lr, cfg.optim.weight_decay, cfg.optim.betas, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = 0
    if ckpt is not None:
        method.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        set_rng_state(ckpt["rng"])
    if env.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))
        truncate_log(out / "log.jsonl", step)

    if cfg.train.compile:
        compile_blocks(method)
    ddp = None
    if env.world > 1:
        unused = cfg.method.name == "sdmae" and cfg.method.p == 0
        ddp = DDP(method, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=unused)
    stepper = Stepper(method, opt, scaler, precision, device, accum, cfg.optim.clip_grad, ddp)

    def save(name: str, epoch: int) -> None:
        if not env.main:
            return
        state = {"model": method.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                 "step": step, "epoch": epoch, "rng": rng_state(), "config": to_dict(cfg),
                 "method": cfg.method.name, "sdmae_version": __version__}
        save_atomic(state, out / "checkpoints" / name)

    sampler = GlobalBatchSampler(len(dataset), cfg.data.batch_size, env.world, env.rank, cfg.train.seed,
                                 start=step * accum, total=total * accum)
    loader = build_loader(dataset, sampler, cfg.data.num_workers, pin=device.type == "cuda")
    D.detach_workers(loader)
    monitor = None
    if env.main and cfg.train.knn_every:  # kNN accuracy on a small labelled set (sdmae.eval.monitor)
        from sdmae.eval.monitor import KnnMonitor

        monitor = KnnMonitor(cfg, device)
    logger = RunLogger(out, total, step, env.main, cfg.train.tensorboard)
    method.train()
    parts: dict = {}
    micro = 0
    t0, images_done = time.perf_counter(), 0
    signum, saved_at = 0, step
    with D.StopRequest() as stop:
        for batch in loader:
            batch = move_batch(batch, device, cfg)
            if micro % accum == 0 and hasattr(method, "set_progress"):
                method.set_progress(step, total, steps_per_epoch)  # schedules inside a method (momentum, temperature)
            last_micro = (micro + 1) % accum == 0
            res = stepper.forward_backward(batch, last_micro)
            for k, v in res.items():
                parts[k] = parts.get(k, 0.0) + v.detach().float() / accum
            micro += 1
            if not last_micro:
                continue
            lr = lr_at(step, total, warmup, peak_lr, cfg.optim.min_lr)
            stepper.optimizer_step(lr, step, total, steps_per_epoch)
            step += 1
            images_done += global_batch
            epoch = (step - 1) // steps_per_epoch
            logger.advance()
            knn_due = bool(cfg.train.knn_every) and step % cfg.train.knn_every == 0
            if step % cfg.train.log_every == 0 or step == total or knn_due:
                values = D.mean_across(env, parts)  # the global batch's losses, the same on every rank
                if not math.isfinite(values["loss"]):
                    raise SdmaeError(f"loss is {values['loss']} at step {step}: training diverged "
                                     f"(try a lower optim.base_lr or optim.clip_grad)")
                knn = monitor(method.encoder) if monitor and knn_due else {}
                dt = time.perf_counter() - t0 - knn.get("knn_seconds", 0.0)
                logger.log({"step": step, "epoch": epoch, "lr": lr, **values, **knn,
                            "images_per_s": images_done / max(dt, 1e-9)})
                t0, images_done = time.perf_counter(), 0
            parts = {}
            epoch_end = step % steps_per_epoch == 0
            epoch_ckpt = epoch_end and cfg.train.ckpt_every_epochs and (epoch + 1) % cfg.train.ckpt_every_epochs == 0
            if epoch_ckpt or step == total or (cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0):
                save("last.pt", epoch + int(epoch_end))
                saved_at = step
            if epoch_end and cfg.train.keep_every_epochs and (epoch + 1) % cfg.train.keep_every_epochs == 0:
                save(f"epoch_{epoch + 1:04d}.pt", epoch + 1)
            signum = D.agreed_max(env, stop.signum)  # every rank stops at the same step, or none does
            if signum and step < total:
                if saved_at != step:
                    save("last.pt", epoch + int(epoch_end))
                break
    stopped = bool(signum) and step < total
    logger.close(f"stopped at step {step}; run the same command to resume" if stopped else None)
    if env.main and not stopped and cfg.train.reconstructions:
        save_reconstructions(method, dataset, cfg, out / "reconstructions.png", device)
    return {"step": step, "total": total, "stopped": stopped, "signal": signum if stopped else 0, "out": str(out)}


@torch.no_grad()
def save_reconstructions(method, dataset: PretrainDataset, cfg: Config, path: Path, device, n: int = 6) -> None:
    """A grid of the first tiles: original, masked input, reconstruction, reconstruction + visible patches."""
    from sdmae.viz.reconstruct import rows, save_grid

    if not hasattr(method, "encode_decode"):
        return
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
