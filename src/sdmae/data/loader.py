"""The pre-training loader: global batches drawn the same way whatever the number of processes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from sdmae.config import AugConfig
from sdmae.data.base import UnreadableTile
from sdmae.data.transforms import DeviceTile, sample_generator
from sdmae.errors import SdmaeError, UsageError


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
        self.buffer_slots = 0  # set by build_loader: tile buffers each worker cycles through (0: a new one each)
        self._buffers: list = []
        self._served = 0

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

    def __getitems__(self, keys: list) -> "list | Batch":
        """A whole batch in one call (the DataLoader's batched fetch). On the device-crop path the tiles are
        copied once, straight from the source into one (B, H, W, 3) buffer (shared memory in a worker, so
        the hand-over to the training process copies nothing), and "image" is that buffer viewed as
        (B, 3, H, W): the same values `__getitem__` + collate give, without a per-sample transpose and a
        second copy. Elsewhere: the per-sample items, collated as usual."""
        if not self.arrays:
            return [self[k] for k in keys]
        buf = self._tile_buffer(len(keys))
        tiles = buf.numpy()
        for k, (_, index) in enumerate(keys):  # all copies first: the Python below then runs in warm caches
            read = lambda j: self.source.read_into(j, tiles[k])  # noqa: E731 (one tile per call)
            read_with_fallback(read, len(self.source), index, self.reported, self.skipped_log)
        items = []
        for k, (epoch, index) in enumerate(keys):
            item = self.sample_fn(tiles[k].view(DeviceTile), sample_generator(self.seed, epoch, index))
            item["index"] = index
            items.append(item)
        # the field that is the tile itself: "image" (3, H, W) for masked methods, "tile" (H, W, 3) for views
        for key, whole in (("image", buf.permute(0, 3, 1, 2)), ("tile", buf)):
            if all(it.get(key) is not None and it[key].data_ptr() == whole[k].data_ptr() for k, it in enumerate(items)):
                rest = default_collate([{k: v for k, v in it.items() if k != key} for it in items])
                return Batch(rest, **{key: whole})
        return Batch(default_collate(items))

    def _tile_buffer(self, n: int) -> torch.Tensor:
        """A uint8 (n, H, W, 3) buffer for one batch. In a worker: shared memory, each worker cycling through
        `buffer_slots` buffers, because a fresh 38 MB segment per batch costs more in page faults than the
        batch's copy. Safe because the DataLoader keeps at most prefetch_factor batches per worker in flight:
        with prefetch_factor + 2 slots a buffer is rewritten only after the consumer has been handed
        2 x num_workers later batches (the training loop is done with a batch when it asks for the next)."""
        h, w = self.source.tile_shape
        if get_worker_info() is None or not self.buffer_slots:
            return tile_buffer(n, h, w)
        k = self._served % self.buffer_slots
        self._served += 1
        if k >= len(self._buffers):
            self._buffers.append(tile_buffer(n, h, w))
        buf = self._buffers[k]
        return buf if buf.shape[0] == n else tile_buffer(n, h, w)


class Batch(dict):
    """A batch collated inside `PretrainDataset.__getitems__`; `collate` passes it through."""


def collate(data):
    return data if isinstance(data, Batch) else default_collate(data)


def tile_buffer(n: int, h: int, w: int) -> torch.Tensor:
    """An uninitialised uint8 (n, h, w, 3) tensor, in shared memory inside a DataLoader worker (what
    default_collate allocates there, so the batch crosses to the training process without a copy)."""
    numel = n * h * w * 3
    if get_worker_info() is None:
        return torch.empty((n, h, w, 3), dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(numel)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (n, h, w, 3))


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
            procs = f" x {world} processes" if world > 1 else ""
            raise UsageError(f"the data has {n} samples, too few to fill one global batch of {per_rank * world} "
                             f"(data.batch_size {per_rank}{procs}): lower data.batch_size or add data")
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


PREFETCH = 4  # batches in flight per worker


def build_loader(dataset: PretrainDataset, sampler: GlobalBatchSampler, num_workers: int, pin: bool) -> DataLoader:
    dataset.buffer_slots = PREFETCH + 2 if num_workers else 0
    # Its own generator: creating an iterator must not draw from the global RNG, whose state is checkpointed.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin, collate_fn=collate,
                      persistent_workers=False, prefetch_factor=PREFETCH if num_workers else None,
                      generator=torch.Generator().manual_seed(dataset.seed))
