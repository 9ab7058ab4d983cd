"""`sdmae data download`: resumable HTTP download, checksum verification and extraction of registry datasets.

A download goes to `ROOT/<file>.part` and resumes with an HTTP Range request after a dropped connection
(retried with back-off) or in a later run; only a complete file with the right size and checksum is kept
and extracted. A finished dataset is recorded in `ROOT/.sdmae/<name>.json`, so running the command again
does nothing. `--from` takes the files from a mirror: a folder holding them, or a base URL.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from sdmae import __version__
from sdmae.data.registry import DatasetEntry, RemoteFile
from sdmae.errors import SdmaeError, UsageError

CHUNK = 1 << 20
RETRYABLE = (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError, OSError)


def _bar(total: Optional[int], initial: int, desc: str):
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, dynamic_ncols=True, mininterval=1.0)


def fetch(url: str, dest: Path, size: Optional[int] = None, retries: int = 5, retry_wait: float = 2.0,
          timeout: float = 60.0) -> None:
    """Downloads `url` to `dest`, resuming `dest.part` with Range requests; raises SdmaeError after `retries`
    failed attempts in a row (the partial file stays for the next run)."""
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            part.unlink()
            have = 0
        headers = {"User-Agent": f"sdmae/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                if have and r.status != 206:  # the server ignored the range: start again
                    have = 0
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else size
                with open(part, "ab" if have else "wb") as f, _bar(total, have, dest.name) as bar:
                    while block := r.read(CHUNK):
                        f.write(block)
                        bar.update(len(block))
                        failures = 0
            got = part.stat().st_size
            if total is not None and got < total:
                raise http.client.IncompleteRead(b"", total - got)
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have and (size is None or have == size):
                break  # nothing left to send: the partial file is complete
            if e.code < 500:
                raise SdmaeError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
            err: Exception = e
        except RETRYABLE as e:
            err = e
        failures += 1
        if failures > retries:
            raise SdmaeError(f"download of {url} failed {failures} times in a row ({type(err).__name__}: {err}); "
                             f"{part} is kept: run the same command to resume")
        print(f"connection lost ({type(err).__name__}); resuming {dest.name}", file=sys.stderr)
        time.sleep(retry_wait * 2 ** (failures - 1))
    os.replace(part, dest)


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(8 * CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, rf: RemoteFile) -> None:
    """Size and checksum against the registry; a bad file is removed (so the next run downloads it anew)."""
    problem = None
    if rf.size is not None and path.stat().st_size != rf.size:
        problem = f"size {path.stat().st_size} bytes, expected {rf.size}"
    else:
        for algorithm, want in (("sha256", rf.sha256), ("md5", rf.md5)):
            if want and digest(path, algorithm) != want:
                problem = f"{algorithm} does not match the published {want}"
                break
    if problem:
        path.unlink()
        raise SdmaeError(f"{path.name}: {problem}; the file was corrupted in transit or the mirror differs. "
                         f"It was removed: run the command again to download it anew")


def _safe_members(zf: zipfile.ZipFile, root: Path) -> list:
    base = root.resolve()
    for m in zf.infolist():
        target = (root / m.filename).resolve()
        if target != base and base not in target.parents:
            raise SdmaeError(f"archive member {m.filename!r} would be written outside {root}; refusing to extract")
    return zf.infolist()


def extract(path: Path, rf: RemoteFile, root: Path) -> None:
    if rf.extract == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(root, members=_safe_members(zf, root))
        except zipfile.BadZipFile as e:
            raise SdmaeError(f"{path} is not a valid zip archive: {e}") from e
    elif rf.extract == "gunzip":
        target = root / path.name[: -len(".gz")]
        tmp = target.with_name(target.name + ".part")
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, target)


def _get(rf: RemoteFile, dest: Path, mirror: Optional[str], retries: int, retry_wait: float) -> None:
    if mirror and not mirror.startswith(("http://", "https://")):
        src = Path(mirror) / rf.name
        if not src.is_file():
            raise UsageError(f"--from {mirror}: {rf.name} is not there")
        shutil.copyfile(src, dest)
        return
    url = f"{mirror.rstrip('/')}/{rf.name}" if mirror else rf.url
    fetch(url, dest, rf.size, retries=retries, retry_wait=retry_wait)


def download(entry: DatasetEntry, root: str | Path, mirror: Optional[str] = None, keep_archives: bool = False,
             retries: int = 5, retry_wait: float = 2.0) -> Path:
    """Downloads, verifies and extracts `entry` into `root`; returns the record of the finished dataset."""
    root = Path(root)
    record = root / ".sdmae" / f"{entry.name}.json"
    if record.exists():
        print(f"{entry.name}: already downloaded and verified in {root}", file=sys.stderr)
        return record
    root.mkdir(parents=True, exist_ok=True)
    need = sum(rf.size or 0 for rf in entry.files)
    free = shutil.disk_usage(root).free
    if need and free < need:
        raise UsageError(f"{entry.name} needs {need / 2**30:.1f} GiB for its archives and {root} has "
                         f"{free / 2**30:.1f} GiB free")
    for rf in entry.files:
        dest = root / rf.name
        if not dest.exists():
            _get(rf, dest, mirror, retries, retry_wait)
        verify(dest, rf)
        extract(dest, rf, root)
        if rf.extract != "none" and not keep_archives:
            dest.unlink()
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"name": entry.name, "files": [rf.name for rf in entry.files],
                                  "sdmae": __version__}, indent=1))
    return record


def verify_manual(entry: DatasetEntry, root: str | Path) -> dict:
    """Form-gated sets (MHIST): checks the folder the user downloaded; returns counts per class and split."""
    from sdmae.data.csvlist import is_mhist, mhist_source

    root = Path(root)
    if not is_mhist(root):
        raise UsageError(f"{root} does not hold {entry.name} yet. {entry.manual}")
    src = mhist_source(root)
    missing = [f for f in src.files if not Path(f).is_file()]
    if missing:
        raise UsageError(f"{len(missing)} image(s) listed in {root / 'annotations.csv'} are missing, e.g. "
                         f"{missing[0]}")
    want = entry.expect.get("images")
    if want is not None and len(src) != want:
        raise UsageError(f"{root / 'annotations.csv'} lists {len(src)} images; {entry.name} has {want}")
    classes = {c: sum(1 for i in range(len(src)) if src.label(i) == k) for k, c in enumerate(src.classes)}
    splits = {s: src.splits.count(s) for s in sorted(set(src.splits))}
    return {"images": len(src), "classes": classes, "splits": splits}
