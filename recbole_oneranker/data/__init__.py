"""Data: the sequential dataset with cascades and whole sequences, strict atomic-file checks, converters, and where
raw data lives."""

from __future__ import annotations

from recbole_oneranker.data.atomic_files import AtomicFileError
from recbole_oneranker.data.dataset import DatasetConfigError, SequentialDataset, items_held
from recbole_oneranker.data.loading import create_dataset, data_preparation

__all__ = [
    "AtomicFileError",
    "DatasetConfigError",
    "SequentialDataset",
    "create_dataset",
    "data_preparation",
    "items_held",
]
