"""Checkpoints: atomic writes, and reads that never unpickle code (weights_only=True)."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from sdmae.atomic import atomic_path
from sdmae.errors import SdmaeError


class UnsafeCheckpointError(SdmaeError):
    pass


def save_atomic(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, rename over `path`, fsync the folder: a crash at any
    point leaves either the old file or the new one, never a torn one."""
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint as plain tensors and containers only. A file carrying pickled objects (which could
    run code) is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise SdmaeError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's note on a plain pickle's protocol says nothing to a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds pickled Python objects, not only tensors, and loading it could "
            f"run arbitrary code (weights_only=True rejected it: {_rejection_reason(e)})") from e
    except Exception as e:
        raise SdmaeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise SdmaeError(f"{path} is not an sdmae checkpoint (no 'model' entry)")
    return ckpt


def _rejection_reason(e: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what was rejected, without its advice to load with
    weights_only=False (which would run the file's code)."""
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln for ln in map(str.strip, str(e).splitlines()) if ln and not ln.startswith(skip)]
    return lines[0].removeprefix("WeightsUnpickler error:").strip() if lines else type(e).__name__


def rng_state() -> dict:
    """The CPU generator and, when CUDA is in use, the current device's (each process trains on one GPU: the
    other visible GPUs' generators are unused, and a resume may see fewer or more of them)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restores `rng_state()` on any number of visible GPUs (older checkpoints hold one state per visible
    GPU: the current device's, or the first, is used)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):
        if not cuda:
            return
        cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
    torch.cuda.set_rng_state(cuda)


def load_weights(module: torch.nn.Module, state: dict, source, what: str) -> None:
    """`module.load_state_dict(state)` with an error a user can act on: the file, then the first key whose
    shape differs (a config edited after training, e.g. `model.name`) or the keys missing and unexpected."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise SdmaeError(f"{source}: weights do not fit {what}: '{key}' is {tuple(value.shape)} in the file, "
                             f"{tuple(own[key].shape)} in the model (do the config and weights saved together "
                             f"still match?)")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SdmaeError(f"{source}: weights do not fit {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
