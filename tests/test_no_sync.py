"""No host synchronisation inside a training step: on a GPU each tensor-to-Python conversion (`.item()`,
`bool(t)`, `int(t)`, `.tolist()`, `.cpu()`), data-dependent shape (`nonzero`, boolean indexing) or tensor built
from host data (`torch.tensor`, `new_tensor`) makes the CPU wait for the GPU. Here a TorchFunctionMode makes
any of them an error when sdmae's own code (or a library it calls directly: timm, torchvision) makes it, on
the CPU, for every method and both crop paths. torch's own internals (the optimiser's step counters on the
host) are not sdmae's to change and are not syncs on CUDA. On a GPU, `benchmarks/gpu_check.sh` runs the same
steps under `torch.cuda.set_sync_debug_mode("error")` (tests/test_speed_gpu.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.data import default_collate

from sdmae.config import load_config
from sdmae.data.batch import move_batch
from sdmae.data.loader import PretrainDataset
from sdmae.methods import build_method
from sdmae.train.optim import build_optimizer
from sdmae.train.step import Stepper

T = torch.Tensor
BANNED = {T.item, T.tolist, T.__bool__, T.__int__, T.__float__, T.__index__, T.numpy, T.cpu, T.new_tensor,
          T.nonzero, torch.nonzero, T.masked_select, torch.masked_select, torch.tensor, torch.as_tensor,
          T.unique, torch.unique, torch.argwhere}
TORCH = str(Path(torch.__file__).parent)
OURS = ("/sdmae/", "/timm/", "/torchvision/")


def caller() -> str:
    """The file that called the intercepted function, past torch's dispatch helpers."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith((f"{TORCH}/overrides.py", f"{TORCH}/_tensor.py")):
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"


class NoHostSync(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        banned = func in BANNED
        if func is T.__getitem__:  # boolean-mask indexing has a data-dependent shape
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            banned = any(torch.is_tensor(i) and i.dtype == torch.bool for i in idx)
        if banned:
            where = caller()
            if any(k in where for k in OURS) and not where.startswith(TORCH):
                raise AssertionError(f"host sync in the training step: {getattr(func, '__name__', func)} at {where}")
        return func(*args, **kwargs)


class Tiles:
    """Fixed-size random tiles, like a packed folder."""

    tile_shape = (40, 40)
    classes: list = []
    files = None

    def __len__(self) -> int:
        return 8

    def read_array(self, i: int) -> np.ndarray:
        return np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)

    def read(self, i: int):
        from PIL import Image

        return Image.fromarray(self.read_array(i))

    def path(self, i: int) -> str:
        return f"t{i}"


METHOD_SETS = {
    "mae": ["method.name=mae"],
    "sdmae": ["method.name=sdmae", "method.p=0.2"],
    "dino": ["method.name=dino", "method.views.local_crops=2"],
    "mocov3": ["method.name=mocov3"],
}


@pytest.mark.parametrize("crop_on", ["workers", "device"])
@pytest.mark.parametrize("method_name", sorted(METHOD_SETS))
def test_training_step_never_waits_for_the_device(method_name, crop_on):
    cfg = load_config(overrides=METHOD_SETS[method_name] + [
        "model.name=vit_tiny_patch16", "model.img_size=32", "model.decoder_depth=1", "model.decoder_dim=32", "model.decoder_heads=2",
        "model.head_hidden_dim=32", "model.head_bottleneck_dim=16", "model.head_out_dim=64", "train.device=cpu",
        "data.batch_size=4", "data.aug.hed_jitter=0.05", "data.aug.color_jitter=0.2", "optim.clip_grad=1.0",
        f"data.aug.crop_on={crop_on}"])
    torch.manual_seed(0)
    method = build_method(cfg)
    opt = build_optimizer(method, 1e-4, 0.05, [0.9, 0.95], torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stepper = Stepper(method, opt, scaler, "fp32", torch.device("cpu"), clip_grad=cfg.optim.clip_grad)
    ds = PretrainDataset(Tiles(), method.sample_fn(), 0, arrays=crop_on == "device")
    batches = [default_collate([ds[(e, i)] for i in range(4)]) for e in range(3)]

    def step(i: int, batch: dict) -> None:
        method.set_progress(i, 10, 5)
        res = stepper.forward_backward(move_batch(batch, torch.device("cpu"), cfg, crops=crop_on == "device"))
        {k: v.detach().float() for k, v in res.items()}  # what the loop keeps between log steps
        stepper.optimizer_step(1e-4, i, 10, 5)

    step(0, batches[0])  # constants are built on the device once, at the first step
    with NoHostSync():
        for i, b in enumerate(batches[1:], start=1):
            step(i, b)


def test_the_guard_catches_a_sync():
    from sdmae.methods.masking import split_ids

    with pytest.raises(AssertionError, match="host sync in the training step: __int__ at .*masking.py"):
        with NoHostSync():
            split_ids(torch.zeros(2, 4, dtype=torch.bool))  # counts the mask: a read-back (outside steps only)


def test_log_rows_are_read_back_in_groups_on_cuda(monkeypatch):
    """On CUDA, 70 log rows cost 3 read-backs (32 + 32 + the final flush), in step order, values intact."""
    from types import SimpleNamespace

    from sdmae.train import distributed as D
    from sdmae.train.loop import LogRows

    calls, logged = [], []
    real = D.mean_rows
    monkeypatch.setattr(D, "mean_rows", lambda *a: calls.append(len(a[1])) or real(*a))
    run = SimpleNamespace(env=SimpleNamespace(device=torch.device("cuda"), world=1))
    rows = LogRows(run, SimpleNamespace(log=logged.append))
    for s in range(1, 71):
        rows.add({"step": s}, {"loss": torch.tensor(float(s))}, {"images_per_s": 1.0})
    rows.flush()
    assert calls == [32, 32, 6]
    assert [r["step"] for r in logged] == list(range(1, 71)) and logged[9]["loss"] == 10.0
    rows.add({"step": 71}, {"loss": torch.tensor(float("nan"))}, {})
    with pytest.raises(Exception, match="loss is nan at step 71"):
        rows.flush()
