"""Typed, user-facing errors.

Every error a user can cause (bad file, bad column, bad value, missing weights) is raised as one of
these. The message names the file / row / field and the fix; the CLI prints it without a traceback.
"""

from __future__ import annotations

import errno
import os


class EchoForgeError(Exception):
    """Base of every error a user can cause. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None):
        self.fix = fix
        super().__init__(f"{message}\n  fix: {fix}" if fix else message)


class UsageError(EchoForgeError):
    """Bad arguments or options (exit code 2, like typer/click usage errors)."""

    exit_code = 2


class ConfigError(EchoForgeError):
    """A params.yaml section or config file is missing or invalid."""

    exit_code = 2


class DataError(EchoForgeError):
    """A dataset, FileList row, or video is missing or invalid."""


class VideoReadError(DataError):
    """A video file cannot be opened or decoded."""


class WeightsError(EchoForgeError):
    """Model or metric weights are missing, unverified, or do not match the expected architecture."""


class TrackingError(EchoForgeError):
    """The tracking server or model registry cannot satisfy a request."""


class DiskFullError(EchoForgeError):
    """A write found no room: the disk or a quota is full, or the file passed a file-size limit."""


# no space left, a quota (EDQUOT), a file-size limit (EFBIG, `ulimit -f` / RLIMIT_FSIZE)
_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
              errno.EFBIG: "the file is larger than the file-size limit"}


def disk_full_error(exc: OSError, path: str | os.PathLike | None) -> DiskFullError | None:
    """The user-facing error for an OSError that means "no room to write `path`"; None for any other."""
    reason = _DISK_FULL.get(exc.errno)
    if reason is None:
        return None
    return DiskFullError(f"disk full writing {path or 'an output file'}: {reason}",
                         fix="free space on that filesystem (or raise the quota / `ulimit -f`) and re-run the "
                             "same command; the unfinished file was not kept")
