"""The package's error types, below every module that raises them (config, models, data, CLI, tuning).

The CLI turns each into one line on stderr and exit status 2; tests match on their messages.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run: an unknown key, a missing dataset, a malformed value."""


class UnknownModelError(ValueError):
    """A model name that neither this package nor RecBole defines."""
