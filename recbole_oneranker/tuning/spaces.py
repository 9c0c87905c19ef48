"""Search spaces: ``tuning/spaces/<Model>.yaml`` files, each config key with an Optuna distribution.

learning_rate: {type: float, low: 3.0e-4, high: 5.0e-3, log: true}
task_order: {type: categorical, choices: task_permutations}   # every order of the dataset's tasks
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from recbole_oneranker.config import Config, known_keys
from recbole_oneranker.model.sequential_recommender.oneranker import task_names
from recbole_oneranker.resources import resource_dir
from recbole_oneranker.tuning.storage import UsageError

SPACES_DIR = resource_dir("tuning/spaces")
TASK_PERMUTATIONS = "task_permutations"  # `choices:` value of a space file: every order of the dataset's tasks
ORDER_SEPARATOR = ">"


def load_space(model: str, spaces_dir: Path) -> dict[str, dict[str, Any]]:
    """The raw specs of ``<spaces_dir>/<model>.yaml``, every key checked against the known config keys."""
    path = spaces_dir / f"{model}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in spaces_dir.glob("*.yaml"))) or "none"
        raise UsageError(f"no search space for model '{model}' (no file {path}); spaces exist for: {available}")
    try:
        space = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UsageError(f"cannot read {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(space, dict) or not space:
        raise UsageError(f"{path}: expected a mapping of config keys to parameter specs")
    for key, spec in space.items():
        if key not in known_keys():
            close = difflib.get_close_matches(str(key), sorted(known_keys()), n=3, cutoff=0.75)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise UsageError(f"{path}: '{key}' is not a config key{hint}")
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise UsageError(f"{path}: '{key}' needs a mapping with type: float, int or categorical")
    return space


def dataset_tasks(config: Config) -> list[str]:
    """OneRanker's step-2 tasks of the dataset: its cascade (interest to value), then ``value`` if it has a value."""
    return task_names(config["cascade_fields"] or [], config["value_field"])


def task_permutations(tasks: list[str]) -> list[str]:
    """Every order of ``tasks`` as a string (``click>conversion>value``): Optuna categoricals hold plain values."""
    return [ORDER_SEPARATOR.join(order) for order in itertools.permutations(tasks)]


def to_distribution(name: str, spec: dict[str, Any], tasks: list[str], path: Path) -> BaseDistribution:
    """One space entry as an Optuna distribution (which checks low/high/step/log)."""
    try:
        if spec["type"] == "categorical":
            choices = spec.get("choices")
            if choices == TASK_PERMUTATIONS:
                choices = task_permutations(tasks)
            if not isinstance(choices, list) or not choices:
                raise ValueError("categorical needs a non-empty list of choices")
            if not all(choice is None or isinstance(choice, (str, int, float, bool)) for choice in choices):
                raise ValueError("choices must be plain values (str, int, float, bool, null)")
            return CategoricalDistribution(choices)
        log = bool(spec.get("log", False))
        if spec["type"] == "int":
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=log, step=int(spec.get("step", 1)))
        step = spec.get("step")
        return FloatDistribution(
            float(spec["low"]), float(spec["high"]), log=log, step=None if step is None else float(step)
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{path}: parameter '{name}': {error}") from error


def suggest(trial: Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def params_to_config(params: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Trial parameters as config values: task orders back to lists."""
    return {
        name: value.split(ORDER_SEPARATOR) if space[name].get("choices") == TASK_PERMUTATIONS else value
        for name, value in params.items()
    }
