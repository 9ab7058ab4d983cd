"""Process-group set-up for torchrun (NCCL on GPUs, gloo on CPUs, chosen automatically), and the rules that keep a
multi-process run from hanging: a failing rank shows its error once and leaves at once; a stop request
(SIGTERM / Ctrl-C) is agreed on by all ranks at the same step."""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from sdmae.heap import keep_freed_memory
from sdmae.errors import UsageError, user_error

TIMEOUT_ENV = "SDMAE_DIST_TIMEOUT"  # seconds a collective may wait before the run fails (default 600)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    control: Any = None  # a gloo group for small host-side agreements (stop flags), whatever the main backend

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    keep_freed_memory()  # steps on the CPU reuse warm memory instead of page-faulting it in (sdmae.heap)
    return torch.device("cpu")


def env_world() -> tuple[int, int]:
    """(rank, world size) as torchrun set them in the environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def timeout(seconds: Optional[float] = None) -> datetime.timedelta:
    """`seconds` (pre-training's train.dist_timeout), else SDMAE_DIST_TIMEOUT, else 600."""
    raw = os.environ.get(TIMEOUT_ENV, "600") if seconds is None else seconds
    try:
        return datetime.timedelta(seconds=float(raw))
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None


def setup(device_name: str, timeout_s: Optional[float] = None) -> Dist:
    """Joins the process group torchrun describes in the environment (a no-op in a single process).
    Collectives that wait longer than `timeout_s` (see `timeout`) fail, and `fail_fast` ends the run."""
    rank, world = env_world()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local)
    control = None
    if world > 1:
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout(timeout_s))
        control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return Dist(rank, world, local, device, control)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agreed_max(env: Dist, value: int) -> int:
    """The largest `value` over all ranks (every rank must call this at the same point)."""
    if env.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control)
    return int(t.item())


def mean_across(env: Dist, values: dict) -> dict:
    """Per-rank scalar tensors -> their means over all ranks, as floats (one all-reduce)."""
    keys = sorted(values)
    return dict(zip(keys, mean_rows(env, [values], keys)[0]))


def mean_rows(env: Dist, rows: list[dict], keys: list[str]) -> list[list[float]]:
    """Rows of per-rank scalar tensors -> their means over all ranks as floats, `keys` in order: one stack,
    one all-reduce and one read-back for all rows."""
    t = torch.stack([torch.stack([r[k].detach().float().reshape(()) for k in keys]) for r in rows])
    if env.world > 1:
        dist.all_reduce(t)
        t /= env.world
    return t.tolist()


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step boundary (once all ranks agree) and
    exits. A second signal stops at once. `signum` is the first signal received (0: none)."""

    def __init__(self):
        self.signum = 0
        self._old: dict = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _detached_worker(worker_id: int, chained=None) -> None:
    os.setpgrp()
    for s in (signal.SIGTERM, signal.SIGINT):  # `pkill -f` and `killall` reach workers by name: the parent decides
        signal.signal(s, signal.SIG_IGN)
    if chained is not None:
        chained(worker_id)


def detach_workers(loader) -> None:
    """Puts the DataLoader's worker processes in their own process group, ignoring SIGTERM / SIGINT. torchrun
    forwards those to each rank's whole process group, a terminal's Ctrl-C reaches the foreground group and
    `pkill -f` matches the workers' command line: a worker killed that way makes the rank fail mid-step
    instead of checkpointing. Detached workers are still ended by their parent (and end themselves when it
    dies); SIGKILL ends them as it ends anything."""
    loader.worker_init_fn = functools.partial(_detached_worker, chained=loader.worker_init_fn)


def _first_report() -> bool:
    """Whether this rank is the first of the run to report a failure (a counter in torchrun's store)."""
    rank, _ = env_world()
    if not (dist.is_available() and dist.is_initialized()):
        return rank == 0  # before the group exists, failures come from the shared inputs: rank 0 speaks
    try:
        return dist.distributed_c10d._get_default_store().add("sdmae/failures", 1) == 1
    except Exception:
        return True  # no store to agree on: better shown twice than never


def exit_code(e: BaseException) -> int:
    err = user_error(e)
    if err is not None:
        return err.exit_code
    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else 1
    return 1


def _timed_out(e: BaseException) -> bool:
    """A collective that hit the process group's timeout (gloo: 'Timed out waiting ...'; NCCL: watchdog)."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in text or "timeout" in text)


@contextlib.contextmanager
def fail_fast(command: str):
    """In a multi-process run, an exception on any rank ends that rank at once with a non-zero code (os._exit:
    no rank waits in a collective, an interpreter shutdown or a process-group teardown), and the error is
    printed by the first rank to fail only. The other ranks then fail in their next collective (or after the
    collective timeout) and are ended by torchrun. A single process raises as usual."""
    try:
        yield
    except BaseException as e:
        rank, world = env_world()
        if world == 1 or (isinstance(e, SystemExit) and e.code in (0, None)):
            raise
        code = exit_code(e)
        if _first_report():
            if isinstance(e, KeyboardInterrupt):
                text = f"sdmae {command}: interrupted\n"
            elif user_error(e) is not None:
                text = f"sdmae {command}: error: {user_error(e)}\n"
            elif _timed_out(e):
                text = (f"sdmae {command}: error: rank {rank} of {world} waited longer than the collective timeout "
                        f"(train.dist_timeout) for another rank, which did not answer (frozen, stopped or far "
                        f"slower); ending the run, the last checkpoint is kept ({str(e).splitlines()[0][:200]})\n")
            else:
                text = f"sdmae {command}: error on rank {rank}:\n{traceback.format_exc()}"
            sys.stderr.write(text)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

