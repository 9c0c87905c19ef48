"""``KEY=VALUE`` overrides, read one way everywhere: ``run_recbole --key=value``, ``config_dict`` strings,
``tuning/search.py --set`` and ``bench/quality.py --set``.

A value is a Python literal when it reads as one (``64``, ``1e-3``, ``[10, 20]``, ``{'LS': 'valid_and_test'}``,
``None``; ``true``/``false`` in any case, as RecBole takes them), and otherwise the string it is
(``--candidate_sampling=popularity``). It is RecBole's rule without its ``eval``, which ran any expression and read
``--value_field=value`` as a local variable of its own (compat fix 8), and it reads back every ``run_recbole``
command a results row or a tuning trial records, whose values are written with ``repr``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from recbole_oneranker.errors import ConfigError


def parse_value(text: str) -> Any:
    """``text`` as a Python literal, ``True``/``False`` for true/false in any case, else ``text`` itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text  # not a literal: a string such as 'value', 'inf' or '[0,inf)'


def parse_assignments(items: Iterable[str], source: str, prefix: str = "") -> dict[str, Any]:
    """``[prefix]KEY=VALUE`` strings as a dict of values (:func:`parse_value`); ``source`` names the items in
    messages (``argument``: "cannot read argument 'epochs=3': write overrides as --key=value").

    Raises:
        ConfigError: for an item that is not ``[prefix]KEY=VALUE``, or a key given twice with different values.
    """
    assignments: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.removeprefix(prefix).partition("=")
        if not item.startswith(prefix) or not sep or not key:
            raise ConfigError(f"cannot read {source} '{item}': write overrides as {prefix}key=value")
        value = parse_value(text)
        if key in assignments and assignments[key] != value:
            raise ConfigError(f"{source} {prefix}{key} is given twice with different values")
        assignments[key] = value
    return assignments
