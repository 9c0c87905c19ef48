"""Optuna studies for OneRanker and its baselines: resumable, parallel, single- or multi-objective.

    python tuning/search.py --model OneRanker --dataset ml-100k --n-trials 50
    python tuning/search.py --model HSTU --dataset ml-100k --n-trials 50 --sampler tpe --pruner median --seed 0
    python tuning/search.py --model OneRanker --objectives ndcg@10 gmv@10 --n-trials 50      # Pareto front, NSGA-II
    python tuning/search.py --model SASRec --storage postgresql://user:pw@db/optuna --n-trials 200  # many machines
    python tuning/search.py --model OneRanker --n-trials 2 --epochs 1 --set hidden_size=16    # a smoke run

Run it from the repository root. Each trial trains the model with the real package (``recbole_oneranker.quick_start.
run``), early-stopped and scored on **validation** (``--objective``, default ndcg@10); its test metrics are stored as
trial user attributes and never steer the search. Search spaces are ``tuning/spaces/<Model>.yaml``.

Storage: by default the journal file ``<out>/<study>/journal.log`` (``studies/<study>/``; the committed studies under
``results/tuning`` are continued with ``--out results/tuning``), so several processes on one machine (one per GPU)
can run this same command at once and share the study; ``--storage URL`` takes an RDB URL (postgresql://, mysql://)
for many machines, or a journal file path on a shared file system. ``--n-trials`` is the study's total of finished
(complete + pruned) trials: a re-run of the same command runs only the missing ones. A trial whose process died
(kill, crash) is marked FAIL and its parameters are queued again. With the journal file (no heartbeat), on start-up
and before each trial, for dead processes of this host; with an RDB storage, through Optuna's heartbeat for any host
(``--heartbeat-interval``, ``--grace-period``), and its workers, once no trial is left to start, wait for the last
running ones so that they retry any whose process dies.
Every trial trains with ``resume_training`` under a run id its retry inherits, so the retry continues the cut run
from its last validation rather than from scratch.

At the end the report is written to ``<out>/<study>/report.md`` (see ``tuning/report.py``).

Test hook: ``RECBOLE_ONERANKER_TUNING_SLEEP="N:SECONDS"`` makes the process that runs trial number N sleep SECONDS
at its start, after its parameters are drawn (tests use it to kill a process in the middle of a trial).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shlex
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState

from recbole_oneranker import compat
from recbole_oneranker.bench.common import DEFAULT_DATA_PATH, ensure_dataset, run_command
from recbole_oneranker.config import EMBEDDED_DATASET, Config, check_keys
from recbole_oneranker.errors import ConfigError, UnknownModelError
from recbole_oneranker.overrides import parse_assignments
from recbole_oneranker.quick_start import run
from recbole_oneranker.tuning.report import write_report
from recbole_oneranker.tuning.spaces import (
    SPACES_DIR,
    dataset_tasks,
    load_space,
    params_to_config,
    suggest,
    to_distribution,
)
from recbole_oneranker.tuning.storage import (
    DEFAULT_OUT,
    FINISHED,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    USAGE_ERROR,
    UsageError,
    is_rdb_url,
    open_storage,
    state_counts,
    without_password,
)

TRIALS_FAILING = 1
INTERRUPTED = 130
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
PRUNERS = ("median", "hyperband", "none")
# Epochs before any pruning: RecBole's default early-stopping patience (stopping_step); epoch 3 pruned good but
# slow-starting trials in the first ml-100k studies.
DEFAULT_PRUNER_WARMUP = 10
# A cut trial is queued again until this many attempts in a row ended without a new validation: a trial that keeps
# killing its process stops there, one cut by the end of a session or a `kill` continues for as long as it advances.
MAX_STALLED_ATTEMPTS = 3
MAX_CONSECUTIVE_FAILURES = 3  # then the search stops: a broken setup, not an unlucky trial
SLEEP_ENV = "RECBOLE_ONERANKER_TUNING_SLEEP"


class StudyFull(Exception):
    """Raised by a trial that another process's trial made surplus (both saw one trial missing at once)."""


