"""Every fix that lets RecBole 1.2.1 run on today's stack, in one place.

RecBole 1.2.1 (February 2025) is frozen upstream. On Python 3.11 with numpy 2, torch >= 2.6 and a current
setuptools it breaks in the ways listed below (reproduced in ``../shared/reference/recbole-notes.md`` section 7).
Nothing here patches site-packages: each fix is a function that the package's own ``Config``, ``Trainer`` and
logger call, and :func:`apply` runs the import-time ones once when ``recbole_oneranker`` is imported.

1. numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.bool8``; RecBole's
   ``Config.compatibility_settings`` reads ``np.float_`` at every ``Config()`` and ray reads ``np.bool8``.
   -> :func:`restore_numpy_aliases` puts the four names back as aliases of their numpy 2 spellings.
2. pandas 3 turns RecBole's chained ``df[f].fillna(..., inplace=True)`` into silent no-ops (copy-on-write), so NaN
   floats reach the model. -> :func:`check_pandas` refuses pandas >= 3 with one clear line (pyproject pins < 3).
3. torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole saves its whole ``Config`` object with
   pickle protocol 4, which that loader rejects. Loading with ``weights_only=False`` would run pickled code.
   -> :func:`checkpoint_state` saves only tensors and plain values and :func:`load_checkpoint` reads them with
   ``weights_only=True``.
4. A sequential model with ``loss_type: CE`` raises unless ``train_neg_sample_args: ~`` is set, and RecBole's own
   ``overall.yaml`` sets uniform negatives, so even ``SASRec`` with its defaults fails.
   -> :func:`default_negatives_for_ce` drops the inherited negatives for CE models unless the user asked for some.
5. RecBole names checkpoints ``<model>-<time to the second>.pth`` and logs ``<model>-<dataset>-<time>-<hash>``, so
   parallel runs (tuning trials, seeds) overwrite each other. -> :func:`unique_run_id` gives every run its own id,
   used for its checkpoint, log file and tensorboard folder.
6. RecBole's own code triggers pandas and torch FutureWarnings on every run (chained in-place ``fillna``, the
   ``torch.cuda.amp.GradScaler`` spelling) that its users cannot act on. -> :func:`silence_recbole_future_warnings`
   hides FutureWarnings raised from ``recbole.*`` modules only; our own code's warnings still show.
7. ray 2.6.3 imports ``pkg_resources`` (setuptools < 82) and is only needed by ``recbole.quick_start``.
   -> this package never imports ``recbole.quick_start``: the run path does not import ray at all.
8. ``Config._convert_config_dict`` turns the strings of ``--key=value`` arguments and of ``config_dict`` into
   values with ``eval`` inside a method whose locals are ``key``, ``param``, ``value`` and ``config_dict``: so
   ``--value_field=value`` becomes the previous key's value, ``--x=key`` the key's name (silently), and any
   expression runs. -> :func:`convert_config_strings` reads Python literals only (``ast.literal_eval``: numbers,
   lists, dicts, None, True/False in any case); every other string stays the string it is. The rule is
   that of :mod:`recbole_oneranker.overrides`, which every ``KEY=VALUE`` of the CLI, tuning and benchmarks goes through.
9. With ``compile_model: True``, torch 2.13's Inductor rewrites softmax attention (``softmax(q k^T / s [+ mask])
   [dropout] v``, ``torch/_inductor/fx_passes/fuse_attention.py``) into a fused call, and gets two of RecBole's
   attention layers wrong. With one head, the rewrite of ``MultiHeadAttention`` (patterns 5 and 6) returns
   ``[B, L, L, D]`` elements where ``[B, L, D]`` are expected: compiling fails ("shape [B, L, D] is invalid for
   input of size B*L*L*D") at the first batch, in training as in evaluation. The rewrite of LightSANs' low-rank
   attention (patterns 1 and 3), whose softmax runs over the second-to-last axis, ignores that axis and takes
   the softmax over the last one (pytorch/pytorch#196468): no error, and the scores change (by up to 5e-4 on
   scores of at most 0.44 on a tiny slice of ml-100k, enough to reorder 1.7% of the top-10 slots).
   -> :func:`inductor_options` turns Inductor's pattern rewrites off for every model. Then 17 of RecBole's
   sequential models (SASRec and BERT4Rec with 1 and 2 heads, LightSANs, FEARec, CORE, GCSAN, SRGNN, Caser,
   NextItNet, SHAN, HGN, RepeatNet, SINE, NPE, GRU4Rec, NARM, STAMP) score as eager to 3e-6. The rewrites buy
   nothing measurable here: one training step on one CPU core, rewrites on / off, took 1.44 / 1.35 s for
   RecBole's SASRec (2 heads, batch 512), 0.60 / 0.56 s for OneRanker and 0.25 / 0.24 s for HSTU (ml-100k
   defaults), and the compiled step stays faster than the eager one (1.80 s for that SASRec batch; 5.7 s against
   8.9 s for a one-head, 2-layer encoder on 2048 x 50 x 64).
10. ``use_gpu`` ("Whether or not to use GPU" in RecBole's ``overall.yaml``) is not read when the device is chosen:
   ``Config._init_device`` takes the GPU whenever torch sees one and ``gpu_id`` is not empty, so ``use_gpu: False``
   trained on the GPU anyway (seen on an H100). ``gpu_id: ''`` does keep a run on the CPU, but by setting
   ``CUDA_VISIBLE_DEVICES`` for the whole process. -> :func:`honour_use_gpu` puts a ``use_gpu: False`` run on the
   CPU and leaves the GPUs visible to the rest of the process.
11. ``create_dataset`` and ``data_preparation`` unpickle ``<checkpoint_dir>/<dataset>-<DatasetClass>.pth`` and
   ``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth`` whenever those files exist, even with
   ``save_dataset`` and ``save_dataloaders`` off; a pickle runs the code it names when read, so a file copied into
   ``saved/`` ran inside every later run. -> the run path builds datasets and loaders with
   :func:`recbole_oneranker.data.create_dataset` and :func:`recbole_oneranker.data.data_preparation`, which never
   look for either file, and :mod:`recbole_oneranker.config_rules` refuses the four cache keys in one line
   (``docs/security.md``).
12. RecBole 1.2.1 declares ``ray (<=2.6.3,>=1.13.0)``, and ray 2.6.3 has wheels for CPython <= 3.11 only, so pip
   cannot install RecBole with its dependencies on Python 3.12 or 3.13. There RecBole is installed with
   ``pip install --no-deps recbole==1.2.1`` and this package declares RecBole's other runtime dependencies
   (``pyproject.toml``; the README's set-up does both). Without ray, RecBole's ``recbole.quick_start`` (its
   ``run_recbole``, ``run_recboles`` and the ``objective_function`` of its ray hyper-parameter tuning) would fail
   with a bare "No module named 'ray'". -> :func:`check_recbole` refuses a missing RecBole, or another version, with
   one line naming the install command, and :func:`explain_missing_ray` makes an import of ``recbole.quick_start``
   without ray fail with one line naming the fix (Python 3.11, or this package's own entry points, which need no ray).
13. RecBole's distributed runs need a GPU per process: ``Config._init_device`` starts an NCCL group (asserting that
   ``gpu_id`` lists ``nproc`` GPUs) and puts each process on ``cuda:<local_rank>``; a CPU run cannot be distributed.
   -> :func:`distributed_device` gives each process of a run started by torchrun or ``--nproc`` (the group is up
   already, gloo on the CPU, nccl on CUDA: :mod:`recbole_oneranker.distributed`) its device and RecBole's
   distributed flags (``single_spec: False``; ranks other than 0 quiet).
14. RecBole's trainer wraps the model as ``DistributedDataParallel(model, device_ids=[local_rank])`` after
   converting its batch norms to ``SyncBatchNorm``; torch refuses ``device_ids`` for a CPU module and
   ``SyncBatchNorm`` trains on CUDA only. -> :func:`ddp_wrapping_deferred` keeps RecBole's trainer from wrapping,
   and :func:`distributed_model` wraps as torch wants for the device. RecBole's gradient sync itself is kept: it
   calls ``model.calculate_loss`` directly (not through DDP's forward), after a dummy DDP forward that arms the
   gradient hooks and with ``0 * sum(parameters)`` added to the loss so that every parameter's gradient is
   averaged in every step, whatever the model's loss touches (length buckets, whole-sequence rows included).
15. RecBole's distributed evaluation gives wrong metrics (its PR #1872, unmerged in 1.2.1): ``DistributedSampler``
   pads each process's shard with rows of others so that all have the same count, and ``_map_reduce`` averages the
   processes' metrics weighted by ``len(batched_data)``, the size of a batch's 4-tuple. -> :func:`rows_of_all_ranks`
   gathers every process's evaluated rows with the loader indices they came from, keeps each index once and puts
   them in index order: every process then computes the metrics from exactly the rows one process would have
   evaluated, in the same order, and the trainer's ``_map_reduce`` passes them through.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import math
import os
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from recbole_oneranker import distributed
from recbole_oneranker.overrides import parse_value

_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_", "bool8": "bool_"}


class IncompatibleEnvironmentError(RuntimeError):
    """A package version that RecBole 1.2.1 cannot run with."""


def restore_numpy_aliases() -> None:
    """Fix 1: give numpy 2 back the four aliases RecBole and ray still use (no-op on numpy 1.x)."""
    for old_name, new_name in _NUMPY_ALIASES.items():
        if old_name not in np.__dict__:
            setattr(np, old_name, getattr(np, new_name))


def check_pandas() -> None:
    """Fix 2: refuse pandas >= 3, whose copy-on-write silently breaks RecBole's NaN filling."""
    import pandas

    major = int(pandas.__version__.split(".")[0])
    if major >= 3:
        raise IncompatibleEnvironmentError(
            f"pandas {pandas.__version__} is not supported: RecBole 1.2.1 fills missing values with chained "
            "in-place calls that are no-ops under pandas 3; install 'pandas>=2,<3'"
        )


