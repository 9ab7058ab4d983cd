"""`sdmae compare`: encoders x datasets x protocols in one command, tabulated like the paper's tables.

A spec (YAML, and/or command-line lists, which are appended):

    encoders:                      # label -> one of ckpt / init, plus its own --set items
      random: {init: random, set: [model.name=vit_tiny_patch8, model.img_size=64]}
      MAE: {ckpt: runs/mae/checkpoints/last.pt}
      SD-MAE: {ckpt: runs/sdmae/checkpoints/last.pt}
    datasets:                      # label -> train/test[/val] paths, or benchmark + root
      PCam: {train: [data/pcam/train], test: [data/pcam/test]}
      NCT-CRC-HE: {benchmark: nct-crc-he, root: /data/nct}
    protocols: [linear, knn]
    seeds: 3
    set: [eval.batch_size=256]     # eval.* / data.* for every cell; model.* / train.* for every --init encoder
    metrics: [balanced_accuracy]   # table metrics (default: each protocol's headline metric)

Each cell is an ordinary evaluation in OUT/runs/<encoder>/<dataset>/<protocol>/metrics.json; a cell whose
metrics.json was made from the same spec is reused, so an interrupted comparison continues where it
stopped. Transfer (pre-train on A, evaluate on B) is an encoder pre-trained on A in a table over B.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdmae.config import read_yaml_mapping
from sdmae.errors import UsageError
from sdmae.eval import registry
from sdmae.eval.benchmarks import BENCHMARKS, resolve
from sdmae.eval.features import weights_digest
from sdmae.eval.labelled import Split
from sdmae.eval.run import EncoderSpec, ckpt_label, digest, evaluate, is_main_process, summary, write_json

DEFAULT_PROTOCOLS = ["linear", "knn"]
REPORTED = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


@dataclass
class DatasetSpec:
    label: str
    train: Optional[list] = None
    test: Optional[list] = None
    val: Optional[list] = None
    benchmark: Optional[str] = None
    root: Optional[str] = None

    def identity(self) -> dict:
        return {"train": self.train, "test": self.test, "val": self.val, "benchmark": self.benchmark,
                "root": str(Path(self.root).resolve()) if self.root else None}

    def open(self) -> tuple[Split, Split, Optional[Split], list]:
        if self.benchmark:
            b = resolve(self.benchmark, self.root)
            return b.train, b.test, b.val, b.sets
        if not self.train or not self.test:
            raise UsageError(f"compare dataset '{self.label}' needs train and test (or benchmark and root)")
        return self.train, self.test, self.val, []


@dataclass
class CompareSpec:
    encoders: list = field(default_factory=list)  # EncoderSpec
    datasets: list = field(default_factory=list)  # DatasetSpec
    protocols: list = field(default_factory=list)
    seeds: int = 1
    sets: list = field(default_factory=list)  # eval.* / data.* for every cell
    metrics: list = field(default_factory=list)


def _is_encoder_key(item: str) -> bool:
    return item.split("=", 1)[0].strip().split(".", 1)[0] in ("model", "train")


def _paths(value, what: str) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise UsageError(f"compare spec: {what} must be a path or a list of paths, got {value!r}")


def encoder_from(label: str, entry, common: list) -> EncoderSpec:
    if isinstance(entry, str):
        entry = {"init": entry} if entry == "random" or entry.startswith("timm:") else {"ckpt": entry}
    if not isinstance(entry, dict) or set(entry) - {"ckpt", "init", "set"}:
        raise UsageError(f"compare spec: encoder '{label}' must be a path, 'random', 'timm:NAME' or a mapping "
                         f"with ckpt or init (and set), got {entry!r}")
    own = list(entry.get("set") or [])
    sets = (common + own) if entry.get("init") else own
    return EncoderSpec(entry.get("ckpt"), entry.get("init"), sets, label)


def dataset_from(label: str, entry) -> DatasetSpec:
    if isinstance(entry, str):
        entry = parse_dataset_item(entry)
    if not isinstance(entry, dict) or set(entry) - {"train", "test", "val", "benchmark", "root"}:
        raise UsageError(f"compare spec: dataset '{label}' must map train/test[/val] or benchmark/root, got {entry!r}")
    return DatasetSpec(label, _paths(entry.get("train"), "train"), _paths(entry.get("test"), "test"),
                       _paths(entry.get("val"), "val"), entry.get("benchmark"), entry.get("root"))


def parse_dataset_item(text: str) -> dict:
    """'BENCHMARK:ROOT' or 'TRAIN,TEST[,VAL]' (command-line form)."""
    name, sep, root = text.partition(":")
    if sep and name in BENCHMARKS:
        return {"benchmark": name, "root": root}
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise UsageError(f"--datasets item '{text}': expected TRAIN,TEST[,VAL] or BENCHMARK:ROOT "
                         f"(benchmarks: {', '.join(BENCHMARKS)})")
    return dict(zip(("train", "test", "val"), parts))


def _labelled(item: str) -> tuple[Optional[str], str]:
    label, sep, rest = item.partition("=")
    if sep and label and "/" not in label:
        return label, rest
    return None, item


def build_spec(spec_file: Optional[str], encoders: list, datasets: list, protocols: list, seeds: Optional[int],
               sets: list, metrics: list) -> CompareSpec:
    data: dict = {}
    if spec_file:
        data = read_yaml_mapping(Path(spec_file), f"--spec {spec_file}")
        unknown = set(data) - {"encoders", "datasets", "protocols", "seeds", "set", "metrics"}
        if unknown:
            raise UsageError(f"--spec {spec_file}: unknown keys {', '.join(sorted(unknown))} "
                             f"(known: encoders, datasets, protocols, seeds, set, metrics)")
    all_sets = list(data.get("set") or []) + list(sets or [])
    common = [s for s in all_sets if _is_encoder_key(s)]
    spec = CompareSpec(sets=[s for s in all_sets if not _is_encoder_key(s)])
    for label, entry in (data.get("encoders") or {}).items():
        spec.encoders.append(encoder_from(str(label), entry, common))
    for item in encoders:
        label, value = _labelled(item)
        is_init = value == "random" or value.startswith("timm:")
        spec.encoders.append(encoder_from(label or (value if is_init else ckpt_label(value)), value, common))
    for label, entry in (data.get("datasets") or {}).items():
        spec.datasets.append(dataset_from(str(label), entry))
    for k, item in enumerate(datasets):
        label, value = _labelled(item)
        spec.datasets.append(dataset_from(label or f"data{k + 1}", value))
    spec.protocols = list(protocols or data.get("protocols") or DEFAULT_PROTOCOLS)
    spec.seeds = int(seeds if seeds is not None else data.get("seeds", 1))
    spec.metrics = list(metrics or data.get("metrics") or [])
    if not spec.encoders or not spec.datasets:
        raise UsageError("sdmae compare needs at least one encoder (--encoders or 'encoders' in --spec) and one "
                         "dataset (--datasets or 'datasets' in --spec)")
    for name in spec.protocols:
        registry.get(name)
    for group, labels in (("encoder", [e.name for e in spec.encoders]), ("dataset", [d.label for d in spec.datasets])):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise UsageError(f"compare: duplicate {group} labels {', '.join(dup)}: name them LABEL=...")
    return spec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def cell_summary(result: dict) -> dict:
    out = {"seeds": len(result["seeds"]), "n_train": result.get("n_train"), "n_test": result.get("n_test")}
    # every scalar score the protocol reported (classification: REPORTED; segmentation: dice, miou, aji, pq...;
    # detection: map, map50...), so `--metric` can table any of them
    scores = [k for k, v in result.items() if isinstance(v, float)]
    for key in dict.fromkeys(REPORTED + (registry.main_metric(result["protocol"]),) + tuple(scores)):
        if key in result:
            out[key] = {"mean": result[key], "std": result.get("std", {}).get(key),
                        "per_seed": [r.get(key) for r in result["runs"]]}
    return out


def compare(spec: CompareSpec, out_dir: str | Path) -> dict:
    """Runs (or reuses) every cell, then writes OUT/compare.json and OUT/compare.md; returns the table."""
    out = Path(out_dir)
    opened = {d.label: d.open() for d in spec.datasets}  # every dataset and encoder is checked before the first
    weights = {enc.name: weights_digest(enc.load().model) for enc in spec.encoders}  # cell runs: a missing file
    contents = {label: [files_digest(split) for split in o[:3]] for label, o in opened.items()}  # fails now
    cells: dict = {}
    for enc in spec.encoders:
        for ds in spec.datasets:
            train, test, val, implied = opened[ds.label]
            for proto in spec.protocols:
                cell_dir = out / "runs" / _slug(enc.name) / _slug(ds.label) / proto
                sets = implied + spec.sets
                key = digest({"protocol": proto, "encoder": enc.identity(), "weights": weights[enc.name],
                              "data": ds.identity(), "contents": contents[ds.label], "sets": sets,
                              "seeds": spec.seeds})
                result = _reuse(cell_dir / "metrics.json", key)
                if result is None:
                    print(f"compare: {enc.name} / {ds.label} / {proto}", file=sys.stderr)
                    result = evaluate(proto, enc, train, test, val, cell_dir, sets, spec.seeds, spec_digest=key)
                if is_main_process():
                    print("compare: " + summary(result), file=sys.stderr)
                cells[enc.name, ds.label, proto] = {**cell_summary(result),
                                                     "metrics_file": str(cell_dir / "metrics.json")}
    table = {
        "metrics": spec.metrics or None,
        "columns": [{"dataset": d.label, "protocol": p} for d in spec.datasets for p in spec.protocols],
        "rows": [{"method": e.name, "source": e.identity(),
                  "cells": [cells[e.name, d.label, p] for d in spec.datasets for p in spec.protocols]}
                 for e in spec.encoders],
        "seeds": spec.seeds,
        "sets": spec.sets,
    }
    if is_main_process():
        write_json(table, out / "compare.json")
        (out / "compare.md").write_text(render_markdown(table))
    return table


def files_digest(split: Optional[Split]) -> Optional[str]:
    """Every file behind a split's paths, by relative name, size and mtime: data changed in place (class
    folders swapped, a CSV relabelled, a tile replaced) change the digest, so the cell is computed again."""
    if not split:
        return None
    h = hashlib.sha256()
    for text in split:
        root = Path(text)
        if not root.exists() and "@" in text:  # PATH@SPLIT
            root = Path(text.rsplit("@", 1)[0])
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{text}:{f.relative_to(root) if f != root else f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _reuse(path: Path, key: str) -> Optional[dict]:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("spec_digest") == key else None


def _fmt(cell: dict, metric: str) -> str:
    v = cell.get(metric)
    if not v or v["mean"] is None:
        return "–"
    text = f"{100 * v['mean']:.1f}"
    return text + (f" ± {100 * v['std']:.1f}" if cell["seeds"] > 1 and v["std"] is not None else "")


def render_markdown(table: dict) -> str:
    """One table per metric: rows = methods, columns = dataset x protocol, values in percent."""
    cols = table["columns"]
    metrics = table["metrics"] or [None]
    blocks = []
    for metric in metrics:
        names = [metric or registry.main_metric(c["protocol"]) for c in cols]
        title = metric or ", ".join(dict.fromkeys(names))
        seeds = table["seeds"]
        spread = f"mean ± sample std (ddof 1) over {seeds} seeds)" if seeds > 1 else "1 seed)"
        lines = [f"**{title.replace('_', ' ')}** (%, " + spread, "",
                 "| Method | " + " | ".join(f"{c['dataset']} {c['protocol']}" for c in cols) + " |",
                 "|---|" + "---:|" * len(cols)]
        for row in table["rows"]:
            lines.append(f"| {row['method']} | " + " | ".join(_fmt(cell, m) for cell, m in zip(row["cells"], names))
                         + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
