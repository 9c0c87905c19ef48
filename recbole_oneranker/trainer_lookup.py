"""Trainer lookup: which trainer class a model trains with (kept beside :mod:`recbole_oneranker.trainer`, apart
from the model lookup of :mod:`recbole_oneranker.registry`)."""

from __future__ import annotations

from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_oneranker import trainer


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """The trainer for a model, with this package's run safety (safe checkpoints, per-run paths, ...).

    A model trains with RecBole's special trainer where RecBole has one (``NCLTrainer``, ``KGTrainer``, ...),
    with :class:`recbole_oneranker.trainer.RunSafetyMixin` mixed in; every other model, plugin or built-in, uses
    :class:`recbole_oneranker.trainer.Trainer`, so all rows of a comparison share checkpoint and evaluation code.
    """
    plugin_trainer = getattr(trainer, f"{model_name}Trainer", None)
    if plugin_trainer is not None:
        return plugin_trainer
    recbole_trainer = recbole_get_trainer(model_type, model_name)
    if recbole_trainer is RecBoleTrainer:
        return trainer.Trainer
    return trainer.with_run_safety(recbole_trainer)