def plain_value(value: Any) -> Any:
    """A config value as something ``torch.load(weights_only=True)`` accepts (containers, str, numbers)."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass that the loader rejects
        return plain_value(value.item())
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return {str(key): plain_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    return str(value)


def checkpoint_state(
    *,
    config: Any,
    epoch: int,
    cur_step: int,
    best_valid_score: float,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Fix 3, saving side: a checkpoint made only of tensors and plain values.

    The config is kept as a plain dict (enums by name, devices as strings) for the record; it is never
    needed to rebuild anything, so nothing executable goes into the file.
    """
    other_parameter = model.other_parameter()
    return {
        "config": plain_value(dict(config.final_config_dict)),
        "epoch": int(epoch),
        "cur_step": int(cur_step),
        "best_valid_score": float(best_valid_score),
        "state_dict": model.state_dict(),
        "other_parameter": other_parameter if other_parameter is None else _plain_tensors(other_parameter),
        "optimizer": optimizer.state_dict(),
    }


def _plain_tensors(mapping: dict[str, Any]) -> dict[str, Any]:
    """Non-parameter model state: tensors stay tensors, everything else becomes plain values."""
    return {key: value if torch.is_tensor(value) else plain_value(value) for key, value in mapping.items()}


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str) -> dict[str, Any]:
    """Fix 3, loading side: read a checkpoint without executing pickled code (``weights_only=True``)."""
    return torch.load(path, map_location=device, weights_only=True)


