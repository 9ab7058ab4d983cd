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


def test_tissue_grid_is_computed_once_and_recomputed_when_the_slide_changes(pyramid, tmp_path, monkeypatch):
    import os
    import shutil

    monkeypatch.setenv("SDMAE_CACHE", str(tmp_path / "cache"))
    slide = tmp_path / "s.tif"
    shutil.copy(pyramid, slide)
    first = slides.SlideSource(slide, 256)
    calls = []
    real = slides.tissue_tiles
    monkeypatch.setattr(slides, "tissue_tiles", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = slides.SlideSource(slide, 256)
    assert again.tiles == first.tiles and not calls  # from the cache
    slides.SlideSource(slide, 128)
    assert len(calls) == 1  # other parameters: another entry
    st = slide.stat()
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited slide
    assert slides.SlideSource(slide, 256).tiles == first.tiles and len(calls) == 2
    slides.SlideSource(slide, 256, tissue_cache=False)
    assert len(calls) == 3


def test_unwritable_or_broken_tissue_cache_only_costs_the_computation(pyramid, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SDMAE_CACHE", str(tmp_path / "file"))
    assert len(slides.SlideSource(pyramid, 256)) == 4
    assert "tissue grid not cached" in capsys.readouterr().err
    monkeypatch.setenv("SDMAE_CACHE", str(tmp_path / "c"))
    src = slides.SlideSource(pyramid, 256)
    next((tmp_path / "c" / "tissue").glob("*.json")).write_text("{broken")
    assert slides.SlideSource(pyramid, 256).tiles == src.tiles
    assert "ignoring unreadable tissue cache" in capsys.readouterr().err


def test_block_reads_give_the_pixels_of_direct_reads(sample_slide):
    handle = slides.open_slide(sample_slide)
    for size, mpp in ((224, None), (100, 0.7)):
        blocked = slides.SlideSource(sample_slide, size, mpp=mpp, cache_mb=64)
        direct = slides.SlideSource(sample_slide, size, mpp=mpp, cache_mb=0)
        assert blocked.blocked and not direct.blocked
        for i in range(0, len(blocked), 7):
            want = np.asarray(slides.read_tile(handle, direct.tiles[i], size))
            assert np.array_equal(blocked.read_array(i), want) and np.array_equal(direct.read_array(i), want)
    assert not slides.SlideSource(sample_slide, 224, cache_mb=1).blocked  # tissue larger than the cache


def test_transparent_pixels_become_white_as_pil_paste_makes_them():
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    bg = Image.new("RGB", img.size, (255, 255, 255))
    bg.paste(img, mask=img.split()[3])
    assert np.array_equal(slides.on_white(rgba), np.asarray(bg))


def test_block_cache_stays_within_its_capacity():
    cache = slides.BlockCache()
    cache.capacity = 3 * 100
    for k in range(10):
        cache.get(k, lambda: np.zeros(100, np.uint8))
    assert cache.bytes <= 300 and list(cache.blocks) == [7, 8, 9]
    cache.get(7, lambda: None)  # a hit: no load, most recent now
    assert list(cache.blocks) == [8, 9, 7]