# -- command line and inputs ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model name; its space is <spaces-dir>/<model>.yaml")
    parser.add_argument("--dataset", default=EMBEDDED_DATASET, help="dataset name (default: ml-100k, embedded)")
    parser.add_argument("--n-trials", type=int, default=50, help="finished trials the study should hold in total")
    parser.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument("--storage", help="RDB URL (postgresql://...) or a journal file path (default: per study)")
    parser.add_argument(
        "--heartbeat-interval",
        type=int,
        metavar="S",
        help=f"RDB storage: a running trial's heartbeat period (default: {HEARTBEAT_INTERVAL_S} s)",
    )
    parser.add_argument(
        "--grace-period",
        type=int,
        metavar="S",
        help=f"RDB storage: a trial without heartbeat this long is failed and retried (default: {GRACE_PERIOD_S} s)",
    )
    parser.add_argument("--study-name", help="default: <model>-<dataset>-<objectives>")
    parser.add_argument("--sampler", choices=SAMPLERS, help="default: tpe, or nsga2 with several objectives")
    parser.add_argument("--pruner", choices=PRUNERS, help="default: median, or none with several objectives")
    parser.add_argument(
        "--pruner-warmup",
        type=int,
        default=DEFAULT_PRUNER_WARMUP,
        metavar="EPOCHS",
        help=f"prune no trial before this many epochs (default: {DEFAULT_PRUNER_WARMUP})",
    )
    parser.add_argument("--seed", type=int, help="sampler seed (mixed with the study's trial count at start-up)")
    objective = parser.add_mutually_exclusive_group()
    objective.add_argument("--objective", help="validation metric to optimise (default: ndcg@10)")
    objective.add_argument("--objectives", nargs="+", help="several validation metrics: a Pareto front")
    parser.add_argument("--epochs", type=int, help="cap the epochs of every trial (smoke runs)")
    parser.add_argument(
        "--data-path", type=Path, default=DEFAULT_DATA_PATH, help="converted datasets (default: dataset/)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder of the studies (default: studies/; results/tuning holds "
        "the committed ones: give it to continue one of them)",
    )
    parser.add_argument("--spaces-dir", type=Path, default=SPACES_DIR, help="folder of <Model>.yaml search spaces")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="fixed config for every trial")
    parser.add_argument("--verbose", action="store_true", help="show RecBole's console log of each trial")
    args = parser.parse_args(argv)
    if args.n_trials < 1:
        parser.error("--n-trials must be at least 1")
    for option in ("heartbeat_interval", "grace_period"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1 second")
    return args


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (values read by :func:`~recbole_oneranker.overrides.parse_value`: ``[10,20]``,
    ``None``, ``1e-3``) as a checked config dict."""
    settings = parse_assignments(items, "--set")
    check_keys(settings, "--set")
    if "valid_metric" in settings:
        raise UsageError("the validation metric is the objective: use --objective, not --set valid_metric")
    return settings


def heartbeat_options(args: argparse.Namespace) -> dict[str, int]:
    """``--heartbeat-interval`` and ``--grace-period`` as :func:`open_storage` arguments; only an RDB storage takes
    them (the journal file has no heartbeat)."""
    given = {"heartbeat_interval": args.heartbeat_interval, "grace_period": args.grace_period}
    options = {name: value for name, value in given.items() if value is not None}
    if options and not is_rdb_url(args.storage):
        raise UsageError("--heartbeat-interval and --grace-period need an RDB --storage (postgresql://...)")
    return options


def parse_objective(text: str) -> str:
    """``ndcg@10`` -> ``ndcg@10`` (lower case), after checking that RecBole (or this package) computes it."""
    from recbole.evaluator.register import metrics_dict

    name, at, k = text.lower().partition("@")
    metric = metrics_dict.get(name)
    if metric is None:
        raise UsageError(f"unknown objective '{text}': metrics are {', '.join(sorted(metrics_dict))} (e.g. ndcg@10)")
    needs_k = any(need in metric.metric_need for need in ("rec.topk", "rec.items"))
    if needs_k and not (at and k.isdigit() and int(k) > 0):
        raise UsageError(f"objective '{text}' needs a cutoff: write {name}@K, e.g. {name}@10")
    if not needs_k and at:
        raise UsageError(f"objective '{text}': {name} has no cutoff, write '{name}'")
    return f"{name}@{int(k)}" if needs_k else name


def parse_objectives(args: argparse.Namespace) -> list[str]:
    objectives = [parse_objective(text) for text in (args.objectives or [args.objective or "ndcg@10"])]
    if len(set(objectives)) != len(objectives):
        raise UsageError(f"objectives repeat: {objectives}")
    return objectives


def direction(objective: str) -> str:
    from recbole.evaluator.register import smaller_metrics

    return "minimize" if objective.partition("@")[0] in smaller_metrics else "maximize"


# -- search spaces ---------------------------------------------------------------------------------------------------


# -- study set-up ----------------------------------------------------------------------------------------------------


class _DefaultsProbe(Config):
    """The config before the objective is added: its default ``valid_metric`` need not be among the metrics yet."""

    def _check_valid_metric(self) -> None:
        pass


def trial_settings(args: argparse.Namespace, objectives: list[str]) -> tuple[dict[str, Any], Config]:
    """The config every trial shares (``--set``, ``--epochs``, data path, objective metrics) and its checked Config."""
    from recbole.evaluator.register import metrics_dict

    settings = parse_settings(args.set)
    if args.epochs:
        settings["epochs"] = args.epochs
    if args.dataset != EMBEDDED_DATASET and "data_path" not in settings:
        settings["data_path"] = str(ensure_dataset(args.dataset, args.data_path))
    config = _DefaultsProbe(args.model, args.dataset, config_dict=settings)
    metrics, topk = list(config["metrics"]), list(config["topk"])
    for objective in objectives:
        name, _, k = objective.partition("@")
        if name not in [metric.lower() for metric in metrics]:
            settings["metrics"] = metrics = [*metrics, metrics_dict[name].__name__]
        if k and int(k) not in topk:
            settings["topk"] = topk = sorted([*topk, int(k)])
    settings["valid_metric"] = objectives[0]
    return settings, Config(args.model, args.dataset, config_dict=settings)


def make_sampler(name: str | None, seed: int | None, multi: bool) -> optuna.samplers.BaseSampler:
    name = name or ("nsga2" if multi else "tpe")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "cmaes":
        if multi:
            raise UsageError("the cmaes sampler optimises one objective: use nsga2 or tpe with --objectives")
        if importlib.util.find_spec("cmaes") is None:
            raise UsageError("the cmaes sampler needs the 'cmaes' package (pip install cmaes)")
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def worker_seed(seed: int, trials_at_start: int) -> int:
    """The sampler seed of a process: ``--seed`` mixed with the study's trial count at start-up, so that a resumed
    run does not replay earlier draws and workers of different seeds draw differently (a sum, ``--seed 0`` after one
    trial and ``--seed 1`` after none, gave two workers started together the same parameters)."""
    return int(np.random.SeedSequence([seed, trials_at_start]).generate_state(1)[0])


def make_pruner(name: str | None, multi: bool, warmup_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner; no trial is judged before ``warmup_epochs`` epochs (early epochs rank runs poorly: a slow but
    good learning rate starts low)."""
    if multi:
        if name not in (None, "none"):
            raise UsageError("Optuna cannot prune multi-objective trials: drop --pruner or use --pruner none")
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_epochs)


