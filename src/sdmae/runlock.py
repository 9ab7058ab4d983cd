"""One run per output folder: an exclusive lock on OUT/.lock for the whole of `sdmae pretrain`.

Two runs on one `--out` would interleave their log rows and overwrite each other's checkpoints. The lock is
`fcntl.flock`, which the OS drops when the holding process ends in any way, so a SIGKILL never leaves a stale
lock behind; the file itself only records who holds it, for the error message. Commands that only read a
run (eval, export, viz) do not take it. On network file systems without flock support the lock may not be
exclusive across machines (then the folder is not guarded, as before).

Holding the lock also makes every `.NAME.tmp-PID` file in the folder and its `checkpoints/` a leftover of a
killed write (no other writer can be running), so they are removed when the run starts.
"""
from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from sdmae.errors import UsageError

LOCK_NAME = ".lock"
_HELD: set[Path] = set()  # folders this process holds: taking one again (the CLI, then `pretrain`) is a no-op


@contextmanager
def run_folder_lock(out: Path):
    """Holds OUT/.lock exclusively until the block ends; a second holder gets a UsageError at once."""
    key = out.resolve()
    if key in _HELD:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UsageError(f"--out {out} is in use by another run ({holder}): wait for it to end, "
                         f"or give another folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        remove_stale_temp_files(out)
        _HELD.add(key)
        yield
    finally:
        _HELD.discard(key)
        os.close(fd)  # releases the lock


def remove_stale_temp_files(out: Path) -> list[Path]:
    """Temp files of interrupted atomic writes (`.NAME.tmp-PID`) in OUT and OUT/checkpoints; call under the lock."""
    stale = [p for d in (out, out / "checkpoints") if d.is_dir() for p in d.glob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
