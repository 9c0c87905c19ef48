"""The rules a configuration must meet before anything trains: one table, checked in two passes.

:data:`RULES` gives each checked key its :class:`Check` (a type and a range; a bound may be the dataset's item
count) and :data:`CROSS_RULES` relate keys. ``Config`` applies :func:`check_config` once it is built, and the run
applies :func:`check_dataset_rules` once the dataset is loaded and ``n_items`` is known, both before training
starts: a value that cannot mean anything (``--epochs=0``, ``--num_negatives=0``, ``--train_batch_size=1.5``)
fails in one line instead of training a useless model, or failing after training and losing the result.

``n_items`` in a bound is the number of real items (RecBole's ``item_num`` less the padding id 0).

Keys of this package's ``properties/`` are each covered: by a rule, by being a flag (a key whose default is
True/False takes only True/False: RecBole keeps ``--use_step2=maybe`` as the truthy string 'maybe'), or by
:data:`FREE_KEYS`, which names the keys left free here and why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
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
        choices: the allowed values.
        ignore_case: strings are compared with ``choices`` in lower case (RecBole lower-cases ``learner``).
        pattern: a regular expression a string must match as a whole, and what it means (``a file name``).
        length, items: a list's length and the check each of its items passes.
        optional: None is allowed (``~`` in yaml: the feature is off).
        why: the reason, added to the message where the range alone does not tell it.
    """

    kind: type | None = None
    low: Bound = None
    high: Bound = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    ignore_case: bool = False
    pattern: tuple[str, str] | None = None
    length: int | None = None
    items: Check | None = None
    optional: bool = False
    why: str = ""

    @property
    def needs_dataset(self) -> bool:
        bounded = isinstance(self.low, ItemsMinus) or isinstance(self.high, ItemsMinus)
        return bounded or (self.items is not None and self.items.needs_dataset)

    def holds(self, value: Any, n_items: int | None) -> bool:
        """Whether ``value`` passes; a bound on ``n_items`` holds by default while ``n_items`` is None."""
        if value is None:
            return self.optional
        if not self._has_kind(value):
            return False
        if self.choices is not None:
            lowered = self.ignore_case and isinstance(value, str)
            return (value.lower() if lowered else value) in self.choices
        if self.pattern is not None and not re.fullmatch(self.pattern[0], value):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        if self.items is not None and not all(self.items.holds(item, n_items) for item in value):
            return False
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
        elif self.pattern is not None:
            text = self.pattern[1]
        elif self.items is not None:
            count = f"{self.length} " if self.length is not None else ""
            text += f" of {count}items, each {self.items.describe(n_items)}"
        return text + (" or ~ (off)" if self.optional and self.choices is None else "")


def _bound_text(bound: Bound, n_items: int | None) -> str:
    return bound.describe(n_items) if isinstance(bound, ItemsMinus) else str(bound)


# Which models a rule applies to. Generic names such as gamma or alpha mean other things in RecBole's models, so a
# model's own keys are checked for its own runs only; a few rules are RecBole's own models' constraints.
ANY = "any model"
OWN = "models whose yaml in properties/model/ defines the key"
RECBOLE = "RecBole's models (no yaml of this package)"

POSITIVE_INT = Check(int, low=1)
COUNT = Check(int, low=0)
WEIGHT = Check(float, low=0)
POSITIVE = Check(float, low=0, low_open=True)
PROBABILITY = Check(float, low=0, high=1, high_open=True)
FILE_NAME = (r"(?!\.\.?$)[^/\\\x00]+", "a file name (no folder separator, no NUL byte, not . or ..)")
PICKLE_CACHE = (
    "RecBole's dataset and dataloader caches are pickles, which run code when read; this package neither writes "
    "nor reads them; see docs/security.md"
)


@dataclass(frozen=True)
class Rule:
    """``key``'s value must pass ``check`` in runs of the models of ``scope`` (:data:`ANY`, :data:`OWN`,
    :data:`RECBOLE`)."""

    key: str
    check: Check
    scope: str = ANY