def existing_study(storage: BaseStorage, name: str, pruner: optuna.pruners.BasePruner) -> optuna.Study | None:
    """The study ``name`` in ``storage``, or None; unlike ``create_study(load_if_exists=True)``, which appends a
    create-study record to a journal before finding the study there, it writes nothing."""
    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        return None


def new_study(
    storage: BaseStorage, name: str, directions: list[str], pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """A new study ``name``, or the one another worker created in the meantime (both found none and created it)."""
    try:
        return optuna.create_study(storage=storage, study_name=name, directions=directions, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner)


def default_study_name(model: str, dataset: str, objectives: list[str]) -> str:
    return "-".join([model, dataset, *(objective.replace("@", "") for objective in objectives)])


# Fixed settings that say how one machine runs a trial, not what the trial is: workers elsewhere may set them
# otherwise and still join the study (each trial's command records them).
MACHINE_SETTINGS = frozenset({"data_path", "compile_model", "threads"})


# How long a worker waits for the identity of a study that another worker has just created: the creator writes it
# one key at a time, so a worker that loads the study in between sees only part of it.
IDENTITY_WAIT_S = 30.0


def check_same_study(study: optuna.Study, identity: dict[str, Any], wait_s: float = IDENTITY_WAIT_S) -> None:
    """A re-run must continue the same experiment: model, dataset, objectives and fixed settings (machine ones
    aside, :data:`MACHINE_SETTINGS`).

    A study without an identity gets this one. A study whose identity is only partly there is being created by
    another worker right now: the keys it already has must agree, and the rest are waited for up to ``wait_s``.
    """
    stored = study.user_attrs
    if not stored:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        stored = study.user_attrs  # another worker may have written its own identity at the same moment
    deadline = time.monotonic() + wait_s
    while True:
        for key in identity.keys() & stored.keys() - {"space"}:
            refuse_a_changed_setting(study.study_name, key, stored[key], identity[key])
        missing = [key for key in identity if key not in stored]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise UsageError(
                f"study '{study.study_name}' has no {', '.join(missing)} after {wait_s:.0f} s: the command that "
                f"created it stopped while writing them; delete the study or pick another --study-name"
            )
        time.sleep(0.1)
        stored = study.user_attrs
    if "space" in identity and stored["space"] != identity["space"]:
        print(f"warning: the search space changed since study '{study.study_name}' began", file=sys.stderr)


def refuse_a_changed_setting(study_name: str, key: str, old: Any, new: Any) -> None:
    if key == "settings":  # how a machine runs the trials may differ between machines
        old = {k: v for k, v in (old or {}).items() if k not in MACHINE_SETTINGS}
        new = {k: v for k, v in new.items() if k not in MACHINE_SETTINGS}
        changed = sorted(set(old) ^ set(new) | {k for k in set(old) & set(new) if old[k] != new[k]})
        old, new = {k: old.get(k) for k in changed}, {k: new.get(k) for k in changed}
    if old != new:
        raise UsageError(
            f"study '{study_name}' was run with {key} {old!r}, this command gives {new!r}: "
            f"re-run its command or pick another --study-name"
        )


def record_command(study: optuna.Study, command: str) -> None:
    commands = list(study.user_attrs.get("commands", []))
    if command not in commands:
        study.set_user_attr("commands", [*commands, command])


# -- processes and their trials --------------------------------------------------------------------------------------


def process_identity(pid: int) -> str | None:
    """What names process ``pid`` for its lifetime (its start time, from /proc); None once it is gone or a zombie.

    Without /proc, "alive" when signal 0 reaches it (pid reuse is then not detected).
    """
    if Path("/proc/self/stat").is_file():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return None if fields[0] in ("Z", "X") else fields[19]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "alive"


def this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_identity(pid)}


