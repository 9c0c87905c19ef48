"""``run``: RecBole's quick-start flow with plugin lookups, and without ray.

``recbole.quick_start`` imports ray (for ``tune.report``), finds models only inside ``recbole.model`` and names
checkpoints by the second. ``run`` follows the same steps (config, seed, logger, dataset, split, model,
trainer, fit, test) with this package's ``Config``, dataset, model lookup and trainer.

With ``nproc`` above 1 (``run_recbole --nproc=2``), or in each process torchrun starts, ``run`` trains with
DDP (:mod:`recbole_oneranker.distributed`, ``docs/scale.md``).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from logging import getLogger
from typing import Any, NamedTuple

import colorlog
import numpy as np
import torch
from colorama import init as init_colorama
from recbole.data.dataloader import NegSampleEvalDataLoader
from recbole.data.utils import create_samplers
from recbole.evaluator import Evaluator
from recbole.utils import init_seed, set_color
from recbole.utils.logger import RemoveColorFilter, log_colors_config

from recbole_oneranker import distributed
from recbole_oneranker.alignment import AlignmentTrainer
from recbole_oneranker.checkpoints import start_from_checkpoint
from recbole_oneranker.config import ALIGN_STAGE, FINETUNE_STAGE, Config
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.errors import ConfigError, RunFileError, shorten
from recbole_oneranker.evaluator import ValueCollector
from recbole_oneranker.evaluator.protocol import Protocol
from recbole_oneranker.log_records import LOG_FILE_ONLY, shown_on_terminal
from recbole_oneranker.registry import get_model
from recbole_oneranker.threads import ContentionGuard, auto_threads, idle_cores, usable_cores
from recbole_oneranker.trainer_lookup import get_trainer

CANDIDATE_TOPK = (1, 3, 5, 10, 15)
# candidate_sampling -> RecBole's negative-sampling distribution and the prefix of its evaluation mode (uni29, pop29)
CANDIDATE_SAMPLERS = {"uniform": ("uniform", "uni"), "popularity": ("popularity", "pop")}
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Where a run's thread count came from when neither the threads key nor OMP_NUM_THREADS set it
IDLE_CORES = "the idle cores"


def cpu_threads(config: Config) -> tuple[int, str]:
    """torch's CPU threads for a run and where the count came from: the ``threads`` key when set, else
    ``$OMP_NUM_THREADS`` when set, else the cores idle now (:func:`~recbole_oneranker.threads.auto_threads`,
    :data:`IDLE_CORES`).

    Raises:
        ConfigError: for a ``threads`` value that is not a positive integer.
    """
    threads = config["threads"]
    if threads is None:
        from_environment = os.environ.get("OMP_NUM_THREADS", "").strip()
        if from_environment.isdigit() and int(from_environment) > 0:
            return int(from_environment), "OMP_NUM_THREADS"
        return max(1, auto_threads(usable_cores(), idle_cores()) // _processes_on_this_machine()), IDLE_CORES
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or ~, got {threads!r}")
    return threads, "--threads"


def _processes_on_this_machine() -> int:
    place = distributed.place_from_environment()
    return 1 if place is None else place.local_world_size


def init_logger(config: Config) -> str:
    """Log to the console and to ``<log_dir>/<model>/<run_id>.log``; returns the log file's path.

    In a distributed run, ranks other than 0 log (errors only: ``compat`` fix 13) to ``<run_id>-rank<r>.log``.

    Records logged with ``extra=LOG_FILE_ONLY`` (the config, the dataset, the model's structure: 170-240 lines) go
    to the file only, unless ``verbose``.

    Replaces RecBole's ``init_logger``, whose file name is only unique to the second and which does nothing
    when the root logger already has handlers (a second run in the same process would log nowhere new).
    """
    init_colorama(autoreset=True)
    level = _LOG_LEVELS.get(str(config["state"] or "info").lower(), logging.INFO)
    rank = "" if distributed.is_first() else f"-rank{distributed.rank()}"
    log_file = os.path.join(config["log_dir"], config["model"], f"{config['run_id']}{rank}.log")
    os.makedirs(os.path.dirname(log_file), exist_ok=True)

    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
    file_handler.addFilter(RemoveColorFilter())
    console_handler = logging.StreamHandler()
    console_handler.setFormatter(
        colorlog.ColoredFormatter(
            "%(log_color)s%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M", log_colors=log_colors_config
        )
    )
    if not config["verbose"]:
        console_handler.addFilter(shown_on_terminal)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in (console_handler, file_handler):
        handler.setLevel(level)
        root.addHandler(handler)
    root.setLevel(level)
    return log_file


def run(
    model: str | type | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    cmd_args: list[str] | tuple[str, ...] = (),
    saved: bool = True,
    callback_fn: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` with early stopping on validation, then test the best checkpoint.

    Args:
        model: a model name (this package's or RecBole's) or class.
        dataset: a dataset name; the ml-100k copy inside the recbole wheel when None.
        config_file_list, config_dict, cmd_args: configuration layers (see :class:`~recbole_oneranker.config.Config`).
        saved: save the best checkpoint and test it (False tests the last epoch's weights).
        callback_fn: called as ``callback_fn(epoch, valid_score)`` after each validation (e.g. Optuna pruning).

    Returns:
        dict with ``model``, ``dataset``, ``run_id``, ``best_valid_score``, ``valid_score_bigger``,
        ``best_valid_result``, ``test_result``, ``reward_result`` (``stage: align``: the reward model's estimate of
        the policy's generated top-K on the test requests, ``{"reward@K": ...}``; else None), ``test_ranks`` (per
        test user, the 1-based rank of the target among all items:
        :func:`~recbole_oneranker.evaluator.ranking.target_ranks`), ``test_users`` (their user ids, in
        the same order), ``test_values`` (their targets' values when a GMV metric is computed, else None),
        ``candidate_result`` (the metrics of :func:`evaluate_candidate_set`, or None), ``candidate_ranks`` and
        ``candidate_users`` (its per-user ranks and their user ids, or None), ``protocol`` (its
        line) and ``protocol_fields`` (the :class:`~recbole_oneranker.evaluator.protocol.Protocol` as plain
        values), ``saved_model_file``, ``log_file``, ``wall_time_s`` (with ``resume_training``, also the training
        seconds of the earlier processes of this ``run_id``), ``device`` (what it trained on, e.g.
        ``'cuda: NVIDIA H100 80GB HBM3, then cpu'`` for a run resumed on another machine; see
        :func:`~recbole_oneranker.trainer.describe_device`) and ``threads`` (the torch threads it trained on, e.g.
        ``'2, then 1 from epoch 7'``: :meth:`~recbole_oneranker.trainer.RunSafetyMixin.threads_used`).

    With ``nproc`` N > 1 the run trains in N new processes (DDP) and returns what the first of this machine
    returned (the metrics are those of the whole split in every process); in a process torchrun started, ``run``
    joins the others.

    Raises:
        ConfigError: a configuration that cannot run, a ``callback_fn`` with ``nproc`` > 1 among them.
    """
    start = time.perf_counter()
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    launch = distributed_launch(config, callback_fn)
    if launch is not None:
        return distributed.spawn(launch, run, (model, dataset, config_file_list, config_dict, tuple(cmd_args), saved))
    with distributed.process_group(config["device"]):
        return _train_and_test(config, saved, callback_fn, start)


def distributed_launch(config: Config, callback_fn: Callable | None) -> distributed.Launch | None:
    """How this process starts the ``nproc`` processes of a DDP run; None when it trains itself (``nproc`` unset
    or 1, or it is one of a distributed run's processes already).

    Raises:
        ConfigError: a ``callback_fn`` (it could not run in the new processes), a run on several machines without
            the address of rank 0's, or torchrun's processes on this machine told another ``nproc``.
    """
    nproc = config["nproc"] or 1
    place = distributed.place_from_environment()
    if place is not None:
        if nproc not in (1, place.local_world_size):
            raise ConfigError(
                f"--nproc={nproc} in a process of a distributed run of {place.local_world_size} processes on this "
                "machine (torchrun's --nproc_per_node): leave --nproc out under torchrun"
            )
        return None
    if nproc == 1:
        return None
    if callback_fn is not None:
        raise ConfigError(
            "a callback_fn runs in the calling process, and --nproc > 1 trains in new ones: start the processes "
            "with torchrun and call run in each (docs/scale.md)"
        )
    world_size = config["world_size"] or nproc
    if world_size > nproc and (config["ip"] is None or config["port"] is None):
        raise ConfigError(
            f"a run on several machines (world_size={world_size} > nproc={nproc}) needs --ip and --port of the "
            "machine of rank 0, the same on every machine"
        )
    port = config["port"] or distributed.free_port()
    return distributed.Launch(nproc, world_size, config["offset"] or 0, config["ip"] or "localhost", port)


def _train_and_test(
    config: Config, saved: bool, callback_fn: Callable[[int, float], None] | None, start: float
) -> dict[str, Any]:
    """:func:`run` in this process, once its config is built (and its process group joined, in a DDP run)."""
    config["run_id"] = distributed.from_first(config["run_id"])  # every rank names its files after rank 0's run
    threads, threads_from = cpu_threads(config)
    torch.set_num_threads(threads)
    init_seed(config["seed"], config["reproducibility"])
    prepare_output_dirs(config)
    log_file = init_logger(config)
    logger = getLogger()
    logger.info(sys.argv, extra=LOG_FILE_ONLY)
    logger.info(config, extra=LOG_FILE_ONLY)

    dataset = create_dataset(config)
    logger.info(dataset, extra=LOG_FILE_ONLY)
    sizes = dataset_sizes(dataset)  # before the splits: a whole-sequence layout rewrites the dataset's rows
    train_data, valid_data, test_data = data_preparation(config, dataset)  # an empty split stops here
    config.check_dataset_rules(n_items=dataset.item_num - 1)  # item 0 is padding

    init_seed(config["seed"] + distributed.rank(), config["reproducibility"])  # DDP: rank 0's weights win
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model, extra=LOG_FILE_ONLY)
    logger.info(run_header(config, sizes, model, threads, threads_from, log_file))

    if config["stage"] == ALIGN_STAGE:
        trainer = AlignmentTrainer(config, model, train_data._dataset)
    else:
        if config["stage"] == FINETUNE_STAGE:
            start_from_checkpoint(model, config["from_checkpoint"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # A count the user chose is kept, whatever the load; DDP processes share the cores on purpose.
    if threads_from == IDLE_CORES and threads > 1 and not distributed.is_distributed():
        trainer.contention_guard = ContentionGuard(threads, usable_cores())
    show_progress = bool(config["show_progress"])
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=show_progress, callback_fn=callback_fn
    )
    computed = {"best valid": best_valid_result}
    with results_reported_on_failure(computed):
        test_result = computed["test"] = trainer.evaluate(test_data, load_best_model=saved, show_progress=show_progress)
        test_ranks = trainer.eval_collector.last_ranks if test_result else None
        test_users = trainer.eval_collector.last_users if test_ranks is not None else None
        test_values = trainer.eval_collector.last_values if test_ranks is not None else None

        candidates = None
        if config["candidate_negatives"] and test_result:
            splits = (train_data._dataset, valid_data._dataset, test_data._dataset)
            candidates = evaluate_candidate_set(config, trainer, dataset, splits, config["candidate_negatives"])
            computed["candidate-set test"] = candidates.metrics
            logger.info(set_color("candidate-set test", "yellow") + f": {candidates.metrics}")

        reward_result = None
        if config["stage"] == ALIGN_STAGE and test_result:
            reward_result = computed["reward estimate"] = trainer.evaluate_reward(test_data)
            logger.info(set_color("reward estimate", "yellow") + f": {reward_result}")

        protocol = Protocol.of(config, dataset)
    # The terminal's closing summary (cli.summary) says the same; the log file keeps them with the run
    logger.info(set_color("protocol", "yellow") + f": {protocol.render()}", extra=LOG_FILE_ONLY)
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}", extra=LOG_FILE_ONLY)
    logger.info(set_color("test result", "yellow") + f": {test_result}", extra=LOG_FILE_ONLY)
    trainer.discard_snapshot()  # the results are complete: a re-run with this run_id trains afresh
    candidate_result, candidate_ranks, candidate_users = candidates or (None, None, None)
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "run_id": config["run_id"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "test_ranks": test_ranks,
        "test_users": test_users,
        "test_values": test_values,
        "candidate_result": candidate_result,
        "candidate_ranks": candidate_ranks,
        "candidate_users": candidate_users,
        "reward_result": reward_result,
        "protocol": protocol.render(),
        "protocol_fields": protocol.fields(),
        "saved_model_file": trainer.saved_model_file if saved else None,
        "log_file": log_file,
        "wall_time_s": time.perf_counter() - start + trainer.elapsed_before_s,
        "device": ", then ".join(trainer.devices),
        "threads": trainer.threads_used(),
    }


