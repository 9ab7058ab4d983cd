"""Named public benchmarks, resolved from the folder they were downloaded to (`--benchmark NAME --root DIR`).

Each resolves to ordinary `--train/--val/--test` paths that the data layer opens (`PATH@SPLIT` picks a split):

- `nct-crc-he`: train NCT-CRC-HE-100K, test CRC-VAL-HE-7K (Kather et al. 2019), 9 tissue classes, as
  `ROOT/NCT-CRC-HE-100K/<class>/*.tif` and `ROOT/CRC-VAL-HE-7K/<class>/*.tif` (the Zenodo archives).
- `nct-crc-he-8`: the same without BACK (background), the 8 classes of the official SD-MAE code.
- `pcam`: PatchCamelyon's official train / valid / test HDF5 pairs in ROOT
  (`camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`, decompressed).
- `mhist`: `ROOT/annotations.csv` + `ROOT/images/`, split by its Partition column (classes HP, SSA; SSA is
  the positive class of the binary AUROC).
A missing file is a usage error naming it, raised before any feature is computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdmae.errors import UsageError

NCT_HINT = "NCT-CRC-HE-100K.zip and CRC-VAL-HE-7K.zip from zenodo.org/record/1214456, unzipped into --root"


@dataclass
class Benchmark:
    train: list
    test: list
    val: Optional[list] = None
    sets: list = field(default_factory=list)  # --set items the benchmark implies


def _need(path: Path, hint: str) -> str:
    if not path.exists():
        raise UsageError(f"benchmark file or folder not found: {path} (expected {hint})")
    return str(path)


def nct(root: Path, eight: bool = False) -> Benchmark:
    train = _need(root / "NCT-CRC-HE-100K", NCT_HINT)
    test = _need(root / "CRC-VAL-HE-7K", NCT_HINT)
    return Benchmark([train], [test], None, ["eval.exclude_classes=[BACK]"] if eight else [])


def pcam(root: Path) -> Benchmark:
    for split in ("train", "valid", "test"):
        for xy in ("x", "y"):
            p = root / f"camelyonpatch_level_2_split_{split}_{xy}.h5"
            if not p.exists() and p.with_name(p.name + ".gz").exists():
                raise UsageError(f"{p}.gz is compressed: gunzip it first (HDF5 needs random access)")
            _need(p, "the PCam files from github.com/basveeling/pcam, gunzipped, in --root")
    return Benchmark([f"{root}@train"], [f"{root}@test"], [f"{root}@valid"])


def mhist(root: Path) -> Benchmark:
    hint = "MHIST's annotations.csv and images/ (request form at bmirds.github.io/MHIST)"
    _need(root / "annotations.csv", hint)
    _need(root / "images", hint)
    return Benchmark([f"{root}@train"], [f"{root}@test"])


BENCHMARKS = {
    "nct-crc-he": nct,
    "nct-crc-he-8": lambda root: nct(root, eight=True),
    "pcam": pcam,
    "mhist": mhist,
}


def resolve(name: str, root: Optional[str]) -> Benchmark:
    if name not in BENCHMARKS:
        raise UsageError(f"unknown --benchmark '{name}' (known: {', '.join(BENCHMARKS)})")
    if not root:
        raise UsageError(f"--benchmark {name} needs --root DIR (where the dataset was downloaded)")
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsageError(f"--root: no such folder: {root}")
    return BENCHMARKS[name](root_path)