def is_orphan(trial: FrozenTrial) -> bool:
    """A RUNNING trial whose owner process, on this host, no longer runs (other hosts' trials cannot be judged)."""
    owner = trial.user_attrs.get("owner")
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    return process_identity(int(owner["pid"])) != owner.get("start")


def requeue(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue a cut ``trial``'s parameters again, unless :data:`MAX_STALLED_ATTEMPTS` attempts in a row, this one
    included, reported no new validation score (a retry first re-reports the epochs its snapshot carries)."""
    epochs = len(trial.intermediate_values)
    advanced = epochs > int(trial.user_attrs.get("epochs_at_start", 0))
    stalled = 0 if advanced else int(trial.user_attrs.get("stalled_attempts", 0)) + 1
    if stalled >= MAX_STALLED_ATTEMPTS:
        return False
    user_attrs = {"retry_of": trial.number, "stalled_attempts": stalled, "epochs_at_start": epochs}
    if "run_id" in trial.user_attrs:  # the retry continues the run from its last validation (resume_training)
        user_attrs["run_id"] = trial.user_attrs["run_id"]
    study.enqueue_trial(trial.params, user_attrs=user_attrs)
    return True


def requeue_note(requeued: bool) -> str:
    return " and queued again" if requeued else f"; not queued again: {MAX_STALLED_ATTEMPTS} attempts without progress"


def recover_orphans(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Mark the RUNNING trials of dead processes of this host FAILED and queue their parameters again.

    The journal storage has no heartbeat; this is its equivalent (with an RDB storage Optuna's heartbeat does it
    instead, across hosts). Two processes may find the same orphan: only the one whose FAIL lands first queues it.
    """
    recovered = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_orphan(trial):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "error", "its process died while it ran")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        requeued = requeue(study, trial)
        print(f"trial {trial.number}: its process died; marked FAIL{requeue_note(requeued)}")
        recovered.append(trial.number)
    return recovered


