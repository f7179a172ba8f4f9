"""Error types shared by the whole package.

Every error a user can cause (a bad file, a bad argument) is an :class:`AttnLinkError`, so the
CLI can turn it into one clear line on stderr and a non-zero exit, and a running node can log,
count and drop the frame that caused it.
"""

from __future__ import annotations

from pathlib import Path


class AttnLinkError(Exception):
    """Base class for errors caused by input: files, arguments, messages."""


class DataError(AttnLinkError):
    """A data file is missing, malformed or inconsistent with its neighbours."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ConfigError(AttnLinkError):
    """A configuration value is unknown, of the wrong type or out of range."""
