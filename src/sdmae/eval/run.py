"""One evaluation: a protocol, an encoder, a dataset, N seeds -> OUT/metrics.json.

metrics.json (DESIGN section 6): `protocol`, `encoder`, the metrics averaged over seeds (`accuracy`,
`balanced_accuracy`, `macro_f1`, `auroc`, `per_class_recall`, `confusion_matrix` with rows = true class,
`n_train`, `n_test`, `classes`, ...), `std` (standard deviation over seeds of every number), `seeds`,
`runs` (each seed's own metrics, confusion matrix included) and `config` (everything that produced it).
With one seed the top level is that seed's result and `std` is all zeros.

Encoders with random weights draw a new initialisation per seed (seed = train.seed + repetition), so their
spread includes the luck of the draw; a checkpoint is loaded once.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdmae import __version__
from sdmae.atomic import atomic_path
from sdmae.config import to_dict
from sdmae.encoders import LoadedEncoder, load_encoder, random_encoder
from sdmae.errors import UsageError
from sdmae.eval import registry
from sdmae.eval.frozen import options, split_overrides
from sdmae.eval.labelled import Split, describe
from sdmae.eval.metrics import aggregate


def ckpt_label(path: str) -> str:
    """A short name for tables: the run folder of RUN/checkpoints/last.pt, else the file or folder name."""
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "checkpoints" and p.parent.parent.name else p.name


@dataclass
class EncoderSpec:
    """What `--ckpt` / `--init` (+ `--set model.*`) name; loads lazily, once per seed for random weights."""
    ckpt: Optional[str] = None
    init: Optional[str] = None
    overrides: list = field(default_factory=list)  # model.*, train.seed: the architecture of --init encoders
    label: Optional[str] = None

    def __post_init__(self):
        if bool(self.ckpt) == bool(self.init):
            raise UsageError("give exactly one of --ckpt FILE_OR_EXPORT_DIR or --init random|timm:NAME")
        if self.ckpt and not Path(self.ckpt).exists():
            raise UsageError(f"--ckpt: no such file or folder: {self.ckpt}")
        if self.ckpt and any(s.split("=", 1)[0].strip().startswith("model.") for s in self.overrides):
            raise UsageError("--set model.* describes --init encoders; a checkpoint or export carries its own "
                             "architecture")

    @property
    def name(self) -> str:
        return self.label or (ckpt_label(self.ckpt) if self.ckpt else self.init)

    def identity(self) -> dict:
        """What the weights are, cheaply (file size and time instead of contents), for compare's reuse check."""
        if self.ckpt:
            p = Path(self.ckpt).resolve()
            files = [p] if p.is_file() else sorted(p.iterdir())
            return {"ckpt": str(p), "stat": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
        return {"init": self.init, "overrides": self.overrides}

    def load(self, repetition: int = 0) -> LoadedEncoder:
        enc = load_encoder(self.ckpt, self.init, self.overrides)
        if self.init == "random" and repetition:
            enc = random_encoder(enc.cfg, enc.cfg.train.seed + repetition)
        if self.label:
            enc.name = self.label
        return enc


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_json(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def evaluate(protocol: str, encoder: EncoderSpec, train: Split, test: Split, val: Optional[Split],
             out_dir: str | Path, overrides: Optional[list] = None, seeds: int = 1,
             spec_digest: Optional[str] = None) -> dict:
    """Runs `protocol` for `seeds` seeds and writes OUT/metrics.json (main process only); returns its content."""
    fn = registry.get(protocol)
    overrides = list(overrides or [])
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    ecfg, cfg = options(overrides)  # bad keys fail here, before any work
    out = Path(out_dir)
    runs, enc = [], None
    for rep in range(seeds):
        seed = ecfg.seed + rep
        if enc is None or encoder.init == "random":
            enc = encoder.load(rep)
        res = fn(enc, train, test, val, out if seeds == 1 else out / f"seed_{seed}", overrides, seed)
        runs.append({"seed": seed, **res})
    ev, _ = split_overrides(overrides)
    result = {
        "protocol": protocol,
        "encoder": {"name": encoder.name, "source": enc.source, "architecture": to_dict(enc.cfg.model)},
        **aggregate(runs),
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        "config": {"eval": to_dict(ecfg), "data": to_dict(cfg.data), "train": describe(train),
                   "test": describe(test), "val": describe(val) if val is not None else None,
                   "overrides": overrides, "eval_overrides": ev, "sdmae_version": __version__},
        "spec_digest": spec_digest,
    }
    if is_main_process():
        write_json(result, out / "metrics.json")
    return result


def summary(result: dict) -> str:
    """One line: the headline metrics with their spread over seeds."""
    keys = [registry.main_metric(result["protocol"]), "accuracy", "auroc"]
    parts = []
    for k in dict.fromkeys(keys):
        v = result.get(k)
        if isinstance(v, (int, float)):
            s = result.get("std", {}).get(k, 0.0)
            parts.append(f"{k} {v:.4f}" + (f" ± {s:.4f}" if len(result["seeds"]) > 1 else ""))
    return f"{result['protocol']} ({result['encoder']['name']}, {len(result['seeds'])} seed(s)): " + ", ".join(parts)


def print_summary(result: dict, out: str | Path) -> None:
    if is_main_process():
        print(summary(result) + f"  -> {Path(out) / 'metrics.json'}")
        sys.stdout.flush()