def _test_hook(number: int) -> None:
    """The documented test hook: sleep at the start of trial N (``RECBOLE_ONERANKER_TUNING_SLEEP="N:SECONDS"``)."""
    target, _, seconds = os.environ.get(SLEEP_ENV, "").partition(":")
    if target.isdigit() and int(target) == number:
        time.sleep(float(seconds or 0))


@cache
def _quiet_stream() -> TextIO:
    """Where RecBole's console log goes during a trial (its log file under <out>/<study>/logs keeps everything).

    Opened once and never closed: RecBole's console handler keeps writing to it until the next run replaces it.
    """
    return open(os.devnull, "w")


class Objective:
    """One trial: draw the parameters, train and validate the model, store the test metrics as user attributes."""

    def __init__(
        self,
        model: str,
        dataset: str,
        settings: dict[str, Any],
        space: dict[str, dict[str, Any]],
        distributions: dict[str, BaseDistribution],
        objectives: list[str],
        study_dir: Path,
        n_trials: int,
        verbose: bool = False,
    ):
        self.model, self.dataset = model, dataset
        self.settings, self.space, self.distributions = settings, space, distributions
        self.objectives, self.study_dir, self.n_trials, self.verbose = objectives, study_dir, n_trials, verbose
        self.current: Trial | None = None

    def __call__(self, trial: Trial) -> float | list[float]:
        self.current = trial
        trial.set_user_attr("owner", this_process())
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)
            raise StudyFull(f"the study already has {self.n_trials} trials")
        try:
            return self._train(trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            raise

    def _surplus(self, trial: Trial) -> bool:
        """True when ``n_trials`` earlier trials are finished or running (two processes started the last one)."""
        active = (*FINISHED, TrialState.RUNNING)
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=active) if t.number < trial.number]
        return len(earlier) >= self.n_trials

    def _train(self, trial: Trial) -> float | list[float]:
        params = {name: suggest(trial, name, distribution) for name, distribution in self.distributions.items()}
        settings = {**self.settings, **params_to_config(params, self.space)}
        trial.set_user_attr("command", run_command(self.model, self.dataset, settings))
        # A retry of an interrupted trial inherits its run id, so its run continues from the last validation
        run_id = trial.user_attrs.get("run_id") or compat.unique_run_id(self.model, self.dataset)
        trial.set_user_attr("run_id", run_id)
        _test_hook(trial.number)
        checkpoint_dir = self.study_dir / "checkpoints"
        config = {
            **settings,
            "checkpoint_dir": str(checkpoint_dir),
            "log_dir": str(self.study_dir / "logs"),
            "run_id": run_id,
            "resume_training": True,
        }
        single = len(self.objectives) == 1
        quiet = contextlib.nullcontext() if self.verbose else contextlib.redirect_stderr(_quiet_stream())
        try:
            with quiet:
                result = run(
                    self.model, self.dataset, config_dict=config, callback_fn=PruningReporter(trial) if single else None
                )
        except optuna.TrialPruned:
            (checkpoint_dir / f"{run_id}-resume.pth").unlink(missing_ok=True)  # a pruned run is never continued
            raise
        for key in ("protocol", "saved_model_file", "device"):
            trial.set_user_attr(key, result[key])
        trial.set_user_attr("wall_time_s", round(float(result["wall_time_s"]), 1))
        for key in ("best_valid_result", "test_result", "candidate_result"):
            trial.set_user_attr(key, {name: float(value) for name, value in (result[key] or {}).items()} or None)
        values = [float(result["best_valid_result"][objective]) for objective in self.objectives]
        return values[0] if single else values


