"""Atomic file writes: a temp file beside the target, renamed over it only when it is complete.

Every file sdmae writes whole (checkpoints, metrics, feature caches, embeddings, tiles) goes through
`atomic_path`, so a crash, a kill or a full disk leaves either the previous file or the new one, never a torn
one, and no temp file from a failed write. A write that fails for lack of space or permission becomes one
`SdmaeError` naming the file and the cause (exit code 1), not a traceback.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path

from sdmae.errors import USER_ERRNOS, SdmaeError


def write_error(path: Path, e: BaseException) -> SdmaeError:
    """A one-line error for a failed write of `path`. Some writers (torch.save) lose the errno in a
    RuntimeError: a full file system is then named from its free space."""
    cause = USER_ERRNOS.get(getattr(e, "errno", None))
    if cause is None:
        try:
            full = shutil.disk_usage(path.parent).free < (1 << 20)
        except OSError:
            full = False
        first = str(e).splitlines()[0] if str(e) else ""
        cause = "no space left on the device" if full else f"{type(e).__name__}: {first}"
    return SdmaeError(f"cannot write {path}: {cause}")


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", durable: bool = False):
    """Yields the temp path to write (`.NAME.tmp-PID`, plus `suffix` for writers that insist on an extension);
    on success renames it over `path`. `durable`: fsync the file and the folder (checkpoints), so the rename
    survives a power cut too. On failure the temp file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem if suffix else path.name}.tmp-{os.getpid()}{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent, os.O_RDONLY)
    except (OSError, RuntimeError) as e:
        raise write_error(path, e) from e
    finally:
        with suppress(OSError):  # e.g. the folder is not one: there is no temp file to remove
            tmp.unlink(missing_ok=True)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
