"""Errors the command line turns into a one-line message and an exit code instead of a traceback."""


class SdmaeError(Exception):
    """An error a user can fix (bad file, bad data); exit code 1."""

    exit_code = 1


class UsageError(SdmaeError):
    """A bad option, config key or path on the command line; exit code 2."""

    exit_code = 2
