"""Every kind of `--data`: folders, class trees, CSV lists, MHIST, PCam HDF5, slides; splits; clear errors."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from sdmae.config import DataConfig
from sdmae.data.base import ConcatSource, UnreadableTile
from sdmae.data.images import load_rgb
from sdmae.data.sources import open_sources, split_path
from sdmae.errors import UsageError

CFG = DataConfig()


def rgb(seed: int, size=(8, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def write_pcam(folder, splits=("train", "valid", "test"), n=5, side=12):
    """A tiny PCam in the official layout: x (N, side, side, 3) uint8, y (N, 1, 1, 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for k, s in enumerate(splits):
        x = np.random.default_rng(k).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        with h5py.File(folder / f"camelyonpatch_level_2_split_{s}_x.h5", "w") as f:
            f["x"] = x
        with h5py.File(folder / f"camelyonpatch_level_2_split_{s}_y.h5", "w") as f:
            f["y"] = y
        data[s] = (x, y.reshape(-1))
    return data


def test_image_modes_become_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray((gray.astype(np.uint16) * 1000)).save(tmp_path / "g16.png")
    rgba = np.dstack([rgb(0), np.zeros((6, 8), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb(1)).convert("P").save(tmp_path / "p.png")
    out = {p: load_rgb(str(tmp_path / p)) for p in ("g.png", "g16.png", "a.png", "p.png")}
    assert all(im.mode == "RGB" and im.size == (8, 6) for im in out.values())
    assert np.asarray(out["g.png"])[..., 0].tolist() == gray.tolist()
    g16 = np.asarray(out["g16.png"])[..., 0]
    assert g16.max() == 255 and g16[0, 0] == 0  # 16-bit range scaled to 8 bits
    assert (np.asarray(out["a.png"]) == 255).all()  # fully transparent -> white


def test_sixteen_bit_rgb_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = (rgb(2).astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "t16.tif", a, photometric="rgb")
    assert np.abs(np.asarray(load_rgb(str(tmp_path / "t16.tif"))).astype(int) - rgb(2)).max() <= 1


def test_unreadable_files_raise_with_reason(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(UnreadableTile, match="empty file"):
        load_rgb(str(tmp_path / "empty.png"))
    with pytest.raises(UnreadableTile) as e:
        load_rgb(str(tmp_path / "fake.jpg"))
    assert e.value.path.endswith("fake.jpg")


def test_folder_class_tree_and_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in ("b", "a"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rgb(i)).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "train" / "a" / ".hidden.png").write_bytes(b"junk")
    flat = open_sources([str(tmp_path)], CFG)
    assert len(flat) == 10 and flat.classes == []  # depth 3: unlabelled images
    train = open_sources([f"{tmp_path}@train"], CFG)
    assert train.classes == ["a", "b"] and len(train) == 6
    assert [train.label(i) for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert len(open_sources([str(tmp_path)], CFG, split="testing")) == 4  # alias of test
    with pytest.raises(UsageError, match="no split 'valid'.*test, train"):
        open_sources([f"{tmp_path}@valid"], CFG)


def test_csv_list_with_and_without_header(tmp_path):
    for i in range(4):
        Image.fromarray(rgb(i)).save(tmp_path / f"t{i}.png")
    (tmp_path / "h.csv").write_text("path,label,split\nt0.png,tumour,train\nt1.png,normal,train\n"
                                    f"{tmp_path / 't2.png'},tumour,val\nt3.png,,test\n")
    (tmp_path / "n.csv").write_text("t0.png,1\nt1.png,0\n")
    src = open_sources([str(tmp_path / "h.csv")], CFG)
    assert src.classes == ["normal", "tumour"] and [src.label(i) for i in range(4)] == [1, 0, 1, -1]
    assert [src.split(i) for i in range(4)] == ["train", "train", "val", "test"]
    val = open_sources([f"{tmp_path / 'h.csv'}@validation"], CFG)
    assert len(val) == 1 and np.array_equal(np.asarray(val.read(0)), rgb(2))
    plain = open_sources([str(tmp_path / "n.csv")], CFG)
    assert plain.classes == ["0", "1"] and plain.label(0) == 1
    with pytest.raises(UsageError, match="no split column"):
        open_sources([f"{tmp_path / 'n.csv'}@train"], CFG)
    (tmp_path / "bad.csv").write_text("file,other\nt0.png,x\n")
    assert open_sources([str(tmp_path / "bad.csv")], CFG).classes == []  # no label column: unlabelled


def test_mhist_layout(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition"]
    for i, (lab, part) in enumerate((("HP", "train"), ("SSA", "train"), ("HP", "test"))):
        Image.fromarray(rgb(i)).save(tmp_path / "images" / f"MHIST_{i}.png")
        rows.append(f"MHIST_{i}.png,{lab},{i},{part}")
    (tmp_path / "annotations.csv").write_text("\n".join(rows) + "\n")
    test = open_sources([f"{tmp_path}@test"], CFG)
    assert len(test) == 1 and test.classes == ["HP"] and test.label(0) == 0
    assert open_sources([str(tmp_path)], CFG).classes == ["HP", "SSA"]


def test_pcam_hdf5_splits_and_labels(tmp_path):
    data = write_pcam(tmp_path / "pcam")
    test = open_sources([f"{tmp_path / 'pcam'}@test"], CFG)
    x, y = data["test"]
    assert len(test) == 5 and test.tile_shape == (12, 12) and test.classes == ["0", "1"]
    assert np.array_equal(test.read_array(3), x[3]) and [test.label(i) for i in range(5)] == y.tolist()
    assert np.array_equal(np.asarray(test.read(3)), x[3]) and test.split(0) == "test"
    assert open_sources([f"{tmp_path / 'pcam'}@val"], CFG).split(0) == "valid"
    everything = open_sources([str(tmp_path / "pcam")], CFG)
    assert len(everything) == 15 and everything.split(0) == "train" and everything.split(14) == "test"
    one = open_sources([str(tmp_path / "pcam" / "camelyonpatch_level_2_split_train_x.h5")], CFG)
    assert len(one) == 5 and one.label(1) == 1
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "camelyonpatch_level_2_split_test_x.h5.gz").write_bytes(b"x")
    with pytest.raises(UsageError, match="gunzip"):
        open_sources([str(tmp_path / "gz")], CFG)


def test_hdf5_handle_opens_once_per_process(tmp_path):
    write_pcam(tmp_path, splits=("test",))
    src = open_sources([str(tmp_path)], CFG)
    src.read_array(0)
    handle = src._file
    src.read_array(4)
    assert src._file is handle


def test_concat_merges_classes_by_name(tmp_path):
    for root, classes in (("one", ("b", "c")), ("two", ("a", "b"))):
        for c in classes:
            (tmp_path / root / c).mkdir(parents=True)
            Image.fromarray(rgb(0)).save(tmp_path / root / c / "x.png")
    src = open_sources([str(tmp_path / "one"), str(tmp_path / "two")], CFG)
    assert isinstance(src, ConcatSource) and src.classes == ["a", "b", "c"]
    assert [src.classes[src.label(i)] for i in range(4)] == ["b", "c", "a", "b"]


def test_real_pcam_jpeg_tree(pcam_train):
    src = open_sources([str(pcam_train)], CFG)
    assert len(src) == 6000 and src.classes == ["0", "1"] and src.read(0).size == (96, 96)


def test_split_path_keeps_existing_at_signs(tmp_path):
    d = tmp_path / "a@b"
    d.mkdir()
    assert split_path(str(d)) == (str(d), None)
    assert split_path(f"{tmp_path}/x@test") == (f"{tmp_path}/x", "test")


def touch(path, data: bytes = b""):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,match", [
    (lambda t: t / "missing", "does not exist"),
    (lambda t: (t / "empty").mkdir() or t / "empty", "no images"),
    (lambda t: touch(t / "x.csv"), "empty"),
    (lambda t: touch(t / "one.png", b"x"), "single image"),
    (lambda t: touch(t / "bad.svs", b"no slide"), "cannot open slide"),
    (lambda t: touch(t / "notes.txt", b"x"), "unsupported"),
])
def test_bad_paths_are_usage_errors_naming_the_path(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(UsageError, match=match) as e:
        open_sources([str(path)], CFG)
    assert path.name in str(e.value) and e.value.exit_code == 2