# One key may have a rule per scope: loss_type names other losses in RecBole's models than in this package's.
RULES: tuple[Rule, ...] = (
    # training, any model
    Rule("epochs", POSITIVE_INT),
    Rule("train_batch_size", POSITIVE_INT),
    Rule("eval_batch_size", POSITIVE_INT),
    Rule("learning_rate", POSITIVE),
    Rule("weight_decay", WEIGHT),
    Rule("learner", Check(str, choices=("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"), ignore_case=True,
                          why="RecBole silently trains with adam on any other name")),
    Rule("adam_betas", Check(list, length=2, items=PROBABILITY, optional=True, why="a beta of 1 divides by zero")),
    Rule("stopping_step", COUNT),
    Rule("hidden_size", POSITIVE_INT),
    Rule("n_heads", POSITIVE_INT),
    Rule("dropout_prob", PROBABILITY),
    Rule("attn_dropout_prob", PROBABILITY),
    Rule("candidate_id_dropout", PROBABILITY),
    Rule("history_id_dropout", PROBABILITY),
    Rule("MAX_ITEM_LIST_LENGTH", POSITIVE_INT),
    Rule("n_layers", POSITIVE_INT),
    Rule("topk", Check(list, items=Check(int, low=1, high=ItemsMinus(0)), why="top-K of the ranked items")),
    # run files
    Rule("run_id", Check(str, optional=True, pattern=FILE_NAME, why="it names the run's files")),
    Rule("log_dir", Check(str)),
    Rule("checkpoint_dir", Check(str)),
    Rule("save_dataset", Check(bool, choices=(False,), why=PICKLE_CACHE)),
    Rule("save_dataloaders", Check(bool, choices=(False,), why=PICKLE_CACHE)),
    Rule("dataset_save_path", Check(choices=(None,), optional=True, why=PICKLE_CACHE)),
    Rule("dataloaders_save_path", Check(choices=(None,), optional=True, why=PICKLE_CACHE)),
    # evaluation protocols
    Rule("candidate_negatives", Check(int, low=0, high=ItemsMinus(1), optional=True,
                                      why="negatives are drawn among the items other than the target")),
    Rule("candidate_sampling", Check(str, choices=("uniform", "popularity"))),
    Rule("cascade_fields", Check(list)),
    Rule("threads", Check(int, low=1, optional=True)),
    # DDP (docs/scale.md): processes on this machine, on all machines, this machine's first rank, rank 0's address
    Rule("nproc", Check(int, low=1, optional=True)),
    Rule("world_size", Check(int, low=1, optional=True)),
    Rule("offset", Check(int, low=0, optional=True)),
    Rule("ip", Check(str, optional=True)),
    Rule("port", Check(int, low=1, high=65535, optional=True)),
    # the stage, and the alignment stage's keys (properties/align.yaml, layered only with stage: align)
    Rule("stage", Check(str, choices=("train", "finetune", "align"))),
    Rule("from_checkpoint", Check(str, optional=True)),
    Rule("reward_checkpoint", Check(str, optional=True)),
    # the names of recbole_oneranker.alignment.ALIGNMENT_METHODS
    Rule("align_method", Check(str, choices=("dpo", "ipa", "hepo", "ecpo"), optional=True)),
    Rule("align_beta", POSITIVE),
    Rule("align_weight", WEIGHT),
    Rule("align_share", Check(float, low=0, high=1, low_open=True, why="the share of a batch's requests")),
    Rule("align_beam", Check(int, low=2, high=ItemsMinus(0), why="a pair or a group needs two candidates")),
    Rule("align_iterations", POSITIVE_INT),
    Rule("align_epochs", POSITIVE_INT),
    Rule("align_learning_rate", POSITIVE),
    Rule("align_reward_topk", Check(int, low=1, high=ItemsMinus(0))),
    Rule("align_clip", Check(float, low=0, high=1, low_open=True, high_open=True, why="the ratio's clip 1 - eps")),
    Rule("ecpo_early_clip", WEIGHT),
    Rule("hepo_gamma", Check(float, low=0, high=1)),
    Rule("hepo_lambda", Check(float, low=0, high=1)),
    Rule("hepo_process_weights", Check(list, items=WEIGHT, why="one alpha for all levels but the last, or one each")),
    Rule("hepo_level_weights", Check(list, items=WEIGHT, why="one c for every level, or one each")),
    Rule("hepo_value_weight", WEIGHT),
    Rule("hepo_critic_warmup", COUNT),
    Rule("hepo_critic_learning_rate", POSITIVE),
    # the HSTU backbone (HSTU and the models that extend it)
    Rule("attention_dim", POSITIVE_INT, OWN),
    Rule("linear_hidden_dim", POSITIVE_INT, OWN),
    Rule("relative_bias", Check(str, choices=("time_and_position", "position", "none")), OWN),
    Rule("num_time_buckets", POSITIVE_INT, OWN),
    Rule("loss_type", Check(str, choices=("sampled_softmax", "full_softmax")), OWN),
    Rule("num_negatives", Check(int, low=1, why="0 negatives give a loss of 0 that trains nothing"), OWN),
    Rule("temperature", POSITIVE, OWN),
    Rule("length_bucket_size", COUNT, OWN),
    Rule("item_feature_fields", Check(list), OWN),
    # OneRanker
    Rule("user_token_fields", Check(list), OWN),
    Rule("generation", Check(str, choices=("item", "sid")), OWN),
    Rule("n_gen_heads", POSITIVE_INT, OWN),
    Rule("n_fake_items", Check(int, low=0, high=ItemsMinus(1), why="k-means centroids of the items; 0 = none"), OWN),
    Rule("fake_refresh_epochs", COUNT, OWN),
    Rule("task_decoder_layers", POSITIVE_INT, OWN),
    Rule("decoder_heads", POSITIVE_INT, OWN),
    Rule("num_candidates", Check(int, low=2, high=ItemsMinus(1)), OWN),
    Rule("rank_decoder_layers", POSITIVE_INT, OWN),
    Rule("decoder_positions", POSITIVE_INT, OWN),
    Rule("alpha", WEIGHT, OWN),
    Rule("beta", WEIGHT, OWN),
    Rule("gamma", WEIGHT, OWN),
    Rule("dc_temperature", POSITIVE, OWN),
    # GPR
    Rule("attention", Check(str, choices=("softmax", "silu")), OWN),
    Rule("num_thinking_tokens", COUNT, OWN),
    Rule("thinking_layers", POSITIVE_INT, OWN),
    Rule("thinking_heads", POSITIVE_INT, OWN),
    Rule("mtp_heads", POSITIVE_INT, OWN),
    Rule("sid_scoring", Check(str, choices=("additive", "gated")), OWN),
    Rule("beam_size", POSITIVE_INT, OWN),
    Rule("vaft_action_weights", Check(list, items=WEIGHT, optional=True), OWN),
    Rule("hte_weight", WEIGHT, OWN),
    # OneRec
    Rule("positive_stages", COUNT, OWN),
    Rule("encoder_layers", POSITIVE_INT, OWN),
    Rule("encoder_inner_size", POSITIVE_INT, OWN),
    Rule("decoder_layers", POSITIVE_INT, OWN),
    Rule("session_length", POSITIVE_INT, OWN),
    Rule("num_experts", POSITIVE_INT, OWN),
    Rule("experts_per_token", POSITIVE_INT, OWN),
    Rule("expert_inner_size", POSITIVE_INT, OWN),
    Rule("balancing_rate", WEIGHT, OWN),
    # RewardModel
    Rule("reward_negatives", POSITIVE_INT, OWN),
    Rule("reward_negative_sampling", Check(str, choices=("uniform", "popularity")), OWN),
    Rule("reward_positions", COUNT, OWN),
    Rule("value_loss_weight", WEIGHT, OWN),
    Rule("score_chunk_size", POSITIVE_INT, OWN),
    # RecBole's models
    Rule("loss_type", Check(str, choices=("CE", "BPR", "BCE", "MSE")), RECBOLE),
)  # fmt: skip
RULED_KEYS = frozenset(rule.key for rule in RULES)


