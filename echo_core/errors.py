"""Typed, user-facing errors.

Every error a user can cause (bad file, bad column, bad value, missing weights) is raised as one of
these. The message names the file / row / field and the fix; the CLI prints it without a traceback.
"""

from __future__ import annotations


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
