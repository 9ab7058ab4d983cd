"""Slides: tissue detection on a generated pyramidal TIFF with a known layout, and `sdmae tile`."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from sdmae.cli import main
from sdmae.config import DataConfig
from sdmae.data import slide as slides
from sdmae.data.sources import open_sources
from sdmae.data.tile import TilingSettings, tile_slides

tifffile = pytest.importorskip("tifffile")
TISSUE = (180, 90, 160)  # saturated pink on near-white glass


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """1536 x 1024 px at 0.5 um/px, three tiled levels; tissue exactly covers the 256-px tiles with top-left
    corners (512, 256), (768, 256), (512, 512), (768, 512)."""
    img = np.full((1024, 1536, 3), 245, np.uint8)
    img[256:768, 512:1024] = TISSUE
    path = tmp_path_factory.mktemp("slide") / "generated.tif"
    with tifffile.TiffWriter(path) as tw:
        for k, level in enumerate((img, img[::2, ::2], img[::4, ::4])):
            tw.write(level, tile=(256, 256), photometric="rgb", subfiletype=int(k > 0), compression="zlib",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


def test_tissue_tiles_follow_the_known_layout(pyramid):
    s = slides.open_slide(pyramid)
    assert s.level_count == 3 and float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert sorted((t.x, t.y) for t in slides.tissue_tiles(s, 256)) == [(512, 256), (512, 512), (768, 256), (768, 512)]
    at_1um = slides.tissue_tiles(s, 128, mpp=1.0)  # 128 px at 1 um/px = 256 level-0 px, read from level 1
    assert len(at_1um) == 4 and {t.level for t in at_1um} == {1} and at_1um[0].read_size == 128
    src = open_sources([str(pyramid)], DataConfig(tile_size=128, mpp=1.0))
    assert len(src) == 4 and src.tile_shape == (128, 128)
    assert np.abs(src.read_array(0).astype(int) - TISSUE).max() <= 2
    assert "#x=512,y=256,level=1" in src.path(0)


def test_tile_command_is_idempotent(pyramid, tmp_path, capsys):
    args = ["tile", str(pyramid), "--out", str(tmp_path / "t"), "--size", "256", "--workers", "2"]
    assert main(args) == 0
    assert "4 tissue tiles (4 written" in capsys.readouterr().out
    folder = tmp_path / "t" / "generated"
    files = sorted(p.name for p in folder.glob("*.png"))
    assert files == sorted(f"generated_x{x}_y{y}.png" for x in (512, 768) for y in (256, 512))
    rows = list(csv.DictReader(open(folder / "coordinates.csv")))
    assert {(r["x"], r["y"], r["level"], r["mpp"]) for r in rows} == {
        (str(x), str(y), "0", "0.5000") for x in (512, 768) for y in (256, 512)}
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(args) == 0
    assert "(0 written, 4 already there)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert main(args[:-4] + ["--size", "128", "--workers", "0"]) == 2  # other settings into the same folder
    assert "other settings" in capsys.readouterr().err


def test_interrupted_tiling_resumes(pyramid, tmp_path):
    s = TilingSettings(256, None, 0, 0.5, "jpg")
    tile_slides([str(pyramid)], tmp_path, s)
    victim = sorted((tmp_path / "generated").glob("*.jpg"))[0]
    victim.unlink()
    summary = tile_slides([str(pyramid)], tmp_path, s)
    assert summary[str(pyramid)] | {"folder": ""} == {"tiles": 4, "written": 1, "existing": 3, "folder": ""}


def test_sample_slide_tiles(sample_slide, tmp_path):
    summary = tile_slides([str(sample_slide)], tmp_path, TilingSettings(224, None, 0, 0.5, "png"), workers=2)
    n = summary[str(sample_slide)]["tiles"]
    assert 30 <= n <= 117 and len(list(tmp_path.rglob("*.png"))) == n
