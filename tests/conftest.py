"""Shared fixtures: where the licensed test data lives (skip with a reason when it is absent), benchmark scripts."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# One thread per process: the models here are tiny, several tests start 2 processes on a 2-core machine, and
# OpenMP threads that outnumber the cores make every step many times slower. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SDMAE_TEST_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Caches (tissue grids, features) in a folder of this session, never the user's (subprocesses too)."""
    old = os.environ.get("SDMAE_CACHE")
    os.environ["SDMAE_CACHE"] = str(tmp_path_factory.mktemp("sdmae-cache"))
    yield
    if old is None:
        os.environ.pop("SDMAE_CACHE", None)
    else:
        os.environ["SDMAE_CACHE"] = old


@pytest.fixture
def one_thread():
    """One intra-op thread even where OMP_NUM_THREADS asks for more: for modules of tiny models, which run
    fastest that way (much faster on a loaded machine). Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _need(sub: str) -> Path:
    p = DATA / sub
    if not p.exists():
        pytest.skip(f"test data {p} is absent (set SDMAE_TEST_DATA to the shared data folder)")
    return p


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _need("")


@pytest.fixture(scope="session")
def pcam_train() -> Path:
    return _need("pcam_ai4all_jpeg/train")


@pytest.fixture(scope="session")
def pcam_test() -> Path:
    return _need("pcam_ai4all_jpeg/test")


@pytest.fixture(scope="session")
def kather() -> Path:
    return _need("kather2016_crc_texture_subset")


@pytest.fixture(scope="session")
def monuseg() -> Path:
    return _need("monuseg_subset")


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    from sdmae.data.sources import SAMPLE_SLIDE

    return SAMPLE_SLIDE


@pytest.fixture
def tiny_overrides() -> list[str]:
    """--set overrides for a model small enough for CPU tests."""
    return ["model.name=vit_tiny_patch16", "model.img_size=32", "model.decoder_depth=1",
            "model.head_hidden_dim=64", "model.head_bottleneck_dim=32", "model.head_out_dim=128",
            "data.batch_size=4", "data.num_workers=0", "train.device=cpu", "train.seed=0"]


@pytest.fixture(scope="session")
def benchmark():
    """benchmark("feature_spectrum") -> benchmarks/feature_spectrum.py loaded as a module (scripts, not a package)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:  # as when a script runs: its siblings import each other
        sys.path.insert(0, folder)

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
