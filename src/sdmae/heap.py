"""Keeping freed memory in the process on CPUs: glibc returns large blocks (above its mmap threshold) to the
system when they are freed, so every training step on a CPU maps its activations afresh and pays a page
fault, with zeroing, for every 4 KiB of them. PyTorch's CPU tuning guides recommend jemalloc or tcmalloc
for this; `keep_freed_memory` gets much of the effect from glibc itself (`mallopt`): blocks up to 32 MiB
come from the heap and the heap is trimmed only above 1 GiB free, so steps reuse warm memory. The resident
size then stays near its peak, as with those allocators.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30  # an int: mallopt takes a C int


@functools.cache
def keep_freed_memory() -> bool:
    """Tunes glibc's allocator once per process; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
