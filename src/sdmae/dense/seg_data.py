"""Nuclei annotations on disk: the folder layouts `sdmae eval segment|detect` read, and MoNuSeg's XML outlines.

A split folder holds images (in `images/`, MoNuSeg's `Tissue_Images/`, or the folder itself) and, per image
stem, any of:
- `masks_binary/<stem>.png`: 0 = background, anything else = nucleus (the semantic ground truth);
- `masks_instance/<stem>.png`: 0 = background, k = k-th nucleus (16- or 32-bit);
- `<stem>.xml` in `annotations_xml/`, `Annotations/` or beside the image: Aperio-style
  `Regions/Region/Vertices/Vertex` polygons (MoNuSeg), rasterised here.
Instances come from `masks_instance`, else from the XML; the semantic mask from `masks_binary`, else from the
instances. With binary masks only, instance metrics and boxes use the mask's connected components.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from sdmae.errors import SdmaeError, UsageError

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
IMAGE_DIRS = ("images", "Tissue_Images", "Tissue Images")
XML_DIRS = ("annotations_xml", "Annotations", "annotations")


@dataclass
class Entry:
    image: Path
    binary: Optional[Path] = None
    instance: Optional[Path] = None
    xml: Optional[Path] = None


@dataclass
class NucleiImage:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 1 = nucleus
    instances: np.ndarray  # (H, W) int32, 0 = background, k = k-th nucleus
    instances_from_mask: bool  # True: connected components of a binary mask (touching nuclei merge)


def rasterise_xml(path: str | Path, height: int, width: int) -> np.ndarray:
    """Every `Region` polygon of an Aperio/MoNuSeg XML file, filled (outline included) with its 1-based order;
    later regions overwrite earlier ones where they overlap. -> (height, width) int32."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise SdmaeError(f"cannot read XML outlines {path}: {e}") from e
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    k = 0
    for region in root.iter("Region"):
        pts = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(pts) < 3:
            continue
        k += 1
        draw.polygon(pts, fill=k, outline=k)
    return np.asarray(canvas, dtype=np.int32)


def _find(folder: Path, stem: str, exts=IMAGE_EXTS) -> Optional[Path]:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def find_entries(root: str | Path, role: str) -> list[Entry]:
    """The annotated images of a split folder; a UsageError naming `role` (--train, --test) when it is not one."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{role}: no such folder: {root}")
    img_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise UsageError(f"{role}: no images in {img_dir} (expected {root}/images/*.tif|png|jpg with "
                         f"masks_binary/, masks_instance/ or XML outlines)")
    entries, missing = [], []
    for img in images:
        xml = next((p for p in (root / d / f"{img.stem}.xml" for d in XML_DIRS) if p.is_file()),
                   _find(img_dir, img.stem, (".xml",)))
        e = Entry(img, _find(root / "masks_binary", img.stem), _find(root / "masks_instance", img.stem), xml)
        if e.binary is None and e.instance is None and e.xml is None:
            missing.append(img.name)
        entries.append(e)
    if missing:
        raise UsageError(f"{role}: {len(missing)} image(s) in {img_dir} have no mask or XML outline "
                         f"(looked in masks_binary/, masks_instance/, {', '.join(XML_DIRS)}/): "
                         f"{', '.join(missing[:5])}")
    return entries


def _read(path: Path, mode: Optional[str] = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode) if mode else im)
    except (OSError, ValueError) as e:
        raise SdmaeError(f"cannot read {path}: {e}") from e


def load_entry(e: Entry) -> NucleiImage:
    image = _read(e.image, "RGB")
    H, W = image.shape[:2]
    if e.instance is not None:
        instances = _read(e.instance).astype(np.int32)
    elif e.xml is not None:
        instances = rasterise_xml(e.xml, H, W)
    else:
        instances = None
    mask = (_read(e.binary) > 0) if e.binary is not None else instances > 0
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    from_mask = instances is None
    if from_mask:
        instances = ndimage.label(mask)[0].astype(np.int32)
    for what, arr in (("mask", mask), ("instances", instances)):
        if arr.shape != (H, W):
            raise SdmaeError(f"{e.image}: {what} is {arr.shape[1]}x{arr.shape[0]}, the image {W}x{H}")
    return NucleiImage(e.image.stem, image, mask.astype(np.uint8), instances, from_mask)


def load_split(root: str | Path, role: str) -> list[NucleiImage]:
    return [load_entry(e) for e in find_entries(root, role)]
