"""Trainers: RecBole's training loop with safe checkpoints, per-run paths, seen-item masking and value metrics.

Every model, RecBole's built-ins included, is trained through :class:`Trainer` (or a RecBole special trainer
with :class:`RunSafetyMixin` mixed in), so all rows of a comparison share checkpointing and evaluation code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import time
from typing import Any

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType, set_color

from recbole_oneranker import compat, distributed
from recbole_oneranker.errors import RunFileError, shorten
from recbole_oneranker.evaluator import ValueCollector, ranking
from recbole_oneranker.threads import ContentionGuard


class RunSafetyMixin:
    """What this package changes in any RecBole trainer (mix in before the RecBole class).

    - checkpoints hold only tensors and plain values and load with ``weights_only=True`` (:mod:`..compat` fix 3);
    - the checkpoint file is named after the run id, so parallel runs never share one (fix 5);
    - ``mask_seen_items: True`` removes each user's history from full-ranking scores (HSTU's protocol);
    - the evaluation collector also gathers target values, for GMV@K;
    - ``adam_betas`` sets the betas of Adam / AdamW (RecBole always uses torch's defaults);
    - a model may define ``on_train_epoch_start(epoch)``, called before each training epoch (e.g. OneRanker
      refreshes its Fake Item Tokens there);
    - ``resume_training: True`` snapshots the whole training state after every validation and continues from the
      snapshot in a later process (see :meth:`fit`);
    - ``compile_model: True`` runs the model's ``forward`` through ``torch.compile`` (see :func:`compile_forward`);
    - a :class:`~recbole_oneranker.threads.ContentionGuard` set as ``contention_guard`` is checked before every
      training epoch, and drops the run to one torch thread when other processes want its cores;
    - in a distributed run (:mod:`recbole_oneranker.distributed`): the model is wrapped for DDP on the CPU as on
      CUDA (``compat`` fix 14), each user is evaluated once and every process gets the metrics of the whole split
      (fix 15), only rank 0 writes and reads checkpoints and snapshots (it sends what it reads to the others, so
      the other machines need no shared disk), a snapshot holds every rank's random generators, and the ranks'
      parameters are checked to be equal after training.
    """

    def __init__(self, config, model):
        with compat.ddp_wrapping_deferred(config):
            super().__init__(config, model)
        self.distributed = not config["single_spec"]
        if self.distributed:
            self.distributed_model = compat.distributed_model(model, self.device)
        run_id = config["run_id"] or compat.unique_run_id(config["model"], config["dataset"])
        self.saved_model_file = os.path.join(self.checkpoint_dir, f"{run_id}.pth")
        self.mask_seen_items = bool(config["mask_seen_items"])
        if self.mask_seen_items and model.type != ModelType.SEQUENTIAL:
            raise ValueError(
                "mask_seen_items applies to sequential models; RecBole already removes the training "
                "history of general models from full-ranking scores"
            )
        self.eval_collector = ValueCollector(config)
        self.resume_file = (
            os.path.join(self.checkpoint_dir, f"{run_id}-resume.pth") if config["resume_training"] else None
        )
        self.elapsed_before_s = 0.0  # training seconds of earlier processes, when resumed from a snapshot
        self.best_checkpoint: dict[str, Any] | None = None  # with resume_training: the best weights, for the snapshot
        self.devices = [describe_device(self.device)]  # what the run's processes ran on, in order of first use
        if config["compile_model"]:
            compile_forward(model)
        self._clock_start = time.perf_counter()
        self.contention_guard: ContentionGuard | None = None
        self.threads_at_start = torch.get_num_threads()
        self.thread_drop_epoch: int | None = None  # the epoch from which the guard left one thread

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        betas = self.config["adam_betas"]
        if betas is not None and isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            for group in optimizer.param_groups:
                group["betas"] = tuple(float(beta) for beta in betas)
        return optimizer

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._give_back_contended_threads(epoch_idx)
        hook = getattr(self.model, "on_train_epoch_start", None)
        if hook is not None:
            hook(epoch_idx)
            distributed.broadcast_buffers(self.model)  # e.g. centroids: every rank keeps rank 0's
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def _give_back_contended_threads(self, epoch_idx: int) -> None:
        drop = None if self.contention_guard is None else self.contention_guard.check()
        if drop is None:
            return
        threads, other_cores = drop
        self.logger.warning(
            f"other processes used {other_cores:.1f} cores while this run's {torch.get_num_threads()} threads wanted "
            f"them: continuing on {threads} torch thread from epoch {epoch_idx} (--threads=N keeps a count)"
        )
        torch.set_num_threads(threads)
        self.thread_drop_epoch = epoch_idx

    def threads_used(self) -> str:
        """The torch threads this run trained on: ``'2'``, or ``'2, then 1 from epoch 7'``."""
        if self.thread_drop_epoch is None:
            return str(self.threads_at_start)
        return f"{self.threads_at_start}, then 1 from epoch {self.thread_drop_epoch}"

    def fit(self, train_data, valid_data=None, *args, **kwargs):
        """RecBole's ``fit``; with ``resume_training``, continued from this run's snapshot when it has one.

        The snapshot (``<checkpoint_dir>/<run_id>-resume.pth``) is written after every validation and holds what
        the next epoch depends on: weights, optimizer, early-stopping state, best validation result, the random
        generators (torch, numpy, python, the training loader's shuffle) and the state of ``callback_fn`` when it
        has ``state_dict`` / ``load_state_dict``. A run killed at any point and started again with the same
        ``run_id`` therefore trains the epochs it had not validated and ends as the uninterrupted run would. The
        snapshot also holds the best weights so far (without their optimizer state): a run moved to another machine
        with its snapshot alone gets its best checkpoint (``<run_id>.pth``) back from it. :meth:`discard_snapshot`
        removes the file once the caller has tested.
        """
        if self.resume_file is None:  # special trainers' fit take other arguments: pass them through untouched
            fitted = super().fit(train_data, valid_data, *args, **kwargs)
            self._check_ranks_agree()
            return fitted
        callback_fn = kwargs.pop("callback_fn", None)
        has_snapshot = distributed.from_first(os.path.exists(self.resume_file))  # rank 0's disk holds it
        finished = has_snapshot and self._restore_snapshot(train_data, callback_fn)
        if finished:
            self.logger.info(f"Training had finished before ({self.resume_file}): only testing")
            return self.best_valid_score, self.best_valid_result

        def after_validation(epoch_idx: int, valid_score: float) -> None:
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)
            self._save_snapshot(epoch_idx, train_data, callback_fn)

        fitted = super().fit(train_data, valid_data, *args, callback_fn=after_validation, **kwargs)
        self._check_ranks_agree()
        return fitted

    def _check_ranks_agree(self) -> None:
        """In a distributed run, stop when the processes ended training with different parameters or buffers
        (a step whose gradients were not averaged): their checkpoint would not be the model they evaluated."""
        if not self.distributed:
            return
        digests = distributed.gathered(distributed.state_digest(self.model))
        differing = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differing:
            raise RuntimeError(
                f"DDP: ranks {differing} ended training with other parameters than rank 0 (their gradients were not "
                "averaged in some step); please report the model and the config"
            )

    @property
    def elapsed_s(self) -> float:
        """Seconds this run has trained: since this trainer was built, plus earlier processes' when resumed."""
        return self.elapsed_before_s + time.perf_counter() - self._clock_start

    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return compat.checkpoint_state(
            config=self.config,
            epoch=epoch,
            cur_step=self.cur_step,
            best_valid_score=self.best_valid_score,
            model=self.model,
            optimizer=self.optimizer,
        )

    def _save_snapshot(self, epoch_idx: int, train_data, callback_fn) -> None:
        rank_random_states = distributed.gathered(_random_states(train_data))  # every rank takes part
        if not distributed.is_first():
            return
        state = self._checkpoint_state(epoch_idx)
        state.update(
            best_valid_result={name: float(value) for name, value in (self.best_valid_result or {}).items()},
            # RecBole stops once the early-stopping counter passes stopping_step
            finished=self.cur_step > self.stopping_step or epoch_idx + 1 >= self.epochs,
            elapsed_s=self.elapsed_s,
            devices=self.devices,
            random_states=rank_random_states[0],
            rank_random_states=rank_random_states,
            callback_state=compat.plain_value(callback_fn.state_dict()) if hasattr(callback_fn, "state_dict") else None,
            best_checkpoint=self.best_checkpoint,
        )
        state.update(self.snapshot_state())
        save_atomically(state, self.resume_file)

    def _restore_snapshot(self, train_data, callback_fn) -> bool:
        """Load the snapshot into this trainer; returns whether its training had already finished."""
        try:
            snapshot = self.resume_checkpoint(self.resume_file)
        except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, OSError) as error:
            reason = shorten(str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise RunFileError(
                f"{self.resume_file}: the resume snapshot of run '{self.config['run_id']}' cannot be read ({reason}); "
                f"to start this run afresh, delete it: rm '{self.resume_file}'"
            ) from None
        self.saved_model_file = self.resume_file.removesuffix("-resume.pth") + ".pth"  # the best, not the snapshot
        self.best_valid_result = snapshot["best_valid_result"]
        self.elapsed_before_s = float(snapshot["elapsed_s"])
        self.devices = list(dict.fromkeys([*snapshot.get("devices", []), *self.devices]))  # older snapshots: none
        _set_random_states(_own_random_states(snapshot), train_data)
        if snapshot["callback_state"] is not None and hasattr(callback_fn, "load_state_dict"):
            callback_fn.load_state_dict(snapshot["callback_state"])
        self.best_checkpoint = snapshot.get("best_checkpoint")  # older snapshots: none
        self.load_snapshot_state(snapshot)
        if not os.path.exists(self.saved_model_file) and distributed.is_first():
            self._restore_best_checkpoint()
        return bool(snapshot["finished"])

    def snapshot_state(self) -> dict[str, Any]:
        """What a trainer subclass adds to the resume snapshot (tensors and plain values): nothing here."""
        return {}

    def load_snapshot_state(self, snapshot: dict[str, Any]) -> None:
        """Restore what :meth:`snapshot_state` added, from a loaded snapshot."""

    def _restore_best_checkpoint(self) -> None:
        """Write ``<run_id>.pth`` from the snapshot: the run was moved here without its best checkpoint."""
        if self.best_checkpoint is None:
            raise FileNotFoundError(
                f"{self.resume_file} continues a run whose best checkpoint {self.saved_model_file} is missing, and "
                "the snapshot (written by an older version) does not hold it: copy that file beside the snapshot"
            )
        save_atomically(self.best_checkpoint, self.saved_model_file)
        self.logger.info(f"Best checkpoint (epoch {self.best_checkpoint['epoch']}) restored from the snapshot")

    def discard_snapshot(self) -> None:
        """Remove this run's snapshot (``resume_training``): call once the run's results are safe."""
        if self.resume_file is not None and distributed.is_first() and os.path.exists(self.resume_file):
            os.remove(self.resume_file)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = self._checkpoint_state(epoch)
        save_atomically(state, saved_model_file)
        if self.resume_file is not None:  # kept for the snapshots; copied, since state_dict() shares the weights
            best = {key: value for key, value in state.items() if key != "optimizer"}
            for part in ("state_dict", "other_parameter"):
                if best[part] is not None:
                    best[part] = {key: _copied(value) for key, value in best[part].items()}
            self.best_checkpoint = best
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load_model_state(self, checkpoint_file):
        """Load ``checkpoint_file`` into the model; returns the checkpoint. In a distributed run rank 0 reads the
        file and sends it to the others, so only rank 0's machine needs it."""
        if self.distributed:
            checkpoint = compat.load_checkpoint(checkpoint_file, "cpu") if distributed.is_first() else None
            checkpoint = distributed.from_first(checkpoint)
        else:
            checkpoint = compat.load_checkpoint(checkpoint_file, self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        return checkpoint

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = self._load_model_state(resume_file)
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"checkpoint {resume_file} was trained as {checkpoint['config']['model']}, "
                f"not {self.config['model']}: loading its state may fail"
            )
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        _check_optimizer_state(self.optimizer)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")
        return checkpoint

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            self._load_model_state(checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        if self.distributed and eval_data:
            self.eval_collector.shard_indices = list(eval_data.sampler)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _map_reduce(self, result, num_sample):
        """``result`` as it is: the collector already computed the whole split's metrics in every process, where
        RecBole averages the processes' own metrics with wrong weights (``compat`` fix 15)."""
        return result

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.mask_seen_items:
            # As in HSTU, a target the user has seen before is masked too: this protocol does not reward repeat
            # consumption.
            scores = ranking.mask_seen_items(scores, interaction[self.model.ITEM_SEQ])
        return interaction, scores, positive_u, positive_i


def save_atomically(state: dict[str, Any], path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file renamed over it: a kill or a full disk during the write
    leaves the previous file intact, never a truncated one.

    Raises:
        RunFileError: the file cannot be written (the disk is full, the folder is gone or read-only).
    """
    partial = f"{path}.partial"
    try:
        torch.save(state, partial)
        os.replace(partial, path)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a failed write as a RuntimeError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise RunFileError(f"{path}: cannot write: {shorten(reason)}; the previous file is kept") from None
    finally:  # after a failure or an interrupt (gone after a success)
        with contextlib.suppress(OSError):
            os.remove(partial)


def describe_device(device: torch.device | str) -> str:
    """What a run trains on, recorded beside its wall time: ``'cpu'`` or e.g. ``'cuda: NVIDIA H100 80GB HBM3'``."""
    device = torch.device(device)
    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def compile_forward(model: torch.nn.Module) -> None:
    """Replace ``model.forward`` by its ``torch.compile`` version, in place.

    Every RecBole model computes its loss and scores through ``forward``, so training and evaluation both take the
    compiled path. Only the instance attribute changes: parameters, ``state_dict`` keys and checkpoints stay those
    of the eager model. Inductor fuses the elementwise work around the matmuls (dropout, residuals, layer norm),
    which dominates small models on a CPU. On this project's 2-core machine, RecBole's SASRec on ml-100k (batches of
    2048 x 50, d = 64) trains a 2-layer batch 1.9x faster, and a 4-layer epoch in 426-452 s instead of 600-640 s
    with two runs sharing the cores (1.4x). Compiling takes a minute or two for the first batch and again for the first
    batches of another shape or mode (the last, smaller batch; evaluation); a model whose batches change shape
    often (bucketed whole-sequence batches) gains less. Dropout draws its masks from Inductor's own generator, so
    a compiled run differs from an eager one of the same seed as two seeds do, and is itself reproducible.
    Models compile without Inductor's pattern rewrites, which get RecBole's one-head and LightSANs attention
    wrong (``compat`` fix 9).

    Compiling a model first clears the process's compile caches. Dynamo keeps compiled code per function, not per
    model, and guards it on the model's structure and constants (layer count, dropout rates); a study worker that
    trains trial after trial in one process would pile up every earlier trial's entries until Dynamo's recompile
    limit (8) and then run the rest of its trials eagerly, silently losing the speed-up. A process trains one model
    at a time, so nothing of use is dropped; an earlier model called again simply compiles again.
    """
    torch.compiler.reset()
    model.forward = torch.compile(model.forward, options=compat.inductor_options())


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Raise ``RuntimeError`` when a loaded optimizer state does not fit its parameters. Torch matches the state to
    the parameters by position, so a snapshot of a model whose parameters were reordered since loads without error
    and fails at its first step, with an error that names neither the file nor the cause."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != parameter.shape:
                    shapes = f"{tuple(value.shape)} != {tuple(parameter.shape)}"
                    raise RuntimeError(f"optimizer state {name} {shapes}: the model has changed")


def _copied(value: Any) -> Any:
    """A tensor's own copy (detached), so later training steps do not change it; other values as they are."""
    return value.detach().clone() if torch.is_tensor(value) else value


def _random_states(train_data) -> dict[str, Any]:
    """Every random generator training draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if getattr(train_data, "generator", None) is not None:  # RecBole's loaders shuffle with their own generator
        states["loader"] = train_data.generator.get_state()
    return states


def _own_random_states(snapshot: dict[str, Any]) -> dict[str, Any]:
    """This process's random generators in ``snapshot``: its rank's when the snapshot holds one per rank of a run
    of this size, else rank 0's (a snapshot of a run with another number of processes, or an older one)."""
    per_rank = snapshot.get("rank_random_states") or []
    return per_rank[distributed.rank()] if len(per_rank) == distributed.world_size() else snapshot["random_states"]


def _set_random_states(states: dict[str, Any], train_data) -> None:
    # The snapshot was loaded onto the run's device, but generator states are CPU byte tensors whatever the device.
    torch.set_rng_state(states["torch"].cpu())
    kind, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    if "loader" in states:
        train_data.generator.set_state(states["loader"].cpu())


class Trainer(RunSafetyMixin, RecBoleTrainer):
    """RecBole's ``Trainer`` with this package's run safety; the trainer of every model by default."""


def with_run_safety(trainer_class: type) -> type:
    """``trainer_class`` (a RecBole special trainer) with :class:`RunSafetyMixin` mixed in."""
    if issubclass(trainer_class, RunSafetyMixin):
        return trainer_class
    return type(trainer_class.__name__, (RunSafetyMixin, trainer_class), {"__doc__": trainer_class.__doc__})
