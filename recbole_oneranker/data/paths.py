"""Where the real data sets live.

The public data used by tests and benchmarks is never copied into this repository (most licences forbid
redistribution). It is read from a folder of raw downloads, by default ``../shared/datasets`` next to the
repository checkout, or from wherever ``RECBOLE_ONERANKER_DATA`` points.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "RECBOLE_ONERANKER_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_datasets_dir() -> Path:
    """The folder of raw public data sets: ``$RECBOLE_ONERANKER_DATA`` or ``<repo>/../shared/datasets``."""
    override = os.environ.get(DATA_ENV_VAR)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "datasets"


def raw_dataset_dir(folder: str) -> Path:
    """The folder of one raw data set, e.g. ``raw_dataset_dir("amazon-s3rec")`` (it may not exist)."""
    return shared_datasets_dir() / folder