def default_negatives_for_ce(final_config: dict[str, Any], external_config: dict[str, Any]) -> None:
    """Fix 4: a CE model trains on all items, so inherited default negatives are dropped.

    Only negatives that come from RecBole's defaults are dropped; negatives a user set explicitly (config file,
    dict or command line) are kept, and RecBole then reports the conflict itself.
    """
    if final_config.get("loss_type") == "CE" and "train_neg_sample_args" not in external_config:
        final_config["train_neg_sample_args"] = None


def convert_config_strings(config: dict[str, Any]) -> dict[str, Any]:
    """Fix 8: each string value of ``config`` becomes what :func:`~recbole_oneranker.overrides.parse_value` reads
    in it (a Python literal, else the string), in place; returns ``config``."""
    for key, text in config.items():
        if isinstance(text, str):
            config[key] = parse_value(text)
    return config


def unique_run_id(model: str, dataset: str) -> str:
    """Fix 5: an id no other run shares, even one started in the same second by another process."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{model}-{dataset}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def silence_recbole_future_warnings() -> None:
    """Fix 6: hide the FutureWarnings that RecBole 1.2.1's own code raises on every run."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def inductor_options() -> dict[str, Any]:
    """Fix 9: the Inductor options under which every model compiles correctly."""
    return {"pattern_matcher": False}


def honour_use_gpu(final_config: dict[str, Any]) -> None:
    """Fix 10: a single-process run with ``use_gpu: False`` gets the CPU as its device, in place."""
    if not final_config["use_gpu"] and final_config["single_spec"]:
        final_config["device"] = torch.device("cpu")


def distributed_device(final_config: dict[str, Any], place: distributed.Place) -> None:
    """Fix 13: the device and RecBole's distributed flags of the process at ``place``, in place.

    The process takes ``cuda:<local_rank>`` when the run uses the GPU (``use_gpu``, and torch sees one), else the
    CPU; ranks other than 0 log errors only and show no progress bars.

    Raises:
        ValueError: a GPU run with more processes on this machine than GPUs.
    """
    on_gpu = bool(final_config["use_gpu"]) and torch.cuda.is_available()
    if on_gpu and place.local_world_size > torch.cuda.device_count():
        raise ValueError(
            f"{place.local_world_size} processes on this machine need as many GPUs, torch sees "
            f"{torch.cuda.device_count()}; run fewer, or --use_gpu=False to train on the CPU (gloo)"
        )
    final_config["device"] = torch.device("cuda", place.local_rank) if on_gpu else torch.device("cpu")
    final_config.update(
        single_spec=False,
        local_rank=place.local_rank,
        world_size=place.world_size,
        offset=place.rank - place.local_rank,
    )
    if place.rank != 0:
        final_config.update(state="error", show_progress=False, verbose=False)


