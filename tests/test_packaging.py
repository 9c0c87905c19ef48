"""The wheel ships properties/, dataset_configs/, bench/configs/ and tuning/spaces/ inside the package, so a
non-editable install finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

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
