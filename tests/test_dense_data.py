"""Nuclei data for the dense tasks: folder layouts, the XML rasteriser, instances, boxes and training crops."""
import numpy as np
import pytest
import torch
from PIL import Image

from sdmae.config import load_eval_config
from sdmae.dense.crops import CropDataset, collate, to_unit
from sdmae.dense.instances import boxes_from_instances, label_instances
from sdmae.dense.seg_data import find_entries, load_entry, load_split, rasterise_xml
from sdmae.errors import UsageError

XML = """<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>
<Region Id="1"><Vertices>{}</Vertices></Region>
<Region Id="2"><Vertices>{}</Vertices></Region>
<Region Id="3"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="2"/></Vertices></Region>
</Regions></Annotation></Annotations>"""


def vertices(points):
    return "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in points)


def write_xml(path, *polygons):
    path.write_text(XML.format(*(vertices(p) for p in polygons)))


def test_rasterise_known_polygons(tmp_path):
    # a 5x5 square (outline included: x 2..6, y 3..7), then a triangle whose pixels overwrite it where they meet
    write_xml(tmp_path / "a.xml", [(2, 3), (6, 3), (6, 7), (2, 7)], [(6.0, 7.0), (9.0, 7.0), (9.0, 10.0)])
    labels = rasterise_xml(tmp_path / "a.xml", 12, 12)
    assert labels.dtype == np.int32 and labels.shape == (12, 12)
    assert (labels[3:8, 2:6] == 1).all()  # the square but its last column, which the triangle's corner reaches
    assert labels[7, 6] == 2  # shared corner: the later region wins
    assert (labels == 1).sum() == 24
    tri = np.argwhere(labels == 2)  # right triangle with legs of 4 px: rows 7..10, row r spans x r-1..9
    assert {tuple(p) for p in tri} == {(r, c) for r in range(7, 11) for c in range(r - 1, 10)} | {(7, 6)}
    assert labels.max() == 2  # the two-vertex region is skipped


def test_rasteriser_reproduces_the_shipped_monuseg_masks(monuseg):
    entry = find_entries(monuseg / "test", "--test")[2]
    shipped = np.asarray(Image.open(entry.instance), dtype=np.int32)
    assert np.array_equal(rasterise_xml(entry.xml, *shipped.shape), shipped)


def _image(path, size=(40, 32)):
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)


def test_layouts_binary_masks_monuseg_original_and_flat(tmp_path):
    a = tmp_path / "a"
    (a / "images").mkdir(parents=True)
    (a / "masks_binary").mkdir()
    _image(a / "images" / "x.png")
    m = np.zeros((32, 40), np.uint8)
    m[2:6, 2:6] = 255
    m[10:14, 10:20] = 255
    Image.fromarray(m).save(a / "masks_binary" / "x.png")
    item = load_split(a, "--train")[0]
    assert item.instances_from_mask and item.instances.max() == 2 and item.mask.sum() == 56

    b = tmp_path / "b"  # MoNuSeg as distributed: Tissue_Images/ + Annotations/
    (b / "Tissue_Images").mkdir(parents=True)
    (b / "Annotations").mkdir()
    _image(b / "Tissue_Images" / "y.tif")
    write_xml(b / "Annotations" / "y.xml", [(2, 3), (6, 3), (6, 7), (2, 7)], [(20, 20), (24, 20), (24, 24)])
    item = load_split(b, "--train")[0]
    assert not item.instances_from_mask and item.instances.max() == 2 and item.name == "y"

    c = tmp_path / "c"  # MoNuSeg's test folder: images and XML side by side
    c.mkdir()
    _image(c / "z.tif")
    write_xml(c / "z.xml", [(2, 3), (6, 3), (6, 7), (2, 7)], [(20, 20), (24, 20), (24, 24)])
    assert find_entries(c, "--test")[0].xml == c / "z.xml"


def test_bad_folders_name_the_option_and_the_file(tmp_path):
    with pytest.raises(UsageError, match="--test: no such folder"):
        find_entries(tmp_path / "missing", "--test")
    (tmp_path / "images").mkdir()
    with pytest.raises(UsageError, match="--train: no images"):
        find_entries(tmp_path, "--train")
    _image(tmp_path / "images" / "lonely.png")
    with pytest.raises(UsageError, match="lonely.png"):
        find_entries(tmp_path, "--train")


def test_mask_of_another_size_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks_binary").mkdir()
    _image(tmp_path / "images" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks_binary" / "x.png")
    with pytest.raises(Exception, match="8x8"):
        load_entry(find_entries(tmp_path, "--train")[0])


def test_watershed_splits_touching_nuclei_and_components_do_not():
    yy, xx = np.mgrid[:40, :60]
    two = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 < 100)  # overlapping discs
    prob = two.astype(np.float32)
    assert label_instances(prob, method="components").max() == 1
    split = label_instances(prob, method="watershed")
    assert split.max() == 2
    assert split[20, 20] != split[20, 37]
    speck = np.zeros((20, 20), np.float32)
    speck[5:7, 5:7] = 1
    assert label_instances(speck, min_size=10).max() == 0


def test_boxes_from_instances():
    labels = np.zeros((10, 12), np.int32)
    labels[1:4, 2:7] = 1
    labels[8, 9] = 3  # label 2 absent; label 3 one pixel
    assert boxes_from_instances(labels).tolist() == [[2, 1, 7, 4], [9, 8, 10, 9]]
    assert boxes_from_instances(labels, min_side=2).tolist() == [[2, 1, 7, 4]]


def _items(n=2, size=80):
    from sdmae.dense.seg_data import NucleiImage

    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        inst = np.zeros((size, size), np.int32)
        inst[10:20, 10:22] = 1
        inst[40:60, 30:45] = 2
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        out.append(NucleiImage(f"i{k}", img, (inst > 0).astype(np.uint8), inst, False))
    return out


def test_crops_are_a_function_of_seed_and_index():
    cfg = load_eval_config(["eval.dense.crop_size=32", "eval.dense.scale_min=0.5", "eval.dense.scale_max=2"]).dense
    ds = CropDataset(_items(), cfg, seed=3, boxes=True)
    a, b, c = ds[5], ds[5], ds[6]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.uint8 and a["mask"].shape == (32, 32)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["boxes"]) == 4
    for bx in batch["boxes"]:
        assert bx.shape[1] == 4 and ((bx >= 0) & (bx <= 32)).all()
    other = CropDataset(_items(), cfg, seed=4)[5]
    assert not torch.equal(a["image"], other["image"])


def test_crop_mask_follows_the_image():
    """Flips and turns move the mask with the image: with mask = (red channel > 127), they stay equal."""
    items = _items(1)
    items[0].mask = (items[0].image[..., 0] > 127).astype(np.uint8)
    cfg = load_eval_config(["eval.dense.crop_size=32"]).dense
    ds = CropDataset(items, cfg, seed=0)
    for i in range(8):
        s = ds[i]
        assert torch.equal(s["mask"], (s["image"][0] > 127).long())


def test_stain_jitter_off_and_identity():
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    plain = to_unit(img)
    assert torch.equal(to_unit(img, torch.rand(2, 6), sigma=0.0), plain)
    middle = torch.full((2, 6), 0.5)  # alpha 1, beta 0
    assert torch.allclose(to_unit(img.clamp(min=1), middle, sigma=0.2), to_unit(img.clamp(min=1)), atol=1e-5)
    assert not torch.allclose(to_unit(img, torch.rand(2, 6), sigma=0.2), plain, atol=1e-3)
