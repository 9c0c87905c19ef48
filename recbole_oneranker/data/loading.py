"""The dataset and loaders of a run, built from the atomic files every time: no cached pickle is ever read.

RecBole's ``create_dataset`` unpickles ``<checkpoint_dir>/<dataset>-<DatasetClass>.pth`` and its
``data_preparation`` unpickles ``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth`` whenever the file exists,
whatever ``save_dataset`` and ``save_dataloaders`` say; a pickle runs any code it names when it is read, so a file
dropped into ``saved/`` would run inside every later run. The two functions here build the same objects from the
atomic files without looking for either file (and the config rules refuse ``save_dataset`` and
``save_dataloaders``, so nothing writes them either; see ``docs/security.md``).
"""

from __future__ import annotations

from logging import getLogger

from recbole.data import dataset as recbole_datasets
from recbole.data.utils import create_samplers, get_dataloader
from recbole.sampler import KGSampler
from recbole.utils import ModelType

from recbole_oneranker.data.atomic_files import check_atomic_files
from recbole_oneranker.data.dataset import DatasetConfigError, SequentialDataset
from recbole_oneranker.log_records import LOG_FILE_ONLY

# RecBole's dataset class of a non-sequential model type whose class is not plain Dataset (recbole.data.utils).
_RECBOLE_DATASET_CLASSES = {ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}


def create_dataset(config):
    """The dataset for a run, from its atomic files (checked first: :func:`check_atomic_files`).

    Sequential models get this package's :class:`SequentialDataset`: built-in ones (SASRec, BERT4Rec, ...) get the
    same rows from it as from RecBole's own class (it only builds them faster), plus cascade and value columns, so
    every model of a comparison sees the same data. A model with a dataset class of its own in RecBole (DIEN, KSR,
    ...) keeps it; other models get RecBole's class for their type.
    """
    check_atomic_files(config)
    own_class = getattr(recbole_datasets, f"{config['model']}Dataset", None)  # e.g. DIEN, KSR
    if own_class is not None:
        return own_class(config)
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        return SequentialDataset(config)
    return getattr(recbole_datasets, _RECBOLE_DATASET_CLASSES.get(config["MODEL_TYPE"], "Dataset"))(config)


def data_preparation(config, dataset):
    """``(train, valid, test)`` loaders of ``dataset``'s split, as RecBole's ``data_preparation`` builds them when
    it finds no cached loaders."""
    built = dataset.build()
    check_splits(config, built)
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    train_dataset, valid_dataset, test_dataset = built
    train_loader = get_dataloader(config, "train")
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        negatives = config["train_neg_sample_args"]
        kg_sampler = KGSampler(dataset, negatives["distribution"], negatives["alpha"])
        train_data = train_loader(config, train_dataset, train_sampler, kg_sampler, shuffle=True)
    else:
        train_data = train_loader(config, train_dataset, train_sampler, shuffle=config["shuffle"])
    valid_data = get_dataloader(config, "valid")(config, valid_dataset, valid_sampler, shuffle=False)
    test_data = get_dataloader(config, "test")(config, test_dataset, test_sampler, shuffle=False)
    getLogger().info(
        f"[Training]: train_batch_size = [{config['train_batch_size']}] "
        f"train_neg_sample_args: [{config['train_neg_sample_args']}]",
        extra=LOG_FILE_ONLY,
    )
    getLogger().info(
        f"[Evaluation]: eval_batch_size = [{config['eval_batch_size']}] eval_args: [{config['eval_args']}]",
        extra=LOG_FILE_ONLY,
    )
    return train_data, valid_data, test_data


def check_splits(config, splits) -> None:
    """Stop before any loader is built when a split has no rows (too few interactions per user for the split, or
    filtering left nothing): RecBole would fail in torch's sampler with a message about ``num_samples``.

    Raises:
        DatasetConfigError: naming the empty split and the split in use.
    """
    for phase, split in zip(("training", "validation", "test"), splits, strict=True):
        if len(split) == 0:
            raise DatasetConfigError(
                f"the {phase} split of dataset '{config['dataset']}' is empty (eval_args.split: "
                f"{config['eval_args']['split']}): too few interactions for this split (leave-one-out needs users "
                "with at least 3)"
            )
