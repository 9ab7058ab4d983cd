"""`sdmae embed`: mean-pooled encoder features of tiles or slide tiles, in input order, to .npz or .h5.

Tiles are centre-cropped to a square and resized to the model's input size in one bicubic resampling
step (the interpolation recorded in the export's `pretrained_cfg`), then normalised with the run's mean
and std, so a timm model built from `sdmae export` and this command see the same pixels. Features are
the exported timm model's: the encoder's final norm on every token, then the mean.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sdmae.atomic import atomic_path
from sdmae.config import Config
from sdmae.data.batch import finish_images
from sdmae.data.sources import UnreadableTile
from sdmae.data.transforms import to_uint8_chw
from sdmae.errors import SdmaeError, UsageError
from sdmae.train.distributed import pick_device
from sdmae.train.step import autocast

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
OUT_SUFFIXES = (".npz", ".h5", ".hdf5")
_COORDS = re.compile(r"#x=(-?\d+),y=(-?\d+)")


# Resizing tiles to the model's size: bicubic, timm's default and `sdmae eval`'s (eval.interpolation).
INTERPOLATION = "bicubic"


def fit_tile(img: Image.Image, size: int, interp: str) -> Image.Image:
    """Centre square crop, then resize to `size` (one resampling step; a square tile is only resized)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.resize((size, size), RESAMPLE[interp], box=(left, top, left + s, top + s))


def tile_coordinates(path: str) -> Optional[tuple[int, int]]:
    """Level-0 (x, y) of a slide tile, from the `slide#x=..,y=..` path slide sources give their tiles."""
    m = _COORDS.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None


class TileDataset(Dataset):
    """A source's tiles in order as uint8 CHW tensors at the model's size; unreadable tiles come back as
    an error entry so the caller can count and list them."""

    def __init__(self, source, size: int, interp: str, indices: Optional[Sequence[int]] = None):
        self.source, self.size, self.interp = source, size, interp
        self.indices = list(range(len(source))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = self.indices[k]
        try:
            img = self.source.read(i)
        except UnreadableTile as e:
            return {"index": i, "error": e.reason}
        return {"index": i, "image": to_uint8_chw(fit_tile(img, self.size, self.interp))}


def collate(items: list[dict]) -> dict:
    good = [it for it in items if "image" in it]
    return {"index": [it["index"] for it in good],
            "image": torch.stack([it["image"] for it in good]) if good else None,
            "bad": [(it["index"], it["error"]) for it in items if "error" in it]}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on GPUs, fp32 on CPUs."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"--precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@torch.no_grad()
def pooled_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, 3, H, W) -> the encoder's pooled features (B, D), as timm's model(x) with
    num_classes=0 gives them."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def iter_features(model: torch.nn.Module, dataset: TileDataset, cfg: Config, batch_size: int = 64,
                  num_workers: int = 0, device: str = "auto", precision: str = "auto",
                  progress: bool = True) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yields (source indices, float32 features) batch by batch, in input order. Unreadable tiles are
    skipped and listed on stderr (an error with data.strict=true)."""
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate, pin_memory=dev.type == "cuda")
    skipped: list[tuple[str, str]] = []
    with tqdm(total=len(dataset), unit="tile", disable=not progress, file=sys.stderr, dynamic_ncols=True,
              mininterval=1.0) as bar:
        for batch in loader:
            for i, reason in batch["bad"]:
                if cfg.data.strict:
                    raise SdmaeError(f"unreadable tile {dataset.source.path(i)}: {reason} (data.strict=true)")
                skipped.append((dataset.source.path(i), reason))
            if batch["image"] is not None:
                x = finish_images(batch["image"].to(dev, non_blocking=True), cfg.data.aug)
                with autocast(precision, dev):
                    f = pooled_features(model, x)
                yield batch["index"], f.float().cpu().numpy()
            bar.update(len(batch["index"]) + len(batch["bad"]))
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable tile(s):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)


class NpzWriter:
    """Collects everything in memory and writes one .npz (fine up to a few million small vectors)."""

    def __init__(self, path: Path):
        self.path, self.feats, self.index = path, [], []

    def add(self, index: list[int], feats: np.ndarray) -> None:
        self.index += index
        self.feats.append(feats)

    def discard(self) -> None:
        self.feats = []

    def close(self, columns: dict) -> None:
        feats = np.concatenate(self.feats) if self.feats else np.zeros((0, 0), np.float32)
        with atomic_path(self.path, suffix=".npz") as tmp:
            np.savez(tmp, features=feats, **columns)


class H5Writer:
    """Appends each batch to a resizable HDF5 dataset, so outputs larger than memory work."""

    def __init__(self, path: Path):
        import h5py

        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.file = h5py.File(self.tmp, "w")
        self.ds = None

    def add(self, index: list[int], feats: np.ndarray) -> None:
        if self.ds is None:
            self.ds = self.file.create_dataset("features", shape=(0, feats.shape[1]), maxshape=(None, feats.shape[1]),
                                               dtype="float32", chunks=(min(1024, max(1, len(feats))), feats.shape[1]))
        n = self.ds.shape[0]
        self.ds.resize(n + len(feats), axis=0)
        self.ds[n:] = feats

    def close(self, columns: dict) -> None:
        import h5py

        for k, v in columns.items():
            if v.dtype.kind == "U":
                self.file.create_dataset(k, data=v.astype(object), dtype=h5py.string_dtype())
            else:
                self.file.create_dataset(k, data=v)
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def side_columns(source, indices: list[int]) -> dict:
    """`paths` always; `coordinates` (level-0 x, y; -1 for non-slide tiles) when any tile has them;
    `labels` and `classes` when the data is labelled."""
    paths = [source.path(i) for i in indices]
    cols = {"paths": np.array(paths, dtype=str)}
    coords = [tile_coordinates(p) for p in paths]
    if any(c is not None for c in coords):
        cols["coordinates"] = np.array([c if c is not None else (-1, -1) for c in coords], np.int64).reshape(-1, 2)
    if getattr(source, "classes", None):
        cols["labels"] = np.array([source.label(i) for i in indices], np.int64)
        cols["classes"] = np.array(source.classes, dtype=str)
    return cols


def main_embed(ckpt: str, data: Sequence[str], out: str, overrides: Sequence[str] = (), batch_size: int = 64,
               num_workers: int = 2, device: str = "auto", precision: str = "auto") -> int:
    from sdmae.config import load_config, to_dict
    from sdmae.data.sources import open_sources
    from sdmae.encoders import load_encoder

    out_path = Path(out)
    if out_path.suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(f"--out {out}: use a .npz or .h5 file name")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    enc = load_encoder(ckpt=ckpt)
    cfg = load_config(base=to_dict(enc.cfg), overrides=list(overrides))
    source = open_sources(data, cfg.data)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = NpzWriter(out_path) if out_path.suffix.lower() == ".npz" else H5Writer(out_path)
    dataset = TileDataset(source, cfg.model.img_size, INTERPOLATION)
    done: list[int] = []
    try:
        for index, feats in iter_features(enc.model, dataset, cfg, batch_size, num_workers, device, precision):
            writer.add(index, feats)
            done += index
        if not done:
            raise SdmaeError(f"no readable tiles in {', '.join(data)}")
    except BaseException:
        writer.discard()
        raise
    writer.close(side_columns(source, done))
    print(f"wrote {len(done)} x {enc.model.num_features} features to {out_path}", file=sys.stderr)
    return 0
