"""The rules a configuration must meet before anything trains: one table, checked in two passes.

:data:`RULES` maps each checked key to its :class:`Check` (a type and a range; a bound may be the dataset's item
count). ``Config`` applies :func:`check_config` once it is built, and the run applies :func:`check_dataset_rules`
once the dataset is loaded and ``n_items`` is known, both before training starts: a value that cannot mean
anything (``--epochs=0``, ``--num_negatives=0``, ``--train_batch_size=1.5``) fails in one line instead of
training a useless model, or failing after training and losing the result.

``n_items`` in a bound is the number of real items (RecBole's ``item_num`` less the padding id 0).

Keys of this package's ``properties/`` are each covered: by a rule, by being a flag (a key whose default is
True/False takes only True/False: RecBole keeps ``--use_step2=maybe`` as the truthy string 'maybe'), or by
:data:`FREE_KEYS`, which names the keys left free here and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recbole_oneranker.errors import ConfigError, shorten


@dataclass(frozen=True)
class ItemsMinus:
    """A bound that depends on the dataset: ``n_items - offset``."""

    offset: int

    def resolve(self, n_items: int) -> int:
        return n_items - self.offset

    def describe(self, n_items: int | None) -> str:
        text = f"n_items - {self.offset}" if self.offset else "n_items"
        return text if n_items is None else f"{text} = {self.resolve(n_items)}"


Bound = int | float | ItemsMinus | None


@dataclass(frozen=True)
class Check:
    """A value's type and range.

    Attributes:
        kind: ``int`` (bools refused), ``float`` (ints accepted), ``str``, ``list`` or ``None`` (any type).
        low, high: inclusive bounds (None: unbounded); an :class:`ItemsMinus` bound waits for the dataset.
        low_open: ``low`` itself is refused (``learning_rate > 0``).
        high_open: ``high`` itself is refused (``dropout_prob < 1``).
        choices: the allowed values (strings compared in lower case).
        optional: None is allowed (``~`` in yaml: the feature is off).
        why: the reason, added to the message where the range alone does not tell it.
    """

    kind: type | None = None
    low: Bound = None
    high: Bound = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    why: str = ""

    @property
    def needs_dataset(self) -> bool:
        return isinstance(self.low, ItemsMinus) or isinstance(self.high, ItemsMinus)

    def holds(self, value: Any, n_items: int | None) -> bool:
        """Whether ``value`` passes; a bound on ``n_items`` holds by default while ``n_items`` is None."""
        if value is None:
            return self.optional
        if not self._has_kind(value):
            return False
        if self.choices is not None:
            return _lowered(value) in {_lowered(choice) for choice in self.choices}
        return self._within(value, self.low, n_items, below=False) and self._within(value, self.high, n_items, True)

    def _has_kind(self, value: Any) -> bool:
        if self.kind is None:
            return True
        if isinstance(value, bool):
            return self.kind is bool
        if self.kind is float:
            return isinstance(value, (int, float)) and math.isfinite(value)
        return isinstance(value, self.kind)

    def _within(self, value: Any, bound: Bound, n_items: int | None, below: bool) -> bool:
        if isinstance(bound, ItemsMinus):
            if n_items is None:
                return True
            bound = bound.resolve(n_items)
        if bound is None:
            return True
        is_open = self.high_open if below else self.low_open
        if below:
            return value < bound if is_open else value <= bound
        return value > bound if is_open else value >= bound

    def describe(self, n_items: int | None) -> str:
        """What the check requires, e.g. ``an int >= 1`` or ``an int in [2, n_items - 1 = 1681]``."""
        kind = {int: "an int", float: "a number", str: "a string", list: "a list", bool: "True or False"}
        text = kind.get(self.kind, "a value")  # type: ignore[arg-type]
        if self.choices is not None and len(self.choices) == 1:
            return str(self.choices[0])
        if self.choices is not None:
            text = "one of " + ", ".join(str(choice) for choice in self.choices)
        elif self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text += f" in {left}{_bound_text(self.low, n_items)}, {_bound_text(self.high, n_items)}{right}"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_bound_text(self.low, n_items)}"
        elif self.high is not None:
            text += f" {'<' if self.high_open else '<='} {_bound_text(self.high, n_items)}"
        return text + (" or ~ (off)" if self.optional and self.choices is None else "")


def _bound_text(bound: Bound, n_items: int | None) -> str:
    return bound.describe(n_items) if isinstance(bound, ItemsMinus) else str(bound)


def _lowered(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


POSITIVE_INT = Check(int, low=1)
COUNT = Check(int, low=0)
WEIGHT = Check(float, low=0)
POSITIVE = Check(float, low=0, low_open=True)
PROBABILITY = Check(float, low=0, high=1, high_open=True)
PICKLE_CACHE = (
    "RecBole's dataset and dataloader caches are pickles, which run code when read; this package neither writes "
    "nor reads them; see docs/security.md"
)

# key -> (check, whether only models whose yaml (properties/model/) defines the key are checked). Generic names such
# as gamma or alpha mean other things in RecBole's models, so a model's own keys are checked for its own runs only.
RULES: dict[str, tuple[Check, bool]] = {
    # training, any model
    "epochs": (POSITIVE_INT, False),
    "train_batch_size": (POSITIVE_INT, False),
    "eval_batch_size": (POSITIVE_INT, False),
    "learning_rate": (POSITIVE, False),
    "weight_decay": (WEIGHT, False),
    "learner": (Check(str, choices=("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"),
                      why="RecBole silently trains with adam on any other name"), False),
    "adam_betas": (Check(list, optional=True), False),
    "stopping_step": (COUNT, False),
    "hidden_size": (POSITIVE_INT, False),
    "n_heads": (POSITIVE_INT, False),
    "dropout_prob": (PROBABILITY, False),
    "attn_dropout_prob": (PROBABILITY, False),
    "MAX_ITEM_LIST_LENGTH": (POSITIVE_INT, False),
    # run files
    "run_id": (Check(str, optional=True), False),
    "log_dir": (Check(str), False),
    "checkpoint_dir": (Check(str), False),
    "save_dataset": (Check(bool, choices=(False,), why=PICKLE_CACHE), False),
    "save_dataloaders": (Check(bool, choices=(False,), why=PICKLE_CACHE), False),
    "dataset_save_path": (Check(choices=(None,), optional=True, why=PICKLE_CACHE), False),
    "dataloaders_save_path": (Check(choices=(None,), optional=True, why=PICKLE_CACHE), False),
    # evaluation protocols
    "candidate_negatives": (Check(int, low=0, high=ItemsMinus(1), optional=True,
                                  why="negatives are drawn among the items other than the target"), False),
    "candidate_sampling": (Check(str, choices=("uniform", "popularity")), False),
    "cascade_fields": (Check(list), False),
    # the HSTU backbone (HSTU and the models that extend it)
    "n_layers": (POSITIVE_INT, True),
    "attention_dim": (POSITIVE_INT, True),
    "linear_hidden_dim": (POSITIVE_INT, True),
    "relative_bias": (Check(str, choices=("time_and_position", "position", "none")), True),
    "num_time_buckets": (POSITIVE_INT, True),
    "loss_type": (Check(str, choices=("sampled_softmax", "full_softmax")), True),
    "num_negatives": (Check(int, low=1, why="0 negatives give a loss of 0 that trains nothing"), True),
    "temperature": (POSITIVE, True),
    "length_bucket_size": (COUNT, True),
    # OneRanker
    "user_token_fields": (Check(list), True),
    "n_gen_heads": (POSITIVE_INT, True),
    "n_fake_items": (Check(int, low=0, high=ItemsMinus(1), why="k-means centroids of the items; 0 = none"), True),
    "fake_refresh_epochs": (COUNT, True),
    "task_decoder_layers": (POSITIVE_INT, True),
    "decoder_heads": (POSITIVE_INT, True),
    "num_candidates": (Check(int, low=2, high=ItemsMinus(1)), True),
    "rank_decoder_layers": (POSITIVE_INT, True),
    "decoder_positions": (POSITIVE_INT, True),
    "alpha": (WEIGHT, True),
    "beta": (WEIGHT, True),
    "gamma": (WEIGHT, True),
    "dc_temperature": (POSITIVE, True),
}  # fmt: skip

# Keys of properties/ with no rule here, and what checks them instead.
FREE_KEYS = {
    "cascade_from": "a column name; the dataset checks that the column exists and is numeric",
    "cascade_thresholds": "the dataset checks one non-decreasing threshold per cascade field",
    "value_field": "a column name; the dataset checks that it is a float column",
    "value_note": "free text, printed with results",
    "task_order": "OneRanker checks that it is a permutation of the dataset's tasks",
    "train_neg_sample_args": "RecBole validates its distribution and sample count",
}


def check_config(values: Mapping[str, Any], defaults: Mapping[str, Any], model_keys: set[str]) -> None:
    """Check every rule that does not need the dataset, and that flags (keys whose default in ``defaults`` is
    True/False) are True or False.

    Args:
        values: the final configuration.
        defaults: the values of the yaml layers (RecBole's and this package's), before user overrides.
        model_keys: the keys the model's own yaml chain defines (its model-only rules apply).

    Raises:
        ConfigError: one line naming the first key that breaks its rule, the rule and the value.
    """
    for key, default in defaults.items():
        if isinstance(default, bool) and not isinstance(values.get(key), bool):
            raise ConfigError(f"'{key}' must be True or False, got {shorten(repr(values.get(key)))}")
    _check_rules(values, model_keys, n_items=None)


def check_dataset_rules(values: Mapping[str, Any], model_keys: set[str], n_items: int) -> None:
    """Check the rules bounded by the dataset's ``n_items`` (real items, padding excluded).

    Raises:
        ConfigError: as :func:`check_config`.
    """
    _check_rules(values, model_keys, n_items=n_items)


def _check_rules(values: Mapping[str, Any], model_keys: set[str], n_items: int | None) -> None:
    for key, (check, model_only) in RULES.items():
        if key not in values or (model_only and key not in model_keys):
            continue
        if n_items is not None and not check.needs_dataset:
            continue  # checked in the first pass
        if not check.holds(values[key], n_items):
            reasons = [check.why] if check.why else []
            if check.needs_dataset and n_items is not None:
                reasons.append(f"the dataset has {n_items} items")
            why = f" ({'; '.join(reasons)})" if reasons else ""
            raise ConfigError(f"'{key}' must be {check.describe(n_items)}, got {shorten(repr(values[key]))}{why}")
