"""The shared first step of the frozen-feature protocols (linear, knn, fewshot): options, labelled splits,
cached features, one class list."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from sdmae.config import Config, EvalConfig, load_config, load_eval_config
from sdmae.encoders import LoadedEncoder
from sdmae.eval.features import encode
from sdmae.eval.labelled import Split, class_space, labels_of, open_split, remap


def split_overrides(overrides: Optional[list[str]]) -> tuple[list[str], list[str]]:
    """`--set` items -> (eval.* items, the others: data.*, model.*, train.*)."""
    items = list(overrides or [])
    ev = [s for s in items if s.split("=", 1)[0].strip().startswith("eval.")]
    return ev, [s for s in items if s not in ev]


def options(overrides: Optional[list[str]]) -> tuple[EvalConfig, Config]:
    ev, rest = split_overrides(overrides)
    return load_eval_config(ev), load_config(overrides=rest)


@dataclass
class FrozenData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: Optional[np.ndarray]
    y_val: Optional[np.ndarray]
    classes: list
    skipped: dict  # role -> unreadable paths


def load_frozen(encoder: LoadedEncoder, train: Split, test: Split, val: Optional[Split], ecfg: EvalConfig,
                cfg: Config) -> FrozenData:
    """Opens and checks every split before any feature is computed, then encodes (or loads from the cache)."""
    roles = [("--train", train), ("--test", test)] + ([("--val", val)] if val is not None else [])
    sources = {role: open_split(split, cfg.data, role) for role, split in roles}
    classes = class_space(sources["--train"].classes, ecfg.exclude_classes)
    out, skipped = {}, {}
    for role, src in sources.items():
        labels = remap(labels_of(src), src.classes, classes, ecfg.exclude_classes, role)
        f = encode(encoder, src, labels, ecfg, cfg.data, f"features {role[2:]} ({encoder.name})")
        keep = f.labels >= 0
        out[role] = (f.features[keep], f.labels[keep])
        skipped[role[2:]] = f.skipped
    xv, yv = out.get("--val", (None, None))
    return FrozenData(*out["--train"], *out["--test"], xv, yv, classes, skipped)
