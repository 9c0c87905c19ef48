"""Where the package's data folders are: inside the package in a wheel, at the repository root otherwise.

pyproject's ``[tool.hatch.build.targets.wheel.force-include]`` copies each of them into the wheel under the same
name, so one lookup serves an editable checkout and a non-editable install alike.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder ``name`` (e.g. ``properties``, ``bench/configs``), in the installed package or the checkout."""
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"recbole_oneranker is installed without its '{name}' folder")
