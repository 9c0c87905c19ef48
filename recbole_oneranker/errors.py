"""The package's error types, below every module that raises them (config, models, data, CLI, tuning), and
:func:`shorten`, which keeps the values they quote short.

The CLI turns each into one line on stderr and exit status 2; tests match on their messages.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run: an unknown key, a missing dataset, a malformed value."""


class UnknownModelError(ValueError):
    """A model name that neither this package nor RecBole defines."""


class RunFileError(RuntimeError):
    """A file or folder a run needs that cannot be read or written: an unwritable output folder, a full disk, a
    truncated resume snapshot. The message names the path and what to do."""


MESSAGE_VALUE_CHARS = 80


def shorten(text: str, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters for an error message (a 5 MB bad value must not become a 5 MB line)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text):,} characters)"
