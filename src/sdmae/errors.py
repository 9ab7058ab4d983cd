"""Errors the command line turns into a one-line message and an exit code instead of a traceback."""
from __future__ import annotations

import errno
from typing import Optional


class SdmaeError(Exception):
    """An error a user can fix (bad file, bad data); exit code 1."""

    exit_code = 1


class UsageError(SdmaeError):
    """A bad option, config key or path on the command line; exit code 2."""

    exit_code = 2


# OSErrors a user fixes outside sdmae (free space, permissions): reported in one line, not as a traceback.
USER_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system"}


def user_error(e: BaseException) -> Optional[SdmaeError]:
    """The error to report in one line for `e`, or None for a bug (which keeps its traceback)."""
    if isinstance(e, SdmaeError):
        return e
    if isinstance(e, OSError) and e.errno in USER_ERRNOS:
        return SdmaeError(f"{e.filename or 'a file'}: {USER_ERRNOS[e.errno]}")
    return None
