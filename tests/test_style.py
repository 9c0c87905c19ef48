"""The code style the project holds itself to: ruff format and lint everywhere, mypy on the pure-PyTorch layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ["recbole_oneranker", "tests", "bench", "tuning"]
TYPED = ["recbole_oneranker/model/layers", "recbole_oneranker/model/tokenizers", "recbole_oneranker/threads.py"]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True)


def test_ruff_lint():
    result = _run("ruff", "check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = _run("ruff", "format", "--check", *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pure_layers_type_check():
    result = _run("mypy", "--ignore-missing-imports", "--no-error-summary", *TYPED)
    assert result.returncode == 0, result.stdout + result.stderr