class PruningReporter:
    """``callback_fn`` of :func:`run`: report each validation score to the trial, stop the run when the pruner says so.

    Its state, the scores reported so far, travels in the run's resume snapshot: a retry that continues an
    interrupted run first reports the earlier epochs to its own trial, so the pruner judges the whole curve.
    """

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.reported: list[tuple[int, float]] = []

    def __call__(self, epoch: int, valid_score: float) -> None:
        self._report(epoch, float(valid_score))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    def _report(self, epoch: int, score: float) -> None:
        self.trial.report(score, epoch)
        self.reported.append((epoch, score))

    def state_dict(self) -> dict[str, list[list[float]]]:
        return {"reported": [[epoch, score] for epoch, score in self.reported]}

    def load_state_dict(self, state: dict[str, list[list[float]]]) -> None:
        for epoch, score in state["reported"]:
            self._report(int(epoch), float(score))


class QuietFailures(logging.Filter):
    """Hide Optuna's failure warnings that the progress line already explains (surplus or interrupted trials) and
    its repeat "failed with value None"; real errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in ("StudyFull(", "KeyboardInterrupt(", "failed with value None."))


def quiet_optuna_failures() -> None:
    """Filter Optuna's output through :class:`QuietFailures`. On its handlers, not its "optuna" logger: a logger's
    filters never see the records its children (``optuna.study._optimize``, which warns of failures) pass up."""
    for handler in optuna.logging.get_logger("optuna").handlers:
        if not any(isinstance(existing, QuietFailures) for existing in handler.filters):
            handler.addFilter(QuietFailures())


# -- progress ----------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(trial: FrozenTrial, objectives: list[str]) -> str:
    """``trial 3  COMPLETE  ndcg@10=0.0241  (12 s)  gamma=0.3 ...``: one line per finished trial."""
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    params = " ".join(f"{name}={_fmt(value)}" for name, value in trial.params.items())
    if trial.user_attrs.get("surplus"):
        return f"trial {trial.number}: not run, other processes already run the study's last trials"
    if trial.values:
        values = " ".join(f"{name}={value:.4f}" for name, value in zip(objectives, trial.values, strict=False))
    else:
        values = trial.user_attrs.get("error", "-")
    retry_of = retried_trial(trial)
    retry = f"  (retry of {retry_of})" if retry_of is not None else ""
    elapsed = f"{seconds:.0f} s"
    if retry and "wall_time_s" in trial.user_attrs:  # a retry continues its run: say what the run took in all
        elapsed += f", {trial.user_attrs['wall_time_s']:.0f} s with its earlier attempts"
    return f"trial {trial.number}  {trial.state.name}  {values}  ({elapsed})  {params}{retry}"


def retried_trial(trial: FrozenTrial) -> int | None:
    """The number of the attempt this trial retries: queued by Optuna's heartbeat callback (its system attribute,
    the trial right before in the series), or by :func:`requeue`; None for a first attempt."""
    history = trial.system_attrs.get("retry_history")
    return history[-1] if history else trial.user_attrs.get("retry_of")


def summary(study: optuna.Study, objectives: list[str], n_trials: int, report_file: Path | None) -> str:
    counts = state_counts(study)
    finished = sum(counts[state] for state in FINISHED)
    lines = [
        f"== study {study.study_name}: {finished} finished of {n_trials} ("
        + ", ".join(f"{state.name} {count}" for state, count in sorted(counts.items(), key=lambda c: c[0].value))
        + ")"
    ]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete and len(objectives) == 1:
        best = study.best_trial
        lines.append(f"best {objectives[0]} = {best.value:.4f} (trial {best.number}): {best.params}")
    elif complete:
        lines.append(f"Pareto front ({len(study.best_trials)} trials):")
        for trial in study.best_trials:
            values = ", ".join(f"{name}={value:.4f}" for name, value in zip(objectives, trial.values, strict=False))
            lines.append(f"  trial {trial.number}: {values}  {trial.params}")
    if report_file is not None:
        lines.append(f"report: {report_file}")
    return "\n".join(lines)


# -- the search ------------------------------------------------------------------------------------------------------


def optimize(
    study: optuna.Study, storage: BaseStorage, objective: Objective, n_trials: int, timeout: float | None
) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (other processes' trials count too)."""
    start, failures = time.monotonic(), 0
    finished_trials: list[FrozenTrial] = []

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        objective.current = None
        finished_trials.append(trial)
        print(trial_line(trial, objective.objectives), flush=True)

    heartbeat = storage.heartbeat_interval if isinstance(storage, RDBStorage) else None  # seconds; None: none
    waiting = False
    while True:
        if heartbeat is None:  # with a heartbeat, Optuna fails the dead trials of any host (in study.optimize)
            recover_orphans(study, storage)
        counts = state_counts(study)
        finished = sum(counts[state] for state in FINISHED)
        if finished >= n_trials:
            return
        if timeout is not None and time.monotonic() - start >= timeout:
            print(f"timeout: no new trial after {timeout:g} s")
            return
        others = counts[TrialState.RUNNING]
        if finished + others >= n_trials:
            if heartbeat is None:
                print(f"the last {others} trial(s) are running in other processes")
                return
            if not waiting:  # a heartbeat tells when another host's trial dies: stay to retry it
                print(f"the last {others} trial(s) are running in other processes: waiting, to retry any that dies")
            waiting = True
            wait_for_heartbeats(study, heartbeat)
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[progress], gc_after_trial=True)
        last = finished_trials[-1]
        failed = last.state == TrialState.FAIL and not last.user_attrs.get("surplus")
        failures = failures + 1 if failed else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"{failures} trials failed in a row; see the errors above and the logs")


