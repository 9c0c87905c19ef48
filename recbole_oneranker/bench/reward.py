"""Reward-model evaluation: how well a RewardModel's stage probabilities separate and match the test split's labels.

    python bench/reward.py                                        # ml-100k: train (seed 2020), evaluate
    python bench/reward.py --dataset taobao --data-path dataset   # the Taobao funnel
    python bench/reward.py --checkpoint saved/RUN.pth             # a trained RewardModel, no training
    python bench/reward.py --dataset ml-100k --epochs 5 --set reward_negatives=32

Without ``--checkpoint`` a RewardModel is trained by RecBole's trainer with this package's run safety (the
``common`` settings of ``bench/configs/<dataset>.yaml`` when there is one, as the quality rows train, then ``--set``)
and its best checkpoint is evaluated. What differs from ``run_recbole``: the validation score that early stopping and
the best checkpoint follow is the mean over the stages of their AUC on the valid split (each valid target among
``--valid-negatives`` uniformly drawn items, the same draws every epoch), not NDCG@10 of the catalogue ranked by
reward. That ranking asks which item is the next one *and* loved, a different question from the stages' AUC: on
ml-100k (the model's first version, without ``candidate_history``) it peaked at epoch 8, where the first stage's
test AUC was 0.749, below the items' popularity (0.785), and 30 epochs gave 0.808 (docs/reward-model.md).

On each test user the model scores the true next item, labelled with the cascade stages its interaction reached and
its value, and ``--negatives`` items drawn uniformly from the catalogue but the target (seeded: the same draws for
every checkpoint of a dataset), labelled 0. Per stage, over the pooled candidates: ROC AUC (scikit-learn's
``roc_auc_score``), the expected calibration error (10 equal-width bins of the predicted probability: the bins' gaps
between mean prediction and observed rate, weighted by their share of candidates) and the mean predicted probability
against the observed rate; the AUC among the targets alone (does the stage head tell the targets that reached the
stage from those that did not; '-' when every target or none reached it); the AUC over the sampled items and the
targets that repeat an item of the user's history, and over them and the new targets; and for reference the AUC of
two rules: the candidate's popularity (``log(1 + count)`` in the test users' histories; it knows nothing of the user)
and the user's history with it (how far along the cascade the user went with the candidate before, 0 = never; it
knows nothing else). For the value head: the RMSE of the log value on the targets, beside that of the best constant
(the targets' own standard deviation of log value).

The report goes to ``results/reward-<dataset>.md`` (``--out``) with the command, the commit, the device and the seed.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.utils import init_seed
from sklearn.metrics import roc_auc_score

from recbole_oneranker.bench.common import (
    CONFIG_DIR,
    DEFAULT_DATA_PATH,
    EMBEDDED_DATASET,
    REPO,
    code_version,
    ensure_dataset,
    load_bench_config,
    run_command,
)
from recbole_oneranker.bench.quality import ValidationRecorder
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.sequential_recommender.rewardmodel import VALUE_FLOOR, history_levels
from recbole_oneranker.overrides import parse_assignments
from recbole_oneranker.quick_start import cpu_threads, init_logger, prepare_output_dirs
from recbole_oneranker.registry import get_model
from recbole_oneranker.trainer import Trainer, describe_device

MODEL = "RewardModel"
FIRST_SEED = 2020
CALIBRATION_BINS = 10
VALID_NEGATIVES = 100
# Bench-config settings that do not concern this report (it draws its own candidate sets).
IGNORED_COMMON_KEYS = ("candidate_negatives",)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE over ``bins`` equal-width bins of ``[0, 1]``: ``sum_b n_b / n * |mean(probs in b) - mean(labels in b)|``
    (a probability of exactly 1 falls in the last bin).

    >>> expected_calibration_error(np.array([0.05, 0.15, 0.95]), np.array([0, 1, 1]))  # doctest: +ELLIPSIS
    0.3...
    """
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() / len(probs) * abs(probs[inside].mean() - labels[inside].mean())
    return float(total)


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the 0/1 ``labels``; NaN when only one class is present (or none)."""
    if len(labels) == 0 or labels.min() == labels.max():
        return math.nan
    return float(roc_auc_score(labels, scores))


def stage_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    is_target: np.ndarray,
    references: dict[str, np.ndarray] | None = None,
    repeat: np.ndarray | None = None,
) -> dict[str, float]:
    """One stage's measures over pooled candidates (``[n]`` each; ``is_target`` marks the true next items); with
    ``repeat`` (``[n]``, the targets the user had interacted with before) the AUC over the repeated targets and the
    sampled items, and over the new targets and the sampled items; and the AUC of each score of ``references``
    (name -> ``[n]``, e.g. a rule to compare with)."""
    measures = {
        "AUC": auc_or_nan(labels, probs),
        "ECE": expected_calibration_error(probs, labels),
        "mean predicted": float(probs.mean()),
        "observed rate": float(labels.mean()),
        "AUC on targets": auc_or_nan(labels[is_target], probs[is_target]),
    }
    if repeat is not None:
        for name, kept in (("repeat", repeat), ("new", ~repeat)):
            pool = ~is_target | (is_target & kept)
            measures[f"AUC, {name} targets"] = auc_or_nan(labels[pool], probs[pool])
    for name, scores in (references or {}).items():
        measures[f"{name} AUC"] = auc_or_nan(labels, scores)
    return measures


@dataclass
class ScoredCandidates:
    """Each test user's candidates as the model scored them: the target first, then the sampled items.

    Attributes:
        probs: ``[U, 1 + K, S]`` predicted stage probabilities.
        labels: ``[U, 1 + K, S]`` the stages each candidate's interaction reached (0 for the sampled items).
        references: ``[U, 1 + K]`` scores of each candidate by two rules: ``popularity``, ``log(1 + count)`` with
            count = its occurrences in the histories of the scored rows (the model's input windows; no target is
            counted), and ``history``, how far along the cascade the user went with it before (its highest feedback
            level in the user's history, 0 = never).
        target_values: ``[U]`` the targets' values, or None without a value field.
        predicted_values: ``[U]`` the value head's prediction for the targets, or None.
    """

    probs: np.ndarray
    labels: np.ndarray
    references: dict[str, np.ndarray]
    target_values: np.ndarray | None
    predicted_values: np.ndarray | None


def sample_negatives(targets: torch.Tensor, n_items: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[U, count]`` items drawn uniformly among the real items other than each target (``[U]``, on the CPU).

    >>> draws = sample_negatives(torch.tensor([1, 2, 3]), 4, 50, torch.Generator().manual_seed(0))
    >>> bool((draws != torch.tensor([1, 2, 3])[:, None]).all()), sorted(set(draws[0].tolist()))
    (True, [2, 3])
    """
    draws = torch.randint(1, n_items - 1, (len(targets), count), generator=generator)  # n_items - 2 values
    return draws + (draws >= targets.unsqueeze(1)).long()  # skip the target


@torch.no_grad()
def score_test_users(model, loader: Iterable, negatives: int, seed: int) -> ScoredCandidates:
    """Score each user of ``loader`` (RecBole's test loader) on its target and ``negatives`` sampled items."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    probs, labels, items, seen, target_values, predicted_values = [], [], [], [], [], []
    counts = torch.zeros(model.n_items)
    for batch in loader:
        interaction = batch[0].to(model.device)
        targets = interaction[model.ITEM_ID]
        drawn = sample_negatives(targets.cpu(), model.n_items, negatives, generator).to(targets.device)
        candidates = torch.cat([targets.unsqueeze(1), drawn], dim=1)  # [B, 1 + K]
        estimate = model.reward(interaction, candidates)
        history = interaction[model.ITEM_SEQ]
        counts += torch.bincount(history[history > 0].cpu(), minlength=model.n_items).float()
        items.append(candidates.cpu())
        levels = model.feedback_levels(interaction, history.shape[1])
        positions = (interaction[model.ITEM_SEQ_LEN] - 1).unsqueeze(1)
        seen.append(history_levels(candidates.unsqueeze(1), positions, history, levels).squeeze(1).cpu())
        if model.cascade_fields:
            reached = torch.stack([interaction[field].float() for field in model.cascade_fields], dim=1)  # [B, S]
        else:
            reached = torch.ones(len(targets), 1, device=targets.device)
        candidate_labels = torch.zeros_like(estimate.stage_probs)
        candidate_labels[:, 0] = reached
        probs.append(estimate.stage_probs.cpu().numpy())
        labels.append(candidate_labels.cpu().numpy())
        if estimate.value is not None:
            target_values.append(interaction[model.value_field].float().cpu().numpy())
            predicted_values.append(estimate.value[:, 0].cpu().numpy())
    return ScoredCandidates(
        probs=np.concatenate(probs),
        labels=np.concatenate(labels),
        references={
            "popularity": torch.log1p(counts[torch.cat(items)]).numpy(),
            "history": torch.cat(seen).float().numpy(),
        },
        target_values=np.concatenate(target_values) if target_values else None,
        predicted_values=np.concatenate(predicted_values) if predicted_values else None,
    )


def reward_report(scored: ScoredCandidates, stages: list[str]) -> dict[str, Any]:
    """``{"stages": {stage: stage_metrics}, "value": {...} or None, "users": U, "candidates": U * (1 + K)}``."""
    users, per_user, _ = scored.probs.shape
    is_target = np.zeros((users, per_user), dtype=bool)
    is_target[:, 0] = True
    references = {name: scores.ravel() for name, scores in scored.references.items()}
    repeat = (scored.references["history"] > 0).ravel() & is_target.ravel()
    report: dict[str, Any] = {
        "users": users,
        "candidates": users * per_user,
        "stages": {
            stage: stage_metrics(
                scored.probs[..., s].ravel(), scored.labels[..., s].ravel(), is_target.ravel(), references, repeat
            )
            for s, stage in enumerate(stages)
        },
        "value": None,
    }
    if scored.target_values is not None and scored.predicted_values is not None:
        observed = np.log(np.maximum(scored.target_values, VALUE_FLOOR))
        predicted = np.log(np.maximum(scored.predicted_values, VALUE_FLOOR))
        report["value"] = {
            "RMSE of log value": float(np.sqrt(np.mean((predicted - observed) ** 2))),
            "RMSE of the best constant": float(observed.std()),
            "mean predicted value": float(scored.predicted_values.mean()),
            "mean observed value": float(scored.target_values.mean()),
        }
    return report


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report_markdown(report: dict[str, Any], about: dict[str, str]) -> str:
    """The markdown report: ``about`` (a label -> text list: command, commit, device, ...) then the tables."""
    stage_rows = [
        [stage] + [_cell(value) for value in measures.values()] for stage, measures in report["stages"].items()
    ]
    header = ["stage", *next(iter(report["stages"].values()))]
    lines = [
        f"# Reward model on {about['dataset']}: per-stage AUC and calibration on the test split",
        "",
        *(f"- {label}: {text}" for label, text in about.items() if label != "dataset"),
        "",
        f"{report['users']} test users, each scored on its true next item (labelled with the stages its interaction "
        f"reached) and {report['candidates'] // report['users'] - 1} uniformly drawn items (labelled 0): "
        f"{report['candidates']} candidates pooled per stage. AUC: ROC AUC over them (scikit-learn). ECE: expected "
        f"calibration error over {CALIBRATION_BINS} equal-width bins of the predicted probability. 'AUC on targets': "
        "among the true next items alone ('-': all or none reached the stage). 'AUC, repeat targets' / 'new targets': "
        "over the sampled items and the targets the user had / had not interacted with before. For reference, the "
        "AUC of two rules: "
        "'popularity', each item's log(1 + count) in the test users' histories (it knows nothing of the user), and "
        "'history', how far along the cascade the user went with the item before (0 = never; it knows nothing "
        "else). "
        "Probabilities are those of the training mix (one next item among the model's reward_negatives draws), so "
        "the first stage's rate follows that ratio.",
        "",
        _table(header, stage_rows),
    ]
    if report["value"] is not None:
        lines += [
            "",
            "Value head, on the true next items (log of the value_field; the best constant predicts every target the "
            "targets' mean log value):",
            "",
            _table(list(report["value"]), [[f"{value:.4f}" for value in report["value"].values()]]),
        ]
    return "\n".join(lines) + "\n"


def training_settings(dataset: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The run's settings: the ``common`` block of ``bench/configs/<dataset>.yaml`` (when there is one, less the
    keys of :data:`IGNORED_COMMON_KEYS`), the seed, then ``extra``."""
    common: dict[str, Any] = {}
    if (CONFIG_DIR / f"{dataset}.yaml").is_file():
        common = dict(load_bench_config(dataset).get("common", {}))
    for key in IGNORED_COMMON_KEYS:
        common.pop(key, None)
    return {**common, "seed": seed, **extra}


class StageAUCTrainer(Trainer):
    """This package's trainer whose validation score is the mean of the stages' AUC on the valid split (each valid
    target among ``negatives`` uniform draws, the same every epoch: drawn from ``seed``), so early stopping and the
    best checkpoint follow what this report measures."""

    def __init__(self, config, model, negatives: int, seed: int):
        super().__init__(config, model)
        self.valid_negatives = negatives
        self.valid_seed = seed

    def _valid_epoch(self, valid_data, show_progress=False):
        report = reward_report(score_test_users(self.model, valid_data, self.valid_negatives, self.valid_seed),
                               self.model.stages)  # fmt: skip
        aucs = {f"auc {stage}": measures["AUC"] for stage, measures in report["stages"].items()}
        finite = [auc for auc in aucs.values() if not math.isnan(auc)]
        score = float(np.mean(finite)) if finite else 0.0
        return score, {"mean stage auc": score, **aucs}


def train(settings: dict[str, Any], dataset: str, valid_negatives: int) -> dict[str, Any]:
    """Train a RewardModel as :func:`~recbole_oneranker.quick_start.run` does (threads, seeds, logger, data, model),
    with :class:`StageAUCTrainer`, then rank the test split's catalogue by reward with the best checkpoint.

    Returns:
        ``checkpoint`` (its path), ``best_valid_score``, ``best_epoch`` (1-based), ``epochs``, ``test_result``,
        ``device`` and ``wall_time_s``.
    """
    start = time.perf_counter()
    config = Config(MODEL, dataset, config_dict=settings)
    torch.set_num_threads(cpu_threads(config)[0])
    init_seed(config["seed"], config["reproducibility"])
    prepare_output_dirs(config)
    init_logger(config)
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    config.check_dataset_rules(n_items=data.item_num - 1)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(MODEL)(config, train_data._dataset).to(config["device"])
    trainer = StageAUCTrainer(config, model, valid_negatives, config["seed"])
    recorder = ValidationRecorder()
    best_valid_score, _ = trainer.fit(train_data, valid_data, show_progress=False, callback_fn=recorder)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    trainer.discard_snapshot()  # finished: with resume_training, no snapshot says the checkpoint is final
    return {
        "checkpoint": Path(trainer.saved_model_file),
        "best_valid_score": best_valid_score,
        "best_epoch": recorder.best[1] + 1 if recorder.best else 0,
        "epochs": recorder.epochs,
        "test_result": dict(test_result or {}),
        "device": ", then ".join(trainer.devices),
        "wall_time_s": time.perf_counter() - start,
    }


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    full = path.resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=EMBEDDED_DATASET, help="dataset to train on (default: ml-100k)")
    parser.add_argument("--checkpoint", type=Path, help="evaluate this RewardModel checkpoint instead of training")
    parser.add_argument(
        "--data-path", type=Path, help="folder holding <dataset>/ (default: dataset/, or the checkpoint's own)"
    )
    parser.add_argument("--seed", type=int, default=FIRST_SEED, help="seed of the training and of the draws")
    parser.add_argument(
        "--negatives", type=int, help="sampled items per test user (default: the model's reward_negatives)"
    )
    parser.add_argument("--epochs", type=int, help="cap the training epochs")
    parser.add_argument(
        "--valid-negatives",
        type=int,
        default=VALID_NEGATIVES,
        help=f"uniform draws per valid target in the validation AUC (default {VALID_NEGATIVES})",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config for the training")
    parser.add_argument("--out", type=Path, help="report file (default: results/reward-<dataset>.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = "python bench/reward.py " + shlex.join(argv)
    commit = code_version()
    about: dict[str, str] = {}
    started = time.perf_counter()
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
            return 2
        checkpoint = args.checkpoint
        data_path = str(args.data_path) if args.data_path else None
    else:
        try:
            extra = parse_assignments(args.set, "--set")
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if args.epochs:
            extra["epochs"] = args.epochs
        data_path = None
        if args.dataset != EMBEDDED_DATASET:  # RecBole always reads ml-100k from its own wheel
            data_path = str(ensure_dataset(args.dataset, args.data_path or DEFAULT_DATA_PATH))
            extra.setdefault("data_path", data_path)
        extra.setdefault("run_id", f"reward-{args.dataset}-seed{args.seed}")  # its checkpoint: saved/<run_id>.pth
        settings = training_settings(args.dataset, args.seed, extra)
        if args.valid_negatives < 1:
            print("error: --valid-negatives must be at least 1", file=sys.stderr)
            return 2
        print(f"training {MODEL} on {args.dataset} (seed {args.seed}) ...", flush=True)
        result = train(settings, args.dataset, args.valid_negatives)
        checkpoint = result["checkpoint"]
        test = result["test_result"]
        about["training settings"] = f"`{run_command(MODEL, args.dataset, settings)}` (run_recbole would early-stop on "
        about["training settings"] += "NDCG@10 instead)"
        about["training"] = (
            f"{result['wall_time_s']:.0f} s on {result['device']}; early stopping on the validation mean of the "
            f"stages' AUC (each valid target among {args.valid_negatives} uniform draws): best "
            f"{result['best_valid_score']:.4f} at epoch {result['best_epoch']} of {result['epochs']}; test, the "
            "catalogue ranked by reward: "
            + ", ".join(f"{name} {test[name]:.4f}" for name in ("ndcg@10", "hit@10") if name in test)
        )
    config, model, _, _, _, test_data = load_data_and_model(checkpoint, data_path)
    if config["model"] != MODEL:
        print(f"error: {checkpoint} is a {config['model']}, not a {MODEL}", file=sys.stderr)
        return 2
    negatives = args.negatives if args.negatives is not None else config["reward_negatives"]
    if not 1 <= negatives <= model.n_items - 2:
        print(f"error: --negatives must be in [1, {model.n_items - 2}]", file=sys.stderr)
        return 2
    print(f"scoring the test users' targets and {negatives} sampled items each ...", flush=True)
    report = reward_report(score_test_users(model, test_data, negatives, args.seed), model.stages)
    about = {
        "dataset": str(config["dataset"]),
        "command": f"`{command}`",
        "commit": commit,
        "device": describe_device(config["device"]),
        "seed": f"{args.seed} (training and the draws of the sampled items)",
        "checkpoint": _shown_path(checkpoint),
        **about,
        "value": str(config["value_note"] or config["value_field"] or "none"),
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    text = report_markdown(report, about)
    out = args.out or REPO / "results" / f"reward-{config['dataset']}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