def dataset_sizes(dataset) -> str:
    """``943 users, 1,682 items, 100,000 interactions`` (the padding user and item left out)."""
    return f"{dataset.user_num - 1:,} users, {dataset.item_num - 1:,} items, {dataset.inter_num:,} interactions"


def run_header(
    config: Config, sizes: str, model: torch.nn.Module, threads: int, threads_from: str, log_file: str
) -> str:
    """The run in three lines, what the terminal shows instead of the config and the model's structure."""
    parameters = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    how = "; one when other processes want the cores" if threads_from == IDLE_CORES and threads > 1 else ""
    processes = f" in each of {distributed.world_size()} DDP processes" if distributed.is_distributed() else ""
    return "\n".join(
        [
            f"{config['model']} on {config['dataset']}: {sizes}; {parameters:,} trainable parameters",
            f"device {config['device']}{processes}, {threads} torch thread(s) "
            f"(from {threads_from}{how}; --threads=N to fix), "
            f"seed {config['seed']}, up to {config['epochs']} epochs",
            f"config, dataset and model structure: {log_file} (--verbose=True prints them here)",
        ]
    )


def prepare_output_dirs(config: Config) -> None:
    """Create the folders a run writes to, or stop with one line before anything else runs.

    They are ``checkpoint_dir``, ``<log_dir>/<model>`` and RecBole's ``log_tensorboard`` (a fixed name in the working
    directory, so a read-only working directory fails here, not at the trainer's first write).

    Raises:
        RunFileError: a folder that cannot be created or written to.
    """
    folders = {
        "checkpoint_dir": config["checkpoint_dir"],
        "log_dir": os.path.join(config["log_dir"], config["model"]),
        "log_tensorboard (RecBole's, in the working directory)": "log_tensorboard",
    }
    for key, folder in folders.items():
        try:
            os.makedirs(folder, exist_ok=True)
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
            reason = error.strerror if isinstance(error, OSError) else str(error)
            raise RunFileError(f"{key}: cannot create folder {shorten(repr(folder))}: {reason}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RunFileError(f"{key}: folder {shorten(repr(folder))} is not writable")


@contextmanager
def results_reported_on_failure(computed: dict[str, Any]) -> Iterator[None]:
    """On an exception inside the block, log the results in ``computed`` (to the console and the log file) before
    it propagates: a failure after training must not lose what training and testing measured."""
    try:
        yield
    except BaseException:
        results = "; ".join(f"{name}: {result}" for name, result in computed.items() if result is not None)
        getLogger().error(f"the run failed after training; results computed so far: {results}")
        raise


def candidate_sampler(config: Config) -> tuple[str, str]:
    """RecBole's distribution and evaluation-mode prefix for the config's ``candidate_sampling`` (one of
    ``uniform`` and ``popularity``: :mod:`~recbole_oneranker.config_rules`)."""
    return CANDIDATE_SAMPLERS[config["candidate_sampling"]]


def candidate_set_loader(config: Config, dataset, splits, negatives: int) -> tuple[Config, NegSampleEvalDataLoader]:
    """The config and test loader of the candidate-set protocol: each test target with ``negatives`` items drawn by
    ``candidate_sampling`` (RecBole's ``uniN`` / ``popN`` modes; for a sequential model any item but the target, as a
    repeat of a history item is a valid recommendation there)."""
    distribution, mode = candidate_sampler(config)
    candidate_config = copy.copy(config)
    candidate_config.final_config_dict = {
        **config.final_config_dict,
        "eval_args": {**config["eval_args"], "mode": {**config["eval_args"]["mode"], "test": f"{mode}{negatives}"}},
        "test_neg_sample_args": {"distribution": distribution, "sample_num": negatives},
        "metrics": ["Hit", "NDCG"],
        "topk": list(CANDIDATE_TOPK),
    }
    _, _, test_sampler = create_samplers(candidate_config, dataset, splits)
    return candidate_config, NegSampleEvalDataLoader(candidate_config, splits[2], test_sampler, shuffle=False)


class CandidateSetResult(NamedTuple):
    """What :func:`evaluate_candidate_set` measured."""

    metrics: dict[str, float]  # HR@K and NDCG@K for K in CANDIDATE_TOPK
    ranks: np.ndarray  # [test users] 1-based rank of each target among its candidates
    users: np.ndarray | None  # [test users] their user ids, in the ranks' order (None: no user id in the batches)


def evaluate_candidate_set(config: Config, trainer, dataset, splits, negatives: int) -> CandidateSetResult:
    """The OneRanker paper's candidate-set protocol on the test targets, with the model as it is now.

    Each test target is ranked among itself and ``negatives`` sampled items (:func:`candidate_set_loader`; RecBole
    scores them with ``predict``); returns HR@K and NDCG@K for K in 1, 3, 5, 10, 15, and each user's rank, so
    that two models can be paired user by user.
    """
    candidate_config, loader = candidate_set_loader(config, dataset, splits, negatives)
    own = trainer.config, trainer.evaluator, trainer.eval_collector
    trainer.config, trainer.evaluator = candidate_config, Evaluator(candidate_config)
    collector = trainer.eval_collector = ValueCollector(candidate_config)
    try:
        metrics = dict(trainer.evaluate(loader, load_best_model=False))
    finally:
        trainer.config, trainer.evaluator, trainer.eval_collector = own
    return CandidateSetResult(metrics, collector.last_ranks, collector.last_users)
