"""Labelled evaluation data: opening a split, reading its labels, and putting train, val and test on one
class list.

A split is a list of paths, anything `sdmae.data.sources.open_sources` reads (class trees, CSV lists,
PCam HDF5, MHIST, packed files; `PATH@SPLIT` picks a split). Classes are matched by name, so a test set
may lack a class of the training set, but a test class the training set has never seen is an error.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sdmae.config import DataConfig
from sdmae.data.sources import open_sources
from sdmae.errors import UsageError

Split = Sequence[str]  # the paths of one split


def describe(split: Split) -> str:
    return " ".join(str(p) for p in split)


def open_split(split: Split, dcfg: DataConfig, role: str):
    """The source behind `split`, checked to carry labels (`role` names the option in errors)."""
    if not split:
        raise UsageError(f"{role}: no data paths given")
    source = open_sources([str(p) for p in split], dcfg)
    if len(source) == 0:
        raise UsageError(f"{role} {describe(split)}: no tiles")
    if not getattr(source, "classes", None):
        raise UsageError(f"{role} {describe(split)} has no labels: evaluation needs a class tree ROOT/<class>/<image>, "
                         f"a CSV list path,label, PCam HDF5 pairs, a labelled packed file or a named benchmark")
    return source


def labels_of(source) -> np.ndarray:
    return np.fromiter((source.label(i) for i in range(len(source))), dtype=np.int64, count=len(source))


def class_space(train_classes: Sequence[str], exclude: Sequence[str], role: str = "--train") -> list[str]:
    unknown = [c for c in exclude if c not in train_classes]
    if unknown:
        raise UsageError(f"eval.exclude_classes names classes that {role} does not have: {', '.join(unknown)} "
                         f"(classes: {', '.join(train_classes)})")
    classes = [c for c in train_classes if c not in exclude]
    if len(classes) < 2:
        raise UsageError(f"{role} has {len(classes)} class(es) after exclusions; classification needs at least 2")
    return classes


def remap(labels: np.ndarray, source_classes: Sequence[str], classes: Sequence[str], exclude: Sequence[str],
          role: str) -> np.ndarray:
    """Labels of a split in the index space of `classes`; -1 for unlabelled or excluded items."""
    index = {c: i for i, c in enumerate(classes)}
    unseen = [c for c in source_classes if c not in index and c not in exclude]
    if unseen:
        raise UsageError(f"{role} has classes the training set lacks: {', '.join(unseen)} "
                         f"(training classes: {', '.join(classes)})")
    table = np.array([index.get(c, -1) for c in source_classes] + [-1], dtype=np.int64)
    return table[labels]  # label -1 picks the trailing -1