def wait_for_heartbeats(study: optuna.Study, interval: float) -> None:
    """Sleep one heartbeat ``interval``, then fail the running trials without a heartbeat for the grace period;
    Optuna's callback queues them again (:func:`~recbole_oneranker.tuning.storage.open_storage`)."""
    time.sleep(interval)
    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def requeue_interrupted(study: optuna.Study, storage: BaseStorage, trial: Trial | None) -> None:
    """After Ctrl-C or SIGTERM: Optuna has marked the running trial FAIL; queue its parameters again."""
    if trial is None:
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    frozen = storage.get_trial(trial_id)
    if frozen.state == TrialState.FAIL:
        print(f"trial {trial.number}: interrupted; marked FAIL{requeue_note(requeue(study, frozen))}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is printed here instead
    try:
        space = load_space(args.model, args.spaces_dir)
        objectives = parse_objectives(args)
        multi = len(objectives) > 1
        settings, config = trial_settings(args, objectives)
        fixed = sorted(set(space) & set(settings))
        space = {name: spec for name, spec in space.items() if name not in settings}
        path = args.spaces_dir / f"{args.model}.yaml"
        distributions = {name: to_distribution(name, spec, dataset_tasks(config), path) for name, spec in space.items()}
        make_sampler(args.sampler, args.seed, multi)  # a bad choice fails here; the study's sampler is made below
        pruner = make_pruner(args.pruner, multi, args.pruner_warmup)
        study_name = args.study_name or default_study_name(args.model, args.dataset, objectives)
        if not study_name or os.sep in study_name:
            raise UsageError(f"study name '{study_name}' must be a non-empty name without '{os.sep}'")
        study_dir = args.out / study_name
        storage = open_storage(args.storage, study_dir / "journal.log", **heartbeat_options(args))
        identity = {
            "model": args.model,
            "dataset": args.dataset,
            "objectives": objectives,
            "settings": settings,
            "space": space,
        }
        directions = [direction(objective) for objective in objectives]
        study = existing_study(storage, study_name, pruner) or new_study(storage, study_name, directions, pruner)
        check_same_study(study, identity)  # before anything is written to an existing study: a refusal writes nothing
    except (UsageError, ConfigError, UnknownModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:  # the study folder cannot be made or written (--out on a read-only path)
        print(f"error: {args.out}: cannot write the study there: {error.strerror or error}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as error:  # bench.common.ensure_dataset says what is missing this way
        if isinstance(error.code, str):
            print(error.code if error.code.startswith("error:") else f"error: {error.code}", file=sys.stderr)
            return USAGE_ERROR
        raise

    command = "python tuning/search.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    record_command(study, command)
    trials_at_start = len(study.get_trials(deepcopy=False))
    seed = None if args.seed is None else worker_seed(args.seed, trials_at_start)
    study.sampler = make_sampler(args.sampler, seed, multi)
    quiet_optuna_failures()

    directions = ", ".join(f"{objective} ({direction(objective)})" for objective in objectives)
    print(f"study {study_name}: {args.model} on {args.dataset}, validation {directions}")
    print(f"storage: {storage_label(args, storage, study_dir)}")
    print(f"search: {', '.join(distributions)}" + (f"; fixed by --set: {', '.join(fixed)}" if fixed else ""))
    objective = Objective(
        args.model, args.dataset, settings, space, distributions, objectives, study_dir, args.n_trials, args.verbose
    )
    status = 0
    try:
        optimize(study, storage, objective, args.n_trials, args.timeout)
    except KeyboardInterrupt:
        requeue_interrupted(study, storage, objective.current)
        print("interrupted: re-run the same command to continue the study")
        return INTERRUPTED
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        status = TRIALS_FAILING

    report_file = report_or_warn(study, study_dir)
    print(summary(study, objectives, args.n_trials, report_file))
    return status


def storage_label(args: argparse.Namespace, storage: BaseStorage, study_dir: Path) -> str:
    """The storage without credentials: a journal path, or a URL and its heartbeat."""
    if not is_rdb_url(args.storage):
        return str(Path(args.storage) if args.storage else study_dir / "journal.log")
    label = without_password(args.storage)
    if isinstance(storage, RDBStorage) and storage.heartbeat_interval is not None:
        label += f" (heartbeat every {storage.heartbeat_interval} s, a trial without one for {storage.grace_period} s"
        label += " is failed and retried)"
    return label


def report_or_warn(study: optuna.Study, study_dir: Path) -> Path | None:
    """``report.md`` and the plots (:func:`~recbole_oneranker.tuning.report.write_report`); a failure there does
    not fail the search."""
    try:
        return write_report(study, study_dir)
    except Exception as error:  # the study is safe in its storage; the report can be redone
        print(f"warning: no report ({type(error).__name__}: {error}); run tuning/report.py", file=sys.stderr)
        traceback.print_exc()
        return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_as_script() -> int:
    """``python tuning/search.py``: :func:`main`, with ``kill`` (SIGTERM) behaving like Ctrl-C, so that the running
    trial is failed and queued again."""
    signal.signal(signal.SIGTERM, _interrupt)
    return main()


if __name__ == "__main__":
    raise SystemExit(run_as_script())
