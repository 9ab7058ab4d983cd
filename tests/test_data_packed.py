"""The packed format: round trip of pixels, labels and splits; damage is caught when the pack is opened."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdmae.cli import main
from sdmae.config import DataConfig
from sdmae.data.packed import PackedSource, write_pack
from sdmae.data.sources import open_sources
from sdmae.errors import UsageError
from test_data_sources import rgb, write_pcam

CFG = DataConfig()


@pytest.fixture
def tree(tmp_path):
    for c in ("x", "y"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rgb(10 * i + ord(c), (16, 16))).save(tmp_path / "tree" / c / f"{i}.png")
    return tmp_path / "tree"


def test_round_trip_equals_source_pixels_and_labels(tree, tmp_path):
    src = open_sources([str(tree)], CFG)
    r = write_pack(src, tmp_path / "t.pack", shard_mb=0)  # shard_mb=0: one tile per shard
    assert r.count == 10 and not r.skipped
    pack = open_sources([str(tmp_path / "t.pack")], CFG)
    assert isinstance(pack, PackedSource) and len(pack.shards) == 10
    assert pack.classes == src.classes and pack.tile_shape == (16, 16)
    for i in range(10):
        assert np.array_equal(pack.read_array(i), np.asarray(src.read(i)))
        assert pack.label(i) == src.label(i) and pack.path(i).endswith(src.path(i))


def test_pcam_splits_survive_packing(tmp_path):
    data = write_pcam(tmp_path / "pcam", n=4)
    write_pack(open_sources([str(tmp_path / "pcam")], CFG), tmp_path / "p.pack")
    test = open_sources([f"{tmp_path / 'p.pack'}@test"], CFG)
    assert len(test) == 4 and np.array_equal(test.read_array(2), data["test"][0][2])
    assert [test.label(i) for i in range(4)] == data["test"][1].tolist() and test.split(0) == "test"
    with pytest.raises(UsageError, match="no split 'extra'"):
        open_sources([f"{tmp_path / 'p.pack'}@extra"], CFG)


def test_other_sizes_are_cropped_and_unreadable_skipped(tmp_path):
    (tmp_path / "mix").mkdir()
    Image.fromarray(rgb(1, (20, 10))).save(tmp_path / "mix" / "wide.png")
    Image.fromarray(rgb(2, (8, 8))).save(tmp_path / "mix" / "small.png")
    (tmp_path / "mix" / "bad.png").write_bytes(b"")
    r = write_pack(open_sources([str(tmp_path / "mix")], CFG), tmp_path / "m.pack", size=8)
    assert r.count == 2 and r.resized == 1 and r.skipped[0][0].endswith("bad.png")
    assert PackedSource(tmp_path / "m.pack").read_array(1).shape == (8, 8, 3)
    with pytest.raises(UsageError, match="exists"):
        write_pack(open_sources([str(tmp_path / "mix")], CFG), tmp_path / "m.pack", size=8)


def test_damage_is_detected_on_open(tree, tmp_path):
    write_pack(open_sources([str(tree)], CFG), tmp_path / "t.pack")
    shard = tmp_path / "t.pack" / "tiles-00000.u8"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="corrupted.*tiles-00000"):
        PackedSource(tmp_path / "t.pack")
    assert PackedSource(tmp_path / "t.pack", verify=False).read_array(0).shape == (16, 16, 3)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(UsageError, match="damaged.*tiles-00000"):
        PackedSource(tmp_path / "t.pack", verify=False)
    (tmp_path / "t.pack" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UsageError, match="not a sdmae-pack"):
        PackedSource(tmp_path / "t.pack")


def test_pack_and_check_commands(tree, tmp_path, capsys):
    assert main(["data", "pack", str(tree), "--out", str(tmp_path / "c.pack"), "--workers", "2"]) == 0
    assert "10 tiles packed" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "c.pack"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 10 and report["classes"] == {"x": 5, "y": 5} and report["sizes"] == {"16x16": 10}
    (tree / "x" / "broken.jpg").write_text("nope")
    assert main(["data", "check", str(tree), "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "broken.jpg" in out and "class x: 6" in out
