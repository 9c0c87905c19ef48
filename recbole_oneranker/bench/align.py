"""Alignment benchmark: GPR's Table 3 (pre-trained MTP, + VAFT, + VAFT + DPO, + VAFT + DPO + HEPO; and + DPO,
+ HEPO, + DPO + HEPO from the pre-trained row), GPR + ECPO, and OneRec's IPA (pre-trained, + 1 and 2 iterations)
and + ECPO, with real test metrics beside the reward model's estimate.

    python bench/align.py --dataset ml-100k --policy GPR=saved/GPR-X.pth OneRec=saved/OneRec-Y.pth \\
        --reward saved/reward-ml-100k-seed2020.pth --set align_share=0.25
    python bench/align.py --policy GPR OneRec --seeds 3  # each seed's own bench checkpoint and reward model

Each ``--policy MODEL[=CHECKPOINT]`` is a trained GPR or OneRec. With a path, every seed starts from that one
checkpoint: seeds vary the stage (the sampled requests, dropout, the candidate sets' draws) only. Without a path,
each seed ``s`` starts from its own checkpoint, the best checkpoint of the row ``MODEL`` of
``bench/configs/<dataset>.yaml`` at seed ``s`` as ``python bench/quality.py`` saved it
(``saved/bench-<dataset>-<row>-seed<s>-<hash>.pth``): seeds then vary the pre-training too. ``--reward`` pins one
RewardModel for every seed; without it, each seed ``s`` uses its own, trained as ``python bench/reward.py`` trains
it (``saved/reward-<dataset>-seed<s>.pth``, reused when it exists; about 20 minutes on one thread for ml-100k).
For each policy and seed the rows are: the pre-trained checkpoint, evaluated as a run tests (full ranking, the
candidate-set protocol, ``reward@K``), then the alignment stage from it (``run_recbole --stage=align ...``: GPR +
DPO, + HEPO, + ECPO, and + DPO + HEPO, HEPO from the + DPO row's checkpoint; GPR + VAFT, a fine-tuning
(``run_recbole --stage=finetune --vaft=True ...``, then ``reward@K`` of its best checkpoint), + VAFT + DPO from it and
+ VAFT + DPO + HEPO from that, GPR's Table 3 order; OneRec + IPA with 1 and with 2 iterations, + ECPO), each with the
command that reproduces it; ``--stages +HEPO +ECPO`` runs only the aligned rows of those suffixes (a row that
starts after another, + DPO + HEPO, needs that row's checkpoint).

Rows go to ``results/align-<dataset>.csv`` as they finish (a re-run skips finished rows; the stage's own resume
snapshots continue a killed row) and ``results/align-<dataset>.md`` is rewritten after each from the rows of this
command's configuration (rows of other checkpoints or settings stay in the CSV): every aligned row beside
the row it started from, and a WARNING for any row whose reward estimate rose while its real test NDCG@10 fell
(reward over-optimisation: the real metric decides, docs/alignment.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbole.utils import init_seed

from recbole_oneranker.alignment import generated_reward, load_reward_model
from recbole_oneranker.bench import reward as reward_bench
from recbole_oneranker.bench.common import (
    DEFAULT_DATA_PATH,
    EMBEDDED_DATASET,
    REPO,
    ResultTable,
    code_version,
    ensure_dataset,
    load_bench_config,
    row_key,
    row_settings,
    run_command,
)
from recbole_oneranker.bench.quality import ValidationRecorder, row_run_id
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.config import ALIGN_STAGE, FINETUNE_STAGE, read_yaml_layer, stage_keys, stage_layer
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.overrides import parse_assignments
from recbole_oneranker.quick_start import evaluate_candidate_set, run
from recbole_oneranker.trainer import Trainer, describe_device

FIRST_SEED = 2020
PRETRAINED = "pre-trained"


@dataclass(frozen=True)
class Stage:
    """An aligned row of a model: its label suffix, its stage settings, and the row (suffix) whose aligned
    checkpoint it starts from (None: the pre-trained checkpoint). The settings' ``stage`` is ``align`` unless
    they say ``finetune`` (GPR's VAFT: training continued from the checkpoint)."""

    suffix: str
    settings: dict[str, Any]
    after: str | None = None

    @property
    def kind(self) -> str:
        return self.settings.get("stage", ALIGN_STAGE)


# GPR's VAFT as a fine-tuning of the pre-trained checkpoint: the alignment stage's learning rate and a short schedule
# (GPR's paper gives neither), the best epoch chosen on validation.
VAFT = {"stage": FINETUNE_STAGE, "vaft": True, "epochs": 10, "learning_rate": 0.0001}


# model -> its aligned rows, in the order they run (a row runs after the row it starts from)
STAGES: dict[str, list[Stage]] = {
    "GPR": [
        Stage("+DPO", {"align_method": "dpo"}),
        Stage("+HEPO", {"align_method": "hepo"}),
        Stage("+DPO +HEPO", {"align_method": "hepo"}, after="+DPO"),
        Stage("+ECPO", {"align_method": "ecpo"}),
        # GPR's Table 3: MTP (the pre-trained row) -> +VAFT -> +DPO -> +HEPO
        Stage("+VAFT", VAFT),
        Stage("+VAFT +DPO", {"align_method": "dpo"}, after="+VAFT"),
        Stage("+VAFT +DPO +HEPO", {"align_method": "hepo"}, after="+VAFT +DPO"),
    ],
    "OneRec": [
        Stage("+IPA 1 iteration", {"align_method": "ipa", "align_iterations": 1}),
        Stage("+IPA 2 iterations", {"align_method": "ipa", "align_iterations": 2}),
        Stage("+ECPO", {"align_method": "ecpo"}),
    ],
}
TEST_COLUMNS = ("ndcg@10", "hit@10", "gmv@10")
CANDIDATE_COLUMNS = ("hit@1", "hit@5")


def pretrained_checkpoint(dataset: str, label: str, seed: int, checkpoint_dir: Path) -> Path:
    """The best checkpoint ``python bench/quality.py`` saves for the row ``label`` of ``bench/configs/<dataset>.yaml``
    at ``seed``."""
    model, settings = row_settings(load_bench_config(dataset), label, {"seed": seed})
    return checkpoint_dir / f"{row_run_id(dataset, row_key(label, model, dataset, settings))}.pth"


def evaluate_checkpoint(
    checkpoint: Path, reward_checkpoint: Path, data_path: str | None, seed: int, k: int
) -> dict[str, Any]:
    """A trained policy tested as a run tests its best checkpoint (full ranking, the candidate-set protocol when its
    config has ``candidate_negatives``) plus ``reward@k``, seeded by ``seed``."""
    start = time.perf_counter()
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(checkpoint, data_path)
    init_seed(seed, config["reproducibility"])
    trainer = Trainer(config, model)
    test_result = dict(trainer.evaluate(test_data, load_best_model=False))
    candidate_result = None
    if config["candidate_negatives"]:
        splits = (train_data._dataset, valid_data._dataset, test_data._dataset)
        negatives = config["candidate_negatives"]
        candidate_result = evaluate_candidate_set(config, trainer, dataset, splits, negatives).metrics
    return {
        "test_result": test_result,
        "candidate_result": candidate_result,
        "reward_result": reward_estimate(config, model, train_data, test_data, reward_checkpoint, k),
        "device": describe_device(config["device"]),
        "wall_time_s": time.perf_counter() - start,
    }


def reward_estimate(config, model, train_data, test_data, reward_checkpoint: Path, k: int) -> dict[str, float]:
    """``{"reward@k": ...}``: the reward model's mean reward of ``model``'s generated top-``k`` on the test requests."""
    reward_model = load_reward_model(str(reward_checkpoint), config, train_data._dataset)
    return {f"reward@{k}": generated_reward(model, reward_model, test_data, k)}


def checkpoint_reward(checkpoint: Path, reward_checkpoint: Path, data_path: str | None, seed: int, k: int):
    """:func:`reward_estimate` of a saved checkpoint, seeded by ``seed`` (a fine-tuning run reports no reward)."""
    config, model, _, train_data, _, test_data = load_data_and_model(checkpoint, data_path)
    init_seed(seed, config["reproducibility"])
    return reward_estimate(config, model, train_data, test_data, reward_checkpoint, k)


def align_row(model: str, dataset: str, settings: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The alignment stage as ``run_recbole`` runs it (resumable under ``run_id``), with its best epoch."""
    recorder = ValidationRecorder()
    result = run(model, dataset, config_dict={**settings, "run_id": run_id, "resume_training": True},
                 callback_fn=recorder)  # fmt: skip
    result["best_epoch"] = recorder.best[1] if recorder.best else -1
    return result


def result_row(label: str, started_from: str, model: str, seed: int, result: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: the run's metrics (``test_*``, ``candidate_*``, ``reward@K``) and what made it."""
    row = {"label": label, "started_from": started_from, "model": model, "seed": seed,
           "best_epoch": result.get("best_epoch", "-"), "wall_time_s": round(result["wall_time_s"], 1),
           "device": result["device"]}  # fmt: skip
    row.update({f"test_{name}": float(value) for name, value in result["test_result"].items()})
    row.update({f"candidate_{name}": float(value) for name, value in (result["candidate_result"] or {}).items()})
    row.update({name: float(value) for name, value in result["reward_result"].items()})
    return row


def reward_column(rows: list[dict[str, Any]]) -> str:
    """The ``reward@K`` column the rows share."""
    return next(name for name in rows[0] if name.startswith("reward@"))


def _mean(rows: list[dict[str, Any]], column: str) -> float:
    values = [float(row[column]) for row in rows if row.get(column) not in (None, "")]
    return sum(values) / len(values) if values else float("nan")


def _best_iterations(rows: list[dict[str, Any]], align_epochs: int) -> str:
    """The iteration (from 1) of each seed's best validation epoch, e.g. ``1, 1, 2``; '-' for a pre-trained or a
    fine-tuned row (no iterations: its best epochs are in the Runs table)."""
    epochs = [row["best_epoch"] for row in rows]
    if "-" in epochs or any(f"--stage={FINETUNE_STAGE}" in row["command"] for row in rows):
        return "-"
    return ", ".join(str(int(epoch) // align_epochs + 1) for epoch in epochs)


def summary_line(label: str, rows: list[dict[str, Any]], start_rows: list[dict[str, Any]], reward: str,
                 align_epochs: int) -> tuple[str, str | None]:  # fmt: skip
    """A row label's line of the summary table (means over its seeds, changes against the rows it started from) and
    its over-optimisation warning, if any."""
    cells = [f"{_mean(rows, f'test_{name}'):.4f}" for name in TEST_COLUMNS]
    cells += [f"{_mean(rows, f'candidate_{name}'):.4f}" for name in CANDIDATE_COLUMNS]
    cells += [f"{_mean(rows, reward):.4g}", "-", "-", _best_iterations(rows, align_epochs)]
    warning = None
    if start_rows:
        # metrics come to 4 decimals, so their means' difference does to 6: beyond that is float noise (3.5e-18)
        ndcg_change = round(_mean(rows, "test_ndcg@10") - _mean(start_rows, "test_ndcg@10"), 6)
        reward_change = _mean(rows, reward) - _mean(start_rows, reward)
        cells[-3:-1] = [f"{ndcg_change:+.4f}", f"{reward_change:+.3g}"]
        if reward_change > 0 and ndcg_change < 0:
            warning = (
                f"WARNING: {label}: {reward} rose by {reward_change:.3g} while real test NDCG@10 fell by "
                f"{-ndcg_change:.2g} against {rows[0]['started_from']} (the policy learned what the reward model "
                "likes, not what users did)"
            )
    return f"| {label} | {rows[0]['started_from'] or '-'} | {len(rows)} | " + " | ".join(cells) + " |", warning


def write_report(
    rows: list[dict[str, Any]], dataset: str, command: str, rewards: str, align_epochs: int, out: Path
) -> None:
    """``results/align-<dataset>.md``: per row label the means over its seeds, beside the row it started from, the
    warnings, then every run with its command."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    reward = reward_column(rows)
    titles = [name.upper().replace("HIT", "HR") for name in TEST_COLUMNS]
    titles += [f"cand. {name.upper().replace('HIT', 'HR')}" for name in CANDIDATE_COLUMNS]
    lines = [
        f"# {dataset}: preference alignment, real test metrics beside the reward model's estimate",
        "",
        f"Last written by `{command}`; rows accumulate across runs, each run's own command is under Runs.",
        f"Reward model: {rewards}. {reward}: its mean reward of the policy's top-{reward[7:]} generated "
        "items per test request (an estimate by a model, not an observation; 4 significant digits)."
        " HR/NDCG/GMV@10: full ranking of the "
        "real held-out test item; cand.: the candidate-set protocol. Aligned rows early-stop on the real validation "
        "NDCG@10 and test their best epoch (its iteration per seed: 'best in iteration'); each is shown beside the "
        "row it started from (Δ: aligned - start). Means over seeds.",
        "",
        "| row | from | seeds | " + " | ".join(titles) + f" | {reward} | Δ NDCG@10 | Δ {reward} | best in iteration |",
        "|---" * (len(titles) + 7) + "|",
    ]
    warnings = []
    for label, label_rows in by_label.items():
        line, warning = summary_line(label, label_rows, by_label.get(label_rows[0]["started_from"], []), reward,
                                     align_epochs)  # fmt: skip
        lines.append(line)
        warnings += [warning] if warning else []
    lines += ["", *(warnings or ["No row's reward estimate rose while its real NDCG@10 fell."]), ""]
    lines += [
        "## Runs",
        "",
        "| row | seed | test NDCG@10 | reward | best epoch (from 0) | wall (s) | commit | device | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['seed']} | {float(row['test_ndcg@10']):.4f} | {float(row[reward]):.4g} | "
            f"{row['best_epoch']} | {row['wall_time_s']} | {row['commit']} | {row['device']} | `{row['command']}` |"
        )
    out.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=EMBEDDED_DATASET, help="dataset (default: ml-100k)")
    parser.add_argument(
        "--policy", nargs="+", required=True, metavar="MODEL[=CHECKPOINT]", help="the policies to align (GPR, OneRec)"
    )
    parser.add_argument("--reward", type=Path, help="a RewardModel checkpoint (default: trained as bench/reward.py)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per row: 2020, 2021, ...")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED, help=f"the first seed (default {FIRST_SEED})")
    parser.add_argument("--data-path", type=Path, default=DEFAULT_DATA_PATH, help="converted datasets (dataset/)")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("saved"), help="checkpoints (default: saved/)")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="output folder (default: results/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config of every stage run")
    parser.add_argument(
        "--stages", nargs="+", metavar="SUFFIX", help="only these aligned rows, e.g. +HEPO +ECPO (default: all)"
    )
    return parser.parse_args(argv)


def seeds(args: argparse.Namespace) -> range:
    return range(args.first_seed, args.first_seed + args.seeds)


def policies(args: argparse.Namespace) -> dict[str, dict[int, Path]]:
    """Model -> seed -> its starting checkpoint, from ``--policy``: the given path for every seed, else each seed's
    own bench checkpoint.

    Raises:
        ConfigError: a model without alignment rows, or a checkpoint that does not exist.
    """
    found: dict[str, dict[int, Path]] = {}
    for given in args.policy:
        model, _, path = given.partition("=")
        if model not in STAGES:
            raise ConfigError(f"--policy {given}: the models aligned here are {', '.join(STAGES)}")
        found[model] = {}
        for seed in seeds(args):
            checkpoint = Path(path) if path else pretrained_checkpoint(args.dataset, model, seed, args.checkpoint_dir)
            if not checkpoint.is_file():
                raise ConfigError(
                    f"--policy {given}: no checkpoint at {checkpoint} (train it: python bench/quality.py --dataset "
                    f"{args.dataset} --models {model} --seeds 1 --first-seed {seed})"
                )
            found[model][seed] = checkpoint
    return found


def reward_checkpoints(args: argparse.Namespace, data_path: str | None) -> dict[int, Path]:
    """Seed -> its reward model: ``--reward`` for every seed, else bench/reward.py's checkpoint of the dataset at
    that seed (trained when missing; a training cut short continues from its resume snapshot)."""
    if args.reward is not None:
        if not args.reward.is_file():
            raise ConfigError(f"--reward: no checkpoint at {args.reward}")
        return dict.fromkeys(seeds(args), args.reward)
    found = {}
    for seed in seeds(args):
        run_id = f"reward-{args.dataset}-seed{seed}"
        checkpoint = args.checkpoint_dir / f"{run_id}.pth"
        cut_short = (args.checkpoint_dir / f"{run_id}-resume.pth").is_file()  # its best so far is no final model
        if not checkpoint.is_file() or cut_short:
            extra = {"run_id": run_id, "checkpoint_dir": str(args.checkpoint_dir), "resume_training": True}
            if data_path:
                extra["data_path"] = data_path
            print(f"training a RewardModel on {args.dataset} (seed {seed}) ...", flush=True)
            settings = reward_bench.training_settings(args.dataset, seed, extra)
            checkpoint = reward_bench.train(settings, args.dataset, reward_bench.VALID_NEGATIVES)["checkpoint"]
        found[seed] = checkpoint
    return found


def describe_rewards(rewards: dict[int, Path]) -> str:
    """The reward models of the report's header: one pinned path, or each seed's."""
    if len(set(rewards.values())) == 1:
        return f"`{next(iter(rewards.values()))}`"
    return "each seed's own, " + ", ".join(f"`{path}`" for path in rewards.values())


@dataclass
class AlignBench:
    """One ``bench/align.py`` command: its result table, settings and the keys of the rows it covers (rows of other
    checkpoints or settings stay in the CSV but leave the report)."""

    dataset: str
    command: str
    rewards: dict[int, Path]
    data_path: str | None
    extra: dict[str, Any]
    table: ResultTable
    out: Path
    commit: str = field(default_factory=code_version)  # the code this process imported
    keys: list[str] = field(default_factory=list)
    aligned: dict[tuple[str, int], Path] = field(default_factory=dict)  # (label, seed) -> its best checkpoint

    def report(self) -> None:
        order = {key: index for index, key in enumerate(self.keys)}  # the command's order, not the CSV's
        rows = sorted((row for row in self.table.rows if row["key"] in order), key=lambda row: order[row["key"]])
        align_epochs = {**read_yaml_layer(stage_layer()), **self.extra}["align_epochs"]
        write_report(rows, self.dataset, self.command, describe_rewards(self.rewards), align_epochs, self.out)

    def reward_topk(self) -> int:
        """The K of every row's ``reward@K`` (the alignment stage's ``align_reward_topk``)."""
        return {**read_yaml_layer(stage_layer()), **self.extra}["align_reward_topk"]

    def stage_settings(self, stage: Stage, checkpoint: Path, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's settings of ``stage`` from ``checkpoint``, and the defaults layered under them (the
        alignment stage's yaml, for the row's identity); ``--set`` keys of the alignment stage skip a fine-tuning."""
        if stage.kind == FINETUNE_STAGE:
            start = {key: value for key, value in self.identity(checkpoint, seed).items() if key != "reward_checkpoint"}
            extra = {key: value for key, value in self.extra.items() if key not in stage_keys()}
            return {"stage": FINETUNE_STAGE, **start, **stage.settings, **extra}, {}
        settings = {"stage": ALIGN_STAGE, **self.identity(checkpoint, seed), **stage.settings, **self.extra}
        return settings, read_yaml_layer(stage_layer())

    def identity(self, checkpoint: Path, seed: int) -> dict[str, Any]:
        """The settings every row of a starting checkpoint and seed shares."""
        identity = {"from_checkpoint": str(checkpoint), "reward_checkpoint": str(self.rewards[seed]), "seed": seed}
        return identity | ({"data_path": self.data_path} if self.data_path else {})

    def pretrained_row(self, model: str, checkpoint: Path, seed: int) -> None:
        label = f"{model} {PRETRAINED}"
        key = row_key(label, model, self.dataset, self.identity(checkpoint, seed))
        self.keys.append(key)
        if self.table.has(key):
            return
        print(f"{label} seed {seed}: evaluating {checkpoint} ...", flush=True)
        result = evaluate_checkpoint(checkpoint, self.rewards[seed], self.data_path, seed, self.reward_topk())
        self.table.append({"key": key, **result_row(label, "", model, seed, result), "commit": self.commit,
                           "command": f"{self.command} (evaluation of {checkpoint})"})  # fmt: skip
        self.report()

    def aligned_row(self, model: str, pretrained: Path, seed: int, stage: Stage) -> None:
        """The row ``stage`` of ``model`` at ``seed``, from ``pretrained`` or from the aligned checkpoint of the row
        it starts after (that row runs first: its checkpoint is known)."""
        label = f"{model} {stage.suffix}"
        started_from = f"{model} {stage.after or PRETRAINED}"
        checkpoint = self.aligned.get((started_from, seed)) if stage.after else pretrained
        if checkpoint is None or not checkpoint.is_file():
            print(f"{label} seed {seed}: skipped, no checkpoint of {started_from} ({checkpoint})", flush=True)
            return
        settings, defaults = self.stage_settings(stage, checkpoint, seed)
        key = row_key(label, model, self.dataset, {**defaults, **settings})
        self.keys.append(key)
        run_id = row_run_id(f"align-{self.dataset}", key)
        self.aligned[(label, seed)] = Path(self.extra.get("checkpoint_dir", "saved")) / f"{run_id}.pth"
        if self.table.has(key):
            print(f"{label} seed {seed}: done before, skipped", flush=True)
            return
        print(f"{label} seed {seed}: aligning {checkpoint} ...", flush=True)
        result = align_row(model, self.dataset, settings, run_id)
        self.aligned[(label, seed)] = Path(result["saved_model_file"])
        if stage.kind == FINETUNE_STAGE:
            result["reward_result"] = checkpoint_reward(
                self.aligned[(label, seed)], self.rewards[seed], self.data_path, seed, self.reward_topk()
            )
        self.table.append({"key": key, **result_row(label, started_from, model, seed, result),
                           "commit": self.commit, "command": run_command(model, self.dataset, settings)})  # fmt: skip
        self.report()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    data_path = None
    if args.dataset != EMBEDDED_DATASET:  # RecBole always reads ml-100k from its own wheel
        data_path = str(ensure_dataset(args.dataset, args.data_path))
    try:
        extra = parse_assignments(args.set, "--set")
        starts = policies(args)
        known = {stage.suffix for stages in STAGES.values() for stage in stages}
        unknown = sorted(set(args.stages or []) - known)
        if unknown:
            raise ConfigError(f"--stages {' '.join(unknown)}: the aligned rows are {', '.join(sorted(known))}")
        rewards = reward_checkpoints(args, data_path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bench = AlignBench(
        dataset=args.dataset,
        command="python bench/align.py " + shlex.join(argv),
        rewards=rewards,
        data_path=data_path,
        extra=extra,
        table=ResultTable(args.results / f"align-{args.dataset}.csv"),
        out=args.results / f"align-{args.dataset}.md",
    )
    for model, checkpoints in starts.items():
        for seed, checkpoint in checkpoints.items():
            bench.pretrained_row(model, checkpoint, seed)
            for stage in STAGES[model]:
                if args.stages is None or stage.suffix in args.stages:
                    bench.aligned_row(model, checkpoint, seed, stage)
    bench.report()  # also when every row was done before: a re-run rewrites the report from the CSV
    print(f"written to {bench.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
