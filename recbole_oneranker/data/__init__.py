"""Data: the sequential dataset with cascades and whole sequences, converters, and where raw data lives."""

from __future__ import annotations

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import dataset as recbole_datasets
from recbole.utils import ModelType

from recbole_oneranker.data.dataset import DatasetConfigError, SequentialDataset


def create_dataset(config):
    """The dataset for a run: this package's :class:`SequentialDataset` for every sequential model, else RecBole's.

    Sequential models with a dataset class of their own in RecBole (DIEN, KSR, ...) keep it.

    Built-in sequential models (SASRec, BERT4Rec, ...) get the same rows from it as from RecBole's own class (it
    only builds them faster), plus cascade and value columns; so every model of a comparison sees the same data.
    """
    has_own_dataset = hasattr(recbole_datasets, f"{config['model']}Dataset")  # e.g. DIEN, KSR
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL and not has_own_dataset:
        return SequentialDataset(config)
    return recbole_create_dataset(config)


__all__ = ["DatasetConfigError", "SequentialDataset", "create_dataset"]
