"""Run logging: OUT/log.jsonl (one JSON object per logged step), a progress bar, optional TensorBoard."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from sdmae.errors import UsageError


def truncate_log(path: Path, step: int) -> None:
    """Keeps the rows up to `step` (a resumed run re-logs the steps after its checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
    path.write_text("".join(k + "\n" for k in keep))


class RunLogger:
    def __init__(self, out: Path, total: int, start: int, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.file = open(out / "log.jsonl", "a") if enabled else None
        self.bar = tqdm(total=total, initial=start, disable=not enabled, dynamic_ncols=True, unit="step",
                        file=sys.stderr, mininterval=1.0)
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UsageError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: name the file (a write's OSError carries no file name)
            raise OSError(e.errno, e.strerror, self.file.name) from e
        shown = {k: row[k] for k in ("loss", "loss_rec", "loss_rec_rel", "loss_sd", "images_per_s") if k in row}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        if self.tb:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self, message: Optional[str] = None) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()
        if message and self.enabled:
            print(message, file=sys.stderr)
