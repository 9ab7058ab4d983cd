"""Bad input: unreadable files are skipped, warned about and listed, or (data.strict) stop the run before
training; missing or empty data is a usage error naming the path."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from sdmae.cli import main
from sdmae.config import DataConfig
from sdmae.data.check import SKIPPED_FILE, drop_unreadable
from sdmae.data.sources import open_sources
from sdmae.errors import SdmaeError

BROKEN = ("empty.png", "truncated.jpg", "fake.tif")


@pytest.fixture
def tiles(tmp_path, pcam_train):
    d = tmp_path / "tiles"
    (d / "sub").mkdir(parents=True)
    for p in sorted((pcam_train / "0").iterdir())[:12]:
        shutil.copy(p, d / p.name)
    (d / "empty.png").write_bytes(b"")
    (d / "sub" / "truncated.jpg").write_bytes(sorted((pcam_train / "1").iterdir())[0].read_bytes()[:700])
    (d / "sub" / "fake.tif").write_text("not an image")
    return d


def test_lenient_scan_skips_and_lists(tiles, tmp_path, capsys):
    src = open_sources([str(tiles)], DataConfig())
    kept = drop_unreadable(src, DataConfig(num_workers=2), tmp_path / "out")
    assert len(src) == 15 and len(kept) == 12
    listed = (tmp_path / "out" / SKIPPED_FILE).read_text()
    err = capsys.readouterr().err
    assert all(b in listed and b in err for b in BROKEN) and "3 unreadable file(s) skipped" in err
    assert not any(b in kept.path(i) for i in range(12) for b in BROKEN)


def test_strict_scan_names_every_file(tiles, tmp_path):
    with pytest.raises(SdmaeError) as e:
        drop_unreadable(open_sources([str(tiles)], DataConfig()), DataConfig(strict=True, num_workers=0),
                        tmp_path / "out")
    assert all(b in str(e.value) for b in BROKEN) and not (tmp_path / "out").exists()


def test_no_prescan_leaves_the_source(tiles, tmp_path):
    src = open_sources([str(tiles)], DataConfig())
    assert drop_unreadable(src, DataConfig(prescan=False), tmp_path / "out") is src


def test_strict_pretrain_stops_before_training(tiles, tmp_path, tiny_overrides, capsys):
    rc = main(["pretrain", "--data", str(tiles), "--out", str(tmp_path / "run"), "--set", *tiny_overrides,
               "train.max_steps=1", "data.strict=true"])
    err = capsys.readouterr().err
    assert rc == 1 and "truncated.jpg" in err and "data.strict=true" in err
    assert not list(tmp_path.rglob("*.pt"))


def test_lenient_pretrain_trains_and_names_the_files(tiles, tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiles), "--out", str(out), "--set", *tiny_overrides,
                 "train.max_steps=1", "train.reconstructions=false"]) == 0
    assert all(b in (out / SKIPPED_FILE).read_text() for b in BROKEN)
    assert (out / "checkpoints" / "last.pt").exists()


def test_missing_and_empty_data_are_usage_errors(tmp_path, tiny_overrides, capsys):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nonexistent", tmp_path / "empty"):
        assert main(["pretrain", "--data", str(path), "--out", str(tmp_path / "x"), "--set", *tiny_overrides]) == 2
        assert path.name in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.pt"))


SAMPLE = Path(__file__).resolve().parent.parent / "src" / "sdmae" / "assets" / "CMU-1-Small-Region.svs"


def test_a_slide_that_cannot_be_opened_is_skipped_and_listed_like_a_tile(tiles, tmp_path, capsys):
    (tiles / "cut.svs").write_bytes(SAMPLE.read_bytes()[:4096])  # a copy that stopped early
    src = open_sources([str(tiles)], DataConfig())
    assert "cannot open it" in capsys.readouterr().err
    kept = drop_unreadable(src, DataConfig(num_workers=0), tmp_path / "out")
    assert len(kept) == 12 and "cut.svs" in (tmp_path / "out" / SKIPPED_FILE).read_text()
    with pytest.raises(SdmaeError, match="cut.svs"):
        open_sources([str(tiles)], DataConfig(strict=True))
    with pytest.raises(SdmaeError, match="cut.svs"):  # the only data: nothing left to train on
        open_sources([str(tiles / "cut.svs")], DataConfig())


def test_a_tile_smaller_than_one_patch_is_left_out(tiles, tmp_path):
    Image.new("RGB", (1, 1), (200, 100, 150)).save(tiles / "dot.png")
    kept = drop_unreadable(open_sources([str(tiles)], DataConfig()), DataConfig(num_workers=0), tmp_path / "out",
                           min_side=16)
    assert len(kept) == 12
    assert "dot.png\t1x1 px, smaller than one 16 px patch" in (tmp_path / "out" / SKIPPED_FILE).read_text()


def test_tiles_that_break_during_training_are_listed_by_the_worker_that_met_them(tiles, tmp_path, tiny_overrides):
    out = tmp_path / "run"  # no pre-scan: the data loader's worker process meets the broken files
    assert main(["pretrain", "--data", str(tiles), "--out", str(out), "--set", *tiny_overrides, "data.num_workers=1",
                 "data.prescan=false", "data.batch_size=15", "train.max_steps=1", "train.reconstructions=false"]) == 0
    listed = (out / SKIPPED_FILE).read_text()
    assert all(b in listed for b in BROKEN), listed