@dataclass(frozen=True)
class CrossRule:
    """A rule between keys: ``holds(*values)`` over the values of ``keys``, checked when all are set."""

    keys: tuple[str, ...]
    holds: Callable[..., bool]
    requirement: str
    scope: str


def _divides(whole: int, part: int) -> bool:
    return whole % part == 0


def _machine_fits(nproc: int, offset: int, world_size: int) -> bool:
    return offset + nproc <= world_size


CROSS_RULES = (
    CrossRule(
        ("nproc", "world_size"),
        lambda nproc, world_size: nproc <= world_size,
        "world_size (the processes of all machines) must be at least nproc (this machine's)",
        ANY,
    ),
    CrossRule(
        ("nproc", "offset", "world_size"),
        _machine_fits,
        "this machine's processes (ranks offset to offset + nproc - 1) must be among the world_size processes",
        ANY,
    ),
    CrossRule(("hidden_size", "n_heads"), _divides, "hidden_size must be a multiple of n_heads", RECBOLE),
    CrossRule(("hidden_size", "decoder_heads"), _divides, "hidden_size must be a multiple of decoder_heads", OWN),
    CrossRule(
        ("num_experts", "experts_per_token"),
        lambda experts, chosen: chosen <= experts,
        "experts_per_token must not exceed num_experts",
        OWN,
    ),
)

