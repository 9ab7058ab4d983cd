"""Evaluation protocols by name: what `sdmae eval PROTOCOL` and `sdmae compare` dispatch through.

A protocol is a function

    run(encoder, train, test, val, out_dir, overrides, seed) -> dict

- `encoder`: a `sdmae.encoders.LoadedEncoder`. It is shared between seeds and protocols: never modify it
  in place (deep-copy `encoder.model` to train it).
- `train`, `test`, `val`: lists of data paths as `sdmae.data.sources.open_sources` takes them (named
  benchmarks are resolved to such paths first, e.g. `ROOT@test`); `val` may be None.
- `out_dir`: a `pathlib.Path` the protocol may write into (checkpoints, pictures); the caller writes
  `metrics.json` there.
- `overrides`: the `--set KEY=VALUE` items (`eval.*`, `data.*`, ...); `sdmae.eval.frozen.options` parses them.
- `seed`: the seed of this repetition (`--seeds N` runs `eval.seed` ... `eval.seed + N - 1`).

It returns the metrics of that seed as a JSON-able dict. Classification protocols return the keys of
`sdmae.eval.metrics.classification_metrics` plus `n_train`; others return their own numbers. The caller
(`sdmae.eval.run.evaluate`) averages every number over seeds, keeps each seed's dict and writes metrics.json.

To add a protocol, add one entry: `"segment": "sdmae.dense.segment:run"` (a "module:function" string is
imported on first use, so the command line starts fast; a callable works too), and, if its headline number
is not balanced accuracy, `MAIN_METRIC["segment"] = "dice"` for the tables of `sdmae compare`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Union

from sdmae.errors import UsageError

PROTOCOLS: dict[str, Union[str, Callable]] = {
    "linear": "sdmae.eval.linear:run",
    "knn": "sdmae.eval.knn:run",
    "fewshot": "sdmae.eval.fewshot:run",
    "finetune": "sdmae.eval.finetune:run",
    "segment": "sdmae.dense.protocols:segment",
    "detect": "sdmae.dense.protocols:detect",
}

MAIN_METRIC: dict[str, str] = {"segment": "dice", "detect": "map50"}  # default: balanced_accuracy


def get(name: str) -> Callable:
    if name not in PROTOCOLS:
        raise UsageError(f"unknown evaluation protocol '{name}' (known: {', '.join(PROTOCOLS)})")
    fn = PROTOCOLS[name]
    if isinstance(fn, str):
        module, attr = fn.split(":")
        fn = getattr(importlib.import_module(module), attr)
    return fn


def main_metric(name: str) -> str:
    return MAIN_METRIC.get(name, "balanced_accuracy")
