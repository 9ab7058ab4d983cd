"""The pre-training loader: global batches drawn the same way whatever the number of processes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sdmae.config import AugConfig
from sdmae.data.base import UnreadableTile
from sdmae.data.transforms import DeviceTile, sample_generator
from sdmae.errors import SdmaeError


def crop_on_device(source, aug: AugConfig, device: torch.device) -> bool:
    """Whether workers hand fixed-size uint8 tiles to the device for cropping (`data.aug.crop_on`)."""
    if source.tile_shape is None or aug.crop_on == "workers":
        return False
    return aug.crop_on == "device" or device.type == "cuda"


def read_with_fallback(read, n: int, index: int, reported: set, log: Optional[Path] = None):
    """(j, read(j)) for the first readable j of index, index + 1, ... (mod n); each unreadable path is warned
    about once per process and, with `log` (a run's skipped_files.txt), appended to it by whichever process
    met it (workers of every rank; one short O_APPEND write per line). A broken file never stops a long run;
    the replacement is deterministic."""
    for k in range(n):
        j = (index + k) % n
        try:
            return j, read(j)
        except UnreadableTile as e:
            if e.path not in reported:
                reported.add(e.path)
                print(f"warning: skipping unreadable tile {e.path} ({e.reason})", file=sys.stderr)
                if log is not None:
                    try:
                        with open(log, "a") as f:
                            f.write(f"{e.path}\t{e.reason}\n")
                    except OSError as err:  # the warning above still names it
                        print(f"warning: cannot list it in {log}: {err}", file=sys.stderr)
    raise SdmaeError("no readable tile in the data")


class PretrainDataset(Dataset):
    """Items are addressed by (epoch, index); all of a sample's randomness comes from that pair and the seed.

    With `arrays`, fixed-size tiles are cropped on the device (`data.transforms.DeviceTile`). An
    unreadable item is replaced by the next readable one (deterministically) and reported once, so a broken
    file never stops a long run.
    """

    def __init__(self, source, sample_fn: Callable, seed: int, arrays: bool = False,
                 skipped_log: Optional[Path] = None):
        self.source, self.sample_fn, self.seed, self.arrays = source, sample_fn, seed, arrays
        self.reported: set[str] = set()
        self.skipped_log = skipped_log  # where tiles that break during training are listed

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, j: int):
        if self.source.tile_shape is None:
            return self.source.read(j)
        img = self.source.read_array(j)  # fixed-size tiles travel as arrays, never through PIL
        return img.view(DeviceTile) if self.arrays else img

    def __getitem__(self, key) -> dict:
        epoch, index = key
        _, img = read_with_fallback(self._read, len(self.source), index, self.reported, self.skipped_log)
        item = self.sample_fn(img, sample_generator(self.seed, epoch, index))
        item["index"] = index
        return item


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    return rng.permutation(n)


class GlobalBatchSampler:
    """Yields this rank's share of each global batch as [(epoch, index), ...], from micro-batch `start`.

    A global batch is `per_rank * world` consecutive items of the epoch's permutation; rank r takes the
    r-th slice. So k processes with batch b see exactly what one process with batch k*b sees.
    """

    def __init__(self, n: int, per_rank: int, world: int, rank: int, seed: int, start: int, total: int):
        self.n, self.b, self.world, self.rank, self.seed = n, per_rank, world, rank, seed
        self.per_epoch = n // (per_rank * world)
        if self.per_epoch == 0:
            raise ValueError(f"{n} samples cannot fill one global batch of {per_rank * world}")
        self.start, self.total = start, total

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        gb = self.b * self.world
        perm, perm_epoch = None, -1
        for micro in range(self.start, self.total):
            epoch, k = divmod(micro, self.per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = epoch_permutation(self.n, self.seed, epoch), epoch
            lo = k * gb + self.rank * self.b
            yield [(epoch, int(i)) for i in perm[lo: lo + self.b]]


def build_loader(dataset: PretrainDataset, sampler: GlobalBatchSampler, num_workers: int, pin: bool) -> DataLoader:
    # Its own generator: creating an iterator must not draw from the global RNG, whose state is checkpointed.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None,
                      generator=torch.Generator().manual_seed(dataset.seed))
