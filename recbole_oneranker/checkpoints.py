"""``load_data_and_model``: a trained model, its config and its data, rebuilt from a checkpoint this package saved;
``start_from_checkpoint``: a checkpoint's weights loaded into a model of its shape (the stages that start from one).

Kept apart from :mod:`~recbole_oneranker.quick_start` so that what runs inside a run (the alignment stage loads its
reward model this way) can use it without importing the run's own flow.
"""

from __future__ import annotations

import os
from typing import Any

from recbole.utils import init_seed
from torch import nn

from recbole_oneranker import compat
from recbole_oneranker.config import Config, saved_settings
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.registry import get_model


def load_data_and_model(
    model_file: str | os.PathLike[str], data_path: str | None = None, config_dict: dict[str, Any] | None = None
):
    """Rebuild the config, data splits and trained model of a checkpoint this package's trainer saved.

    RecBole's own ``load_data_and_model`` unpickles a ``Config`` object; this package's checkpoints hold the
    config as plain values (``compat.checkpoint_state``), from which the same config is built again
    (:func:`~recbole_oneranker.config.saved_settings`).

    Args:
        model_file: a checkpoint (``saved/<run_id>.pth``).
        data_path: the folder holding ``<dataset>/``; the one the checkpoint was trained from when None.
        config_dict: overrides of the saved settings (e.g. ``eval_batch_size``).

    Returns:
        ``(config, model, dataset, train_data, valid_data, test_data)`` as RecBole's returns them: the model in eval
        mode on ``config["device"]``, the whole dataset (e.g. the item popularity sampled evaluation draws by) and
        the loaders of its splits.
    """
    checkpoint = compat.load_checkpoint(model_file, "cpu")
    saved = checkpoint["config"]
    settings = saved_settings(saved)
    settings["data_path"] = data_path or os.path.dirname(os.path.normpath(saved["data_path"]))
    settings.update({"show_progress": False, "state": "ERROR", **(config_dict or {})})
    config = Config(saved["model"], saved["dataset"], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model.to(config["device"]).eval(), dataset, train_data, valid_data, test_data


def start_from_checkpoint(model: nn.Module, path: str) -> None:
    """Load ``path``'s weights into ``model``, which must have exactly its shape.

    Raises:
        ConfigError: a parameter the checkpoint lacks, has in excess or holds in another shape.
    """
    checkpoint = compat.load_checkpoint(path, "cpu")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        reason = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ConfigError(f"from_checkpoint {path} does not fit this model: {reason}") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))