# Keys of properties/ with no rule here, and what checks them instead.
FREE_KEYS = {
    "cascade_from": "a column name; the dataset checks that the column exists and is numeric",
    "cascade_thresholds": "the dataset checks one non-decreasing threshold per cascade field",
    "value_field": "a column name; the dataset checks that it is a float column",
    "value_note": "free text, printed with results",
    "task_order": "OneRanker checks that it is a permutation of the dataset's tasks",
    "train_neg_sample_args": "RecBole validates its distribution and sample count",
    "sid_file": "a path; the SID loader (GPR, OneRec) says when it is missing or does not match the dataset",
    "init_checkpoint": "a path; GPR loads it with weights_only=True and names a checkpoint of another shape",
}


def check_config(values: Mapping[str, Any], defaults: Mapping[str, Any], model_keys: set[str]) -> None:
    """Check every rule that does not need the dataset, and that flags (keys whose default in ``defaults`` is
    True/False) are True or False.

    Args:
        values: the final configuration.
        defaults: the values of the yaml layers (RecBole's and this package's), before user overrides.
        model_keys: the keys the model's own yaml chain defines (the rules of scope :data:`OWN` apply to them;
            empty for RecBole's models, which the rules of scope :data:`RECBOLE` apply to).

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
    for rule in RULES:
        check = rule.check
        if rule.key not in values or not _applies(rule.scope, (rule.key,), model_keys):
            continue
        if n_items is not None and not check.needs_dataset:
            continue  # checked in the first pass
        value = values[rule.key]
        if not check.holds(value, n_items):
            reasons = [check.why] if check.why else []
            if check.needs_dataset and n_items is not None:
                reasons.append(f"the dataset has {n_items} items")
            why = f" ({'; '.join(reasons)})" if reasons else ""
            raise ConfigError(f"'{rule.key}' must be {check.describe(n_items)}, got {shorten(repr(value))}{why}")
    if n_items is not None:
        return
    for rule in CROSS_RULES:  # the single-key rules above already hold: types and ranges are right
        if all(values.get(key) is not None for key in rule.keys) and _applies(rule.scope, rule.keys, model_keys):
            if not rule.holds(*(values[key] for key in rule.keys)):
                got = ", ".join(f"{key}={shorten(repr(values[key]))}" for key in rule.keys)
                raise ConfigError(f"{rule.requirement}, got {got}")


def _applies(scope: str, keys: tuple[str, ...], model_keys: set[str]) -> bool:
    if scope == OWN:
        return all(key in model_keys for key in keys)
    if scope == RECBOLE:
        return not model_keys
    return True