@contextmanager
def ddp_wrapping_deferred(config: Any) -> Iterator[None]:
    """Fix 14: inside the block (RecBole's trainer constructor), the config reads as single-process, so RecBole
    does not wrap the model in a way torch refuses on the CPU; :func:`distributed_model` wraps it after."""
    single_spec = config.final_config_dict["single_spec"]
    config.final_config_dict["single_spec"] = True
    try:
        yield
    finally:
        config.final_config_dict["single_spec"] = single_spec


def distributed_model(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """Fix 14: ``model`` wrapped for DDP on ``device`` (its GPU named on CUDA, where batch norms become
    ``SyncBatchNorm`` as in RecBole; nothing named on the CPU). Wrapping gives every process rank 0's parameters
    and buffers."""
    if device.type == "cuda":
        return DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(model), device_ids=[device])
    return DistributedDataParallel(model)


# The entries of RecBole's evaluation data struct with one row per evaluated loader index, in loader order.
EVALUATION_ROW_KEYS = ("rec.items", "rec.topk", "rec.meanrank", "rec.score", "data.label")


def rows_of_all_ranks(rows: dict[str, torch.Tensor], indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Fix 15: every process's evaluated ``rows``, each loader index once, in index order.

    Args:
        rows: this process's rows of each kind (``rec.topk``, the users, ...), one per index of ``indices``.
        indices: the loader indices this process evaluated, in order (its ``DistributedSampler``'s, padding
            included).

    Raises:
        RuntimeError: a kind of rows whose count is not that of ``indices``: rows cannot be matched to users.
    """
    for key, values in rows.items():
        if len(values) != len(indices):
            raise RuntimeError(
                f"distributed evaluation: {len(values)} rows of {key} for the {len(indices)} loader indices of this "
                "process; rows cannot be matched to users"
            )
    shards = distributed.gathered((np.asarray(indices), {key: values.cpu() for key, values in rows.items()}))
    _, first_of_each = np.unique(np.concatenate([shard_indices for shard_indices, _ in shards]), return_index=True)
    keep = torch.from_numpy(first_of_each)
    return {key: torch.cat([shard_rows[key] for _, shard_rows in shards])[keep] for key in rows}


RECBOLE_VERSION = "1.2.1"
RECBOLE_INSTALL = f"pip install --no-deps recbole=={RECBOLE_VERSION}"
MISSING_RAY = (
    "ray is not installed: RecBole's recbole.quick_start (run_recbole, run_recboles and the objective_function of "
    "its ray hyper-parameter tuning) needs ray>=1.13,<=2.6.3, which installs on Python <= 3.11 only: use a Python "
    "3.11 virtualenv, where this package's set-up installs ray, or this package's run_recbole command, "
    "recbole_oneranker.quick_start.run and tuning/search.py (Optuna), which need no ray"
)


def check_recbole() -> None:
    """Fix 12: refuse a missing RecBole or another version than 1.2.1 with one line naming the install command.

    On Python <= 3.11 pip installs RecBole as a dependency of this package; on 3.12 and later the set-up installs it
    with ``--no-deps`` (ray cannot install there), so pip does not hold its version.
    """
    if importlib.util.find_spec("recbole") is None:
        raise IncompatibleEnvironmentError(
            f"RecBole is not installed: run '{RECBOLE_INSTALL}' (on Python >= 3.12 pip cannot install it with its "
            "dependencies, since its ray <= 2.6.3 has no wheels there; this package declares the others)"
        )
    try:
        version = importlib.metadata.version("recbole")
    except importlib.metadata.PackageNotFoundError:  # importable without installed metadata (a source checkout)
        return
    if version != RECBOLE_VERSION:
        raise IncompatibleEnvironmentError(
            f"RecBole {version} is installed; this package is written for RecBole {RECBOLE_VERSION}: "
            f"run '{RECBOLE_INSTALL}'"
        )


class _MissingRay(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: an import of ``recbole.quick_start``, RecBole's only module that imports ray, fails
    with :data:`MISSING_RAY` when ray cannot be found. Everything else, a probe such as ``find_spec("ray")`` and the
    import itself where ray is installed included, goes on to the usual finders."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "recbole.quick_start" and importlib.util.find_spec("ray") is None:
            raise ModuleNotFoundError(MISSING_RAY, name="ray")
        return None


def explain_missing_ray() -> None:
    """Fix 12: where ray is not installed, importing RecBole's ``recbole.quick_start`` fails with :data:`MISSING_RAY`
    instead of a bare "No module named 'ray'"."""
    if not any(isinstance(finder, _MissingRay) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MissingRay())


def apply() -> None:
    """Apply the import-time fixes (1, 2, 6 and 12). Safe to call more than once."""
    check_recbole()
    restore_numpy_aliases()
    check_pandas()
    silence_recbole_future_warnings()
    explain_missing_ray()
