"""Model lookup: this package's models first, then every RecBole built-in.

RecBole's own ``get_model`` only searches ``recbole.model`` and, for an unknown name, fails with an unrelated
``ModuleNotFoundError: lightgbm``. Here a name resolves to a plugin model (``recbole_oneranker.model.*``), else to a
RecBole model of the same name, else raises :class:`UnknownModelError` listing the valid choices.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from functools import cache

from recbole_oneranker.errors import UnknownModelError

PLUGIN_MODEL_PACKAGES = ("recbole_oneranker.model.sequential_recommender",)
RECBOLE_MODEL_PACKAGES = tuple(
    f"recbole.model.{kind}_recommender" for kind in ("general", "context_aware", "sequential", "knowledge_aware")
)


def _model_class_in(package: str, name: str) -> type | None:
    """The class ``name`` from ``<package>.<name lower-cased>`` (RecBole's one-model-per-file rule), or None."""
    module_name = f"{package}.{name.lower()}"
    if importlib.util.find_spec(module_name) is None:
        return None
    return getattr(importlib.import_module(module_name), name, None)


@cache
def model_names() -> tuple[str, ...]:
    """Every model name that :func:`get_model` accepts, plugin models first."""
    names: list[str] = []
    for package in PLUGIN_MODEL_PACKAGES + RECBOLE_MODEL_PACKAGES:
        module = importlib.import_module(package)
        names += sorted(name for name, value in vars(module).items() if isinstance(value, type))
    return tuple(dict.fromkeys(names))


def get_model(name: str) -> type:
    """The model class called ``name``: a plugin model if there is one, else RecBole's."""
    if not isinstance(name, str) or not name.isidentifier():
        raise UnknownModelError(f"model name must be a Python identifier, got {name!r}")
    for package in PLUGIN_MODEL_PACKAGES + RECBOLE_MODEL_PACKAGES:
        model_class = _model_class_in(package, name)
        if model_class is not None:
            return model_class
    raise UnknownModelError(_unknown_model_message(name))


def _unknown_model_message(name: str) -> str:
    names = model_names()
    by_lower = {candidate.lower(): candidate for candidate in names}
    if name.lower() in by_lower:
        return f"unknown model '{name}': did you mean '{by_lower[name.lower()]}'? (names are case-sensitive)"
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown model '{name}';{hint} valid models: {', '.join(names)}"
