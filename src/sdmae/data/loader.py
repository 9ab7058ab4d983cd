"""The pre-training loader: global batches drawn the same way whatever the number of processes."""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sdmae.data.sources import UnreadableTile
from sdmae.data.transforms import sample_generator


class PretrainDataset(Dataset):
    """Items are addressed by (epoch, index); all of a sample's randomness comes from that pair and the seed.

    An unreadable item is replaced by the next readable one (deterministically) and reported once, so a
    broken file never stops a long run.
    """

    def __init__(self, source, sample_fn: Callable, seed: int):
        self.source, self.sample_fn, self.seed = source, sample_fn, seed
        self.reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key) -> dict:
        epoch, index = key
        n = len(self.source)
        for k in range(n):
            j = (index + k) % n
            try:
                img = self.source.read(j)
                break
            except UnreadableTile as e:
                if e.path not in self.reported:
                    self.reported.add(e.path)
                    print(f"warning: skipping unreadable tile {e.path} ({e.reason})", file=sys.stderr)
        else:
            raise RuntimeError("no readable tile in the dataset")
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
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)
