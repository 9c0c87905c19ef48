"""``Config``: RecBole's configuration with this package's models, defaults and dataset configs layered in.

Priority, lowest first (RecBole's own order, with the plugin layers right after RecBole's internal ones):

1. RecBole's internal yaml: ``overall.yaml``, ``model/<Model>.yaml``, ``dataset/<dataset>.yaml``, the
   quick-start yaml of the model type;
2. this package's ``properties/overall.yaml``, ``properties/model/<Model>.yaml`` and
   ``dataset_configs/<dataset>.yaml``; with ``stage: align``, then ``properties/align.yaml``; with ``stage: finetune``
   or ``align``, then the settings of the run that trained ``from_checkpoint`` (docs/alignment.md);
3. the user's config files, then ``config_dict``, then ``--key=value`` arguments.

Unlike RecBole's, this ``Config`` reads ``--key=value`` arguments only from ``cmd_args`` (the CLI passes them),
never from ``sys.argv``, so a test runner's or a tuning script's own flags cannot leak into a run. It also
rejects keys that no layer defines (a typo would otherwise be silently ignored), values that break the rules of
:mod:`~recbole_oneranker.config_rules` (types, ranges; the dataset-bounded ones once the dataset is loaded) and a
dataset with no files.
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import recbole
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType
from recbole.utils.argument_list import (
    dataset_arguments,
    evaluation_arguments,
    general_arguments,
    training_arguments,
)

from recbole_oneranker import compat, config_rules, distributed
from recbole_oneranker.errors import ConfigError, UnknownModelError, shorten
from recbole_oneranker.overrides import parse_assignments
from recbole_oneranker.registry import get_model
from recbole_oneranker.resources import resource_dir

RECBOLE_PROPERTIES_DIR = Path(recbole.__file__).resolve().parent / "properties"
EMBEDDED_DATASET = "ml-100k"

# Keys RecBole sets at run time or reads from code without a yaml default.
RUNTIME_KEYS = frozenset(
    {
        "model", "dataset", "config_files", "run_id", "local_rank", "nproc", "world_size", "ip", "port",
        "offset", "single_spec", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type",
        "valid_neg_sample_args", "test_neg_sample_args", "valid_metric_bigger", "verbose",
    }
)  # fmt: skip


# Keys of a saved config that belong to the run or the machine, not to the model and its data: a reloaded checkpoint
# takes them from where it is loaded (RecBole derives RUNTIME_KEYS itself).
RUN_KEYS = frozenset(
    {"data_path", "run_id", "resume_training", "checkpoint_dir", "log_dir", "state", "show_progress", "gpu_id",
     "use_gpu", "worker", "compile_model", "threads"}
)  # fmt: skip
ALIGN_STAGE = "align"
FINETUNE_STAGE = "finetune"
CHECKPOINT_STAGES = (FINETUNE_STAGE, ALIGN_STAGE)  # the stages that start from from_checkpoint


def properties_dir() -> Path:
    return resource_dir("properties")


def stage_layer() -> Path:
    """``properties/align.yaml``: the defaults of the alignment stage, layered only when ``stage: align``."""
    return properties_dir() / "align.yaml"


@cache
def stage_keys() -> frozenset[str]:
    """``stage``, ``from_checkpoint`` and the alignment stage's keys: they belong to one run and are never taken
    from a checkpoint."""
    return frozenset({"stage", "from_checkpoint", *read_yaml_layer(stage_layer())})


def saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """The settings of a checkpoint's saved config (``compat.checkpoint_state``) that rebuild its model and data:
    every known key but those of the run, the machine and the stage (:data:`RUN_KEYS`, :func:`stage_keys`)."""
    kept = known_keys() - RUNTIME_KEYS - RUN_KEYS - stage_keys()
    settings = {key: value for key, value in saved.items() if key in kept}
    if (settings.get("train_neg_sample_args") or {}).get("distribution") == "none":
        settings["train_neg_sample_args"] = None  # RecBole's processed form of None, which it does not read back
    return settings


def dataset_configs_dir() -> Path:
    return resource_dir("dataset_configs")


# A model yaml may name the model yaml whose keys it inherits (``extends: HSTU``); the key itself is no setting.
EXTENDS_KEY = "extends"


def read_yaml_layer(path: Path) -> dict[str, Any]:
    """The settings of one yaml layer (``extends`` left out)."""
    content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    return {key: value for key, value in content.items() if key != EXTENDS_KEY}


def model_layers(model: str) -> list[Path]:
    """``properties/model/<model>.yaml`` and the model yamls it ``extends``, the most basic first ([] for a model
    without one, e.g. RecBole's)."""
    chain: list[Path] = []
    name: str | None = model
    while name is not None:
        path = properties_dir() / "model" / f"{name}.yaml"
        if not path.is_file():
            if chain:
                raise ConfigError(f"{chain[0]} extends '{name}', which has no {path}")
            return []
        if path in chain:
            raise ConfigError(f"{path} extends itself through {', '.join(p.stem for p in chain)}")
        chain.insert(0, path)
        name = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(EXTENDS_KEY)
    return chain


def package_layers(model: str, dataset: str) -> list[Path]:
    """This package's default files for a run, lowest priority first: ``properties/overall.yaml``, the model's
    yaml chain (:func:`model_layers`) and ``dataset_configs/<dataset>.yaml`` (which need not exist)."""
    return [
        properties_dir() / "overall.yaml",
        *model_layers(model),
        dataset_configs_dir() / f"{dataset}.yaml",
    ]


def package_defaults(model: str, dataset: str) -> dict[str, Any]:
    """The package's defaults a run of ``model`` on ``dataset`` starts from, merged as ``Config`` layers them
    (RecBole's own defaults are frozen at 1.2.1)."""
    merged: dict[str, Any] = {}
    for path in package_layers(model, dataset):
        if path.is_file():
            merged.update(read_yaml_layer(path))
    return merged


def _yaml_keys(files: Iterable[Path]) -> set[str]:
    keys: set[str] = set()
    for file in files:
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
        if isinstance(content, dict):
            keys.update(content)
    return keys


@cache
def known_keys() -> frozenset[str]:
    """Every key some layer defines: RecBole's yaml files and argument lists, and this package's yaml files."""
    yaml_files = [
        *RECBOLE_PROPERTIES_DIR.rglob("*.yaml"),
        *properties_dir().rglob("*.yaml"),
        *dataset_configs_dir().glob("*.yaml"),
    ]
    argument_lists = general_arguments + training_arguments + evaluation_arguments + dataset_arguments
    return frozenset((_yaml_keys(yaml_files) - {EXTENDS_KEY}) | set(argument_lists) | RUNTIME_KEYS)


def check_keys(config: dict[str, Any], source: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``config`` that no layer defines."""
    for key in config:
        if key not in known_keys():
            close = difflib.get_close_matches(key, sorted(known_keys()), n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown config key '{key}' in {source}{hint} "
                f"(defaults live in properties/ and dataset_configs/ of recbole_oneranker and in RecBole's properties/)"
            )


def checkpoint_config(path: str, key: str) -> dict[str, Any]:
    """The saved config of a checkpoint this package trained (``compat.checkpoint_state``), named by config ``key``.

    Raises:
        ConfigError: a missing file, or one that is not such a checkpoint (e.g. RecBole's own, pickled).
    """
    if not Path(path).is_file():
        raise ConfigError(f"{key}: no checkpoint at {path}")
    try:
        checkpoint = compat.load_checkpoint(path, "cpu")
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{key}: {path} is not a checkpoint of this package ({shorten(reason)})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise ConfigError(f"{key}: {path} holds no saved config: not a checkpoint of this package")
    return checkpoint["config"]


def available_datasets(data_path: str | Path) -> list[str]:
    """Dataset names under ``data_path`` (folders holding ``<name>/<name>.inter``), plus the embedded one."""
    root = Path(data_path)
    found = [p.name for p in root.iterdir() if (p / f"{p.name}.inter").is_file()] if root.is_dir() else []
    return sorted({EMBEDDED_DATASET, *found})


class Config(RecBoleConfig):
    """RecBole's ``Config`` for plugin and built-in models alike.

    Args:
        model: a model name (plugin or RecBole) or class; taken from the external config when None.
        dataset: a dataset name; the embedded ``ml-100k`` when None and no external config names one.
        config_file_list: yaml files, later ones overriding earlier ones.
        config_dict: a dict of overrides.
        cmd_args: ``--key=value`` strings, the highest priority (RecBole's parsing: values are Python literals).
    """

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: list[str] | None = None,
        config_dict: dict[str, Any] | None = None,
        cmd_args: Iterable[str] = (),
    ):
        self._cmd_args = list(cmd_args)
        try:
            super().__init__(model, dataset, config_file_list, config_dict)
        except (ConfigError, UnknownModelError):
            raise
        except (ValueError, TypeError, KeyError, NotImplementedError, FileNotFoundError, yaml.YAMLError) as error:
            # RecBole validates while it builds the config; its messages are good but its types are generic.
            raise ConfigError(f"invalid configuration: {error}") from error
        config_rules.check_config(self.final_config_dict, self.internal_config_dict, self.model_keys())
        if self["stage"] == ALIGN_STAGE:
            self._set_stage_schedule()
        else:
            self._refuse_stage_keys()
        self._check_valid_metric()
        self._check_dataset_files()

    def model_keys(self) -> set[str]:
        """The keys the model's own yaml chain defines (``properties/model/``): its model-only rules apply."""
        return {key for path in model_layers(self.model) for key in read_yaml_layer(path)}

    def check_dataset_rules(self, n_items: int) -> None:
        """The rules bounded by the dataset's item count (``n_items``: real items, padding excluded), checked
        once the dataset is loaded and before training (:mod:`~recbole_oneranker.config_rules`)."""
        config_rules.check_dataset_rules(self.final_config_dict, self.model_keys(), n_items)

    def _load_cmd_line(self) -> dict[str, Any]:
        return parse_assignments(self._cmd_args, "argument", prefix="--")

    def _convert_config_dict(self, config_dict: dict[str, Any]) -> dict[str, Any]:
        return compat.convert_config_strings(config_dict)

    def _merge_external_config_dict(self) -> None:
        check_keys(self.file_config_dict, "the config files")
        check_keys(self.variable_config_dict, "config_dict")
        check_keys(self.cmd_config_dict, "the command line")
        super()._merge_external_config_dict()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("no model given: pass --model=NAME (e.g. --model=SASRec)")
        if isinstance(model, str):
            model = get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset", EMBEDDED_DATASET)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        overall_file, *model_files, dataset_file = package_layers(model, dataset)
        self._update_internal_config_dict(overall_file)
        for model_file in model_files:
            self._update_internal_config_dict(model_file)
            self.internal_config_dict.pop(EXTENDS_KEY, None)
        if dataset_file.is_file():
            dataset_keys = self._update_internal_config_dict(dataset_file) or {}
            self.parameters["Dataset"] += [key for key in dataset_keys if key not in self.parameters["Dataset"]]
        stage = self.external_config_dict.get("stage")
        if stage == ALIGN_STAGE:
            self._update_internal_config_dict(stage_layer())
        if stage in CHECKPOINT_STAGES:
            self.internal_config_dict.update(self._starting_checkpoint_settings(model, dataset, stage))

    def _starting_checkpoint_settings(self, model: str, dataset: str, stage: str) -> dict[str, Any]:
        """The settings of the run that trained ``from_checkpoint``: the stage's defaults, so the model is built in
        the checkpoint's shape, on its data, under its protocol.

        Raises:
            ConfigError: no ``from_checkpoint``, a file that is not this package's checkpoint, or one of another
                model or dataset.
        """
        path = self.external_config_dict.get("from_checkpoint")
        if not path:
            raise ConfigError(f"stage: {stage} needs from_checkpoint, the trained checkpoint the run starts from")
        saved = checkpoint_config(path, "from_checkpoint")
        if (saved.get("model"), saved.get("dataset")) != (model, dataset):
            raise ConfigError(
                f"from_checkpoint {path} is a {saved.get('model')} on {saved.get('dataset')}, "
                f"not a {model} on {dataset}"
            )
        return saved_settings(saved)

    def _refuse_stage_keys(self) -> None:
        """A key of ``properties/align.yaml`` outside ``stage: align``, or ``from_checkpoint`` outside the stages that
        start from it, would be silently ignored: refuse it."""
        stage = self.external_config_dict.get("stage")
        if "from_checkpoint" in self.external_config_dict and stage not in CHECKPOINT_STAGES:
            raise ConfigError(
                "from_checkpoint is read by --stage=finetune (training continued from its weights) or --stage=align"
            )
        given = sorted((stage_keys() - {"stage", "from_checkpoint"}) & set(self.external_config_dict))
        if given:
            raise ConfigError(f"{given[0]} is a key of the alignment stage: add --stage=align (docs/alignment.md)")

    def _set_stage_schedule(self) -> None:
        """The alignment stage trains ``align_iterations`` x ``align_epochs`` epochs at ``align_learning_rate``: they
        replace ``epochs`` and ``learning_rate``, which the stage refuses (they would be silently replaced)."""
        for key, stage_key in (("epochs", "align_epochs"), ("learning_rate", "align_learning_rate")):
            if key in self.external_config_dict:
                raise ConfigError(f"stage: align trains by {stage_key} (and align_iterations): leave {key} out")
        self["epochs"] = self["align_iterations"] * self["align_epochs"]
        self["learning_rate"] = self["align_learning_rate"]

    def _init_device(self) -> None:
        super()._init_device()
        place = distributed.place_from_environment()
        if place is None:
            compat.honour_use_gpu(self.final_config_dict)
        else:
            compat.distributed_device(self.final_config_dict, place)

    def _get_final_config_dict(self) -> dict[str, Any]:
        final_config = super()._get_final_config_dict()
        if final_config.get("MODEL_TYPE") == ModelType.SEQUENTIAL:
            compat.default_negatives_for_ce(final_config, self.external_config_dict)
        if not final_config.get("run_id"):
            if final_config.get("resume_training"):
                raise ConfigError(
                    "resume_training needs a fixed run_id (the snapshot is <checkpoint_dir>/<run_id>-resume.pth)"
                )
            final_config["run_id"] = compat.unique_run_id(self.model, self.dataset)
        return final_config

    def _check_valid_metric(self) -> None:
        """RecBole only finds out after the first training epoch that ``valid_metric`` is not computed."""
        name, _, k = str(self["valid_metric"]).lower().partition("@")
        metrics = [metric.lower() for metric in self["metrics"]]
        computed = name in metrics and (not k or (k.isdigit() and int(k) in self["topk"]))
        if not computed:
            raise ConfigError(
                f"valid_metric '{self['valid_metric']}' is not computed: metrics are {self['metrics']} "
                f"at topk {self['topk']}; add it to metrics/topk or pick one of them"
            )

    def _check_dataset_files(self) -> None:
        if self.dataset == EMBEDDED_DATASET or self["benchmark_filename"]:
            return
        data_dir = Path(self["data_path"])
        if not (data_dir / f"{self.dataset}.inter").is_file():
            parent = data_dir.parent
            raise ConfigError(
                f"dataset '{self.dataset}' not found: no file {data_dir / (self.dataset + '.inter')}; "
                f"available under {parent}: {', '.join(available_datasets(parent))} "
                f"(set --data_path=DIR, or convert raw data with 'python -m recbole_oneranker.data.convert')"
            )
