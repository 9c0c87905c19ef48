"""How the package installs: RecBole's runtime dependencies on every Python, one clear line for a missing RecBole
or ray, and a wheel that ships properties/, dataset_configs/, bench/configs/ and tuning/spaces/ inside the package
(so a non-editable install finds them)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from recbole_oneranker import compat

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_yaml_and_the_console_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("recbole_oneranker-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("properties", "dataset_configs", "bench/configs", "tuning/spaces"):
        for yaml_file in (REPO / folder).rglob("*.yaml"):
            assert f"recbole_oneranker/{folder}/{yaml_file.relative_to(REPO / folder)}" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "run_recbole = recbole_oneranker.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _requirement(text: str) -> tuple[str, str, str]:
    """``name (spec) ; marker`` or ``name spec; marker`` -> (normalized name, spec without spaces, marker)."""
    requirement, _, marker = text.partition(";")
    match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*\(?([^)]*)\)?\s*$", requirement)
    assert match, text
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    return name, match.group(2).replace(" ", ""), marker.strip().replace('"', "'")


def test_recbole_runtime_dependencies_are_declared_by_us_for_every_python():
    # From Python 3.12 on RecBole is installed with --no-deps (its ray <= 2.6.3 has no wheels there), so every
    # runtime dependency it declares, ray aside, must come from our own list, with no marker.
    tomllib = pytest.importorskip("tomllib")
    ours = [
        _requirement(text) for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    unconditional = {name for name, _, marker in ours if not marker}
    recbole = [_requirement(text) for text in importlib.metadata.requires("recbole") or []]
    runtime = {name for name, _, marker in recbole if "extra" not in marker}
    assert "ray" in runtime and not runtime - {"ray"} - unconditional
    assert ("recbole", "==1.2.1", "python_version < '3.12'") in ours
    assert "ray" not in {name for name, _, _ in ours}
    # the exact pins RecBole holds itself to are ours too
    exact = {name: spec for name, spec, marker in recbole if spec.startswith("==") and "extra" not in marker}
    assert exact and all((name, spec, "") in ours for name, spec in exact.items())


def test_a_missing_or_other_recbole_is_one_line_naming_the_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "recbole" else find_spec(name))
    with pytest.raises(compat.IncompatibleEnvironmentError, match=r"pip install --no-deps recbole==1\.2\.1"):
        compat.check_recbole()
    monkeypatch.undo()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.2.0")
    with pytest.raises(compat.IncompatibleEnvironmentError, match=r"RecBole 1\.2\.0 is installed.*--no-deps recbole"):
        compat.check_recbole()


def test_recbole_features_that_need_ray_fail_with_one_line_naming_the_fix():
    # As on Python >= 3.12, where ray cannot install: the path finder does not find it (where ray is installed, it is
    # hidden from this subprocess). RecBole's quick_start (its run_recbole and ray tuning) imports ray.
    code = (
        "import importlib.machinery as m\n"
        "find = m.PathFinder.find_spec\n"
        "m.PathFinder.find_spec = lambda name, path=None, target=None: (\n"
        "    None if name == 'ray' else find(name, path, target)\n"
        ")\n"
        "import importlib.util, recbole_oneranker\n"
        "assert importlib.util.find_spec('ray') is None\n"  # a probe for ray still answers None
        "from recbole.quick_start import run_recbole\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"ModuleNotFoundError: {compat.MISSING_RAY}"
    assert "Python 3.11" in compat.MISSING_RAY and "run_recbole command" in compat.MISSING_RAY


def test_the_citation_file_names_this_version_and_every_model_paper():
    tomllib = pytest.importorskip("tomllib")
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["version"] == pyproject["project"]["version"]
    assert citation["license"] == pyproject["project"]["license"]["text"]
    titles = " ".join(reference["title"] for reference in citation["references"])
    for name in ("OneRanker", "GPR", "OneRec", "Sequential Transducers", "RecBole"):
        assert name in titles
