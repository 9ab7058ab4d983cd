"""The public datasets `sdmae data download` knows: where their files are, how big, their checksums, licence
and citation, and how to use them once extracted.

Checksums come from the publishers' records or from projects that verify these exact URLs on every
download (the source is noted beside each one). A file whose checksum is None is size-checked only; see
docs/data.md for which entries those are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sdmae.errors import UsageError

ZENODO = "https://zenodo.org/records/{record}/files/{name}?download=1"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    size: Optional[int] = None  # bytes
    md5: Optional[str] = None
    sha256: Optional[str] = None
    extract: str = "zip"  # zip | gunzip | none


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    files: tuple = ()
    licence: str = ""
    citation: str = ""
    usage: str = ""  # how to pass it to sdmae, {root} is the download root
    manual: str = ""  # form-gated: where to get it; `download` then verifies the user's folder
    expect: dict = field(default_factory=dict)  # for form-gated sets: what the folder must hold


def zenodo(record: int, name: str, **kw) -> RemoteFile:
    return RemoteFile(name, ZENODO.format(record=record, name=name), **kw)


KATHER_2019 = ("J. N. Kather, J. Krisam, P. Charoentong et al. Predicting survival from colorectal cancer "
               "histology slides using deep learning: a retrospective multicenter study. PLOS Medicine 16(1): "
               "e1002730, 2019. Data: Kather, Halama, Marx, Zenodo, doi:10.5281/zenodo.1214456")
PCAM = ("B. S. Veeling, J. Linmans, J. Winkens, T. Cohen, M. Welling. Rotation Equivariant CNNs for Digital "
        "Pathology. MICCAI 2018 (arXiv:1806.03962); and B. Ehteshami Bejnordi et al. Diagnostic Assessment of "
        "Deep Learning Algorithms for Detection of Lymph Node Metastases in Women With Breast Cancer. JAMA "
        "318(22):2199-2210, 2017")
CC_BY = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"

# NCT-CRC md5: the Zenodo record's listing (several independent download scripts agree, with the sizes)
# PCam sha256 and sizes: TensorFlow Datasets' checksum file for these Zenodo URLs
# Kather 2016 sha256 and size: TensorFlow Datasets' checksum file for this Zenodo URL
REGISTRY = {e.name: e for e in (
    DatasetEntry(
        "nct-crc-he-100k", "NCT-CRC-HE-100K: 100,000 colorectal H&E tiles, 224 px at 0.5 um/px, 9 classes "
        "(Macenko-normalised)",
        (zenodo(1214456, "NCT-CRC-HE-100K.zip", size=11_690_284_003, md5="6fd702d11df6292bc054397ae038a464"),),
        CC_BY, KATHER_2019, "--data {root}/NCT-CRC-HE-100K (class tree)"),
    DatasetEntry(
        "nct-crc-he-100k-nonorm", "NCT-CRC-HE-100K-NONORM: the same 100,000 tiles without colour normalisation",
        (zenodo(1214456, "NCT-CRC-HE-100K-NONORM.zip", md5="035777cf327776a71a05c95da6d6325f"),),
        CC_BY, KATHER_2019, "--data {root}/NCT-CRC-HE-100K-NONORM (class tree)"),
    DatasetEntry(
        "crc-val-he-7k", "CRC-VAL-HE-7K: 7,180 colorectal H&E tiles from 50 other patients (the usual test set)",
        (zenodo(1214456, "CRC-VAL-HE-7K.zip", size=800_276_929, md5="2fd1651b4f94ebd818ebf90ad2b6ce06"),),
        CC_BY, KATHER_2019, "--test {root}/CRC-VAL-HE-7K (class tree)"),
    DatasetEntry(
        "pcam", "PatchCamelyon: 327,680 lymph-node tiles, 96 px, binary metastasis label, official splits",
        tuple(zenodo(2546921, f"camelyonpatch_level_2_split_{s}_{k}.h5.gz", size=n, sha256=h, extract="gunzip")
              for s, k, n, h in (
                  ("train", "x", 6_421_353_462, "d619e741468a7ab35c7e4a75e6821b7e7e6c9411705d45708f2a0efc8960656c"),
                  ("train", "y", 21_378, "b74126d2c01b20d3661f9b46765d29cf4e4fba6faba29c8e0d09d406331ab75a"),
                  ("valid", "x", 805_965_320, "f82ee1670d027b4ec388048d9eabc2186b77c009655dae76d624c0ecb053ccb2"),
                  ("valid", "y", 3_038, "ce1ae30f08feb468447971cfd0472e7becd0ad96d877c64120c72571439ae48c"),
                  ("test", "x", 800_875_929, "79174c2201ad521602a5888be8f36ee10875f37403dd3f2086caf2182ef87245"),
                  ("test", "y", 3_040, "0a522005fccc8bbd04c5a117bfaf81d8da2676f03a29d7499f71d0a0bd6068ef"))),
        "CC0 1.0 (following Camelyon16)", PCAM, "--train {root}@train --val {root}@valid --test {root}@test"),
    DatasetEntry(
        "kather2016", "Kather 2016 colorectal textures: 5,000 tiles, 150 px, 8 classes",
        (zenodo(53169, "Kather_texture_2016_image_tiles_5000.zip", size=258_098_431,
                sha256="936d0b95ae0f04f1f7b18a2b7e8c55776c3e887d102f645bcee752d1a6626a32"),),
        CC_BY, "J. N. Kather, C.-A. Weis, F. Bianconi et al. Multi-class texture analysis in colorectal cancer "
        "histology. Scientific Reports 6:27988, 2016. Data: Zenodo, doi:10.5281/zenodo.53169",
        "--data {root}/Kather_texture_2016_image_tiles_5000 (class tree)"),
    DatasetEntry(
        "mhist", "MHIST: 3,152 colorectal polyp tiles, 224 px, HP vs SSA, train/test partition",
        licence="the MHIST dataset terms (accepted on its request form)",
        citation="J. Wei, A. Suriawinata, B. Ren et al. A Petri Dish for Histopathology Image Analysis. "
                 "AIME 2021 (arXiv:2101.12355)",
        usage="--train {root}@train --test {root}@test",
        manual="MHIST is distributed after a request form at https://bmirds.github.io/MHIST/ : download "
               "images.zip and annotations.csv there, unzip so that ROOT/images/*.png and ROOT/annotations.csv "
               "exist, then run this command again to verify the folder",
        expect={"images": 3152}),
)}


def lookup(name: str) -> DatasetEntry:
    key = name.lower()
    if key not in REGISTRY:
        raise UsageError(f"unknown dataset '{name}' (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[key]
