"""Quality benchmark: train each model with early stopping on validation, test the best checkpoint, over seeds.

    python bench/quality.py --dataset ml-100k --models HSTU SASRec --seeds 3
    python bench/quality.py --dataset beauty --models HSTU SASRec --seeds 3          # converts Beauty on first use
    python bench/quality.py --dataset ml-100k --models HSTU --seeds 1 --epochs 1     # a smoke run
    python bench/quality.py --bench-config bench/configs/ml-100k-ablation.yaml       # -> results/ml-100k-ablation.md
    python bench/quality.py --dataset beauty --paired OneRanker HSTU                 # two finished rows, user by user
    python bench/quality.py --summary                                                # -> results/README.md

Rows are the named entries of ``bench/configs/<dataset>.yaml`` (a model plus its settings; ``common`` applies to
all). Run it from the repository root: commands and data paths are relative to it. Every finished (row, seed) is
appended at once to ``results/<dataset>.csv`` with the ``run_recbole`` command that reproduces it alone, and its
per-user test ranks go to ``results/ranks/<dataset>/`` (with the targets' values and the candidate-set ranks, so that
GMV and candidate HR pair user by user too); a re-run skips finished rows, so an interrupted benchmark
resumes where it stopped. ``results/<dataset>.md`` is rewritten after each row: mean and 95% t-interval over
seeds, a per-user bootstrap interval, epochs and wall time to the best validation.
Model choices use validation only; test numbers are read once, for the best checkpoint.
``--rerun`` trains finished rows again and puts the new rows in their place, each recording the commit and test
NDCG@10 of the row it replaced and whether it ``reproduced`` it, metric for metric (rows made before the per-user
files were kept get them this way). ``--paired A B`` trains nothing: it
prints the mean per-user test NDCG@10 difference of row A to row B (each averaged over its finished seeds) with its
95% paired bootstrap interval, as the report's Δ column does against the bench config's baseline, and the same for
candidate-set HR@1 and GMV@10 where both rows kept their per-user files. ``--summary``
trains nothing either: it writes ``results/README.md``, the best row of each model on each dataset
(:mod:`recbole_oneranker.bench.summary`).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from recbole_oneranker.bench.common import (
    DEFAULT_DATA_PATH,
    EMBEDDED_DATASET,
    REPO,
    ResultTable,
    bootstrap_ci,
    code_version,
    config_hash,
    config_hashes,
    current_rows,
    ensure_dataset,
    load_bench_config,
    mean_ci,
    paired_difference,
    per_user_mean,
    row_key,
    row_settings,
    run_command,
)
from recbole_oneranker.bench.summary import write_summary
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.evaluator.metrics import value_shares
from recbole_oneranker.evaluator.protocol import Protocol
from recbole_oneranker.evaluator.ranking import rank_metrics
from recbole_oneranker.overrides import parse_assignments
from recbole_oneranker.quick_start import run

FIRST_SEED = 2020
HEADLINE = ("ndcg@10", "hit@10", "mrr@10", "ndcg@20", "hit@20", "ndcg@1", "hit@5", "ndcg@5", "gmv@10")
CANDIDATE_HEADLINE = ("hit@1", "hit@5", "ndcg@5", "ndcg@10")
PER_USER_SUFFIX = ".per-user.npz"  # beside a row's ranks: its targets' values and candidate-set ranks per user


class ValidationRecorder:
    """``callback_fn`` for :func:`run`: remembers when each validation happened and which was best so far."""

    def __init__(self, bigger_is_better: bool = True):
        self.start = time.perf_counter()
        self.bigger = bigger_is_better
        self.best: tuple[float, int, float] | None = None  # (score, epoch, seconds)
        self.epochs = 0

    def __call__(self, epoch: int, score: float) -> None:
        self.epochs = epoch + 1
        better = self.best is None or (score > self.best[0] if self.bigger else score < self.best[0])
        if better:
            self.best = (score, epoch, time.perf_counter() - self.start)

    # Kept in the trainer's snapshot, so a resumed row counts the earlier processes' epochs and seconds.
    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best": self.best, "elapsed_s": time.perf_counter() - self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs, self.best = state["epochs"], tuple(state["best"]) if state["best"] else None
        self.start = time.perf_counter() - state["elapsed_s"]


def row_file_name(key: str) -> str:
    """A row key as a file name (labels may hold '/' or spaces)."""
    return re.sub(r"[^\w.=-]+", "_", key)


def row_run_id(results_name: str, key: str) -> str:
    """The run id of a bench row of ``results/<results_name>.csv``, so its best checkpoint is
    ``<checkpoint_dir>/<run id>.pth`` (the alignment bench starts from it)."""
    return f"bench-{results_name}-{row_file_name(key)}"


def run_row(
    label: str, model: str, dataset: str, settings: dict[str, Any], ranks_dir: Path, commit: str
) -> dict[str, Any]:
    # The identity of the defaults the run starts with: they may change on disk while it trains.
    key, identity = row_key(label, model, dataset, settings), config_hash(label, model, dataset, settings)
    file_name = row_file_name(key)
    recorder = ValidationRecorder()
    # A row killed part-way (a long row outlives a session) continues from its last validation when re-run.
    resumable = {"run_id": row_run_id(ranks_dir.name, key), "resume_training": True}
    result = run(model, dataset, config_dict={**settings, **resumable}, callback_fn=recorder)
    ranks_file = ranks_dir / f"{file_name}.npy"
    ranks_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(ranks_file, result["test_ranks"].astype(np.int32))
    users_file = ranks_file.with_suffix(".users.npy")  # test users in the ranks' order, to pair rows user by user
    np.save(users_file, result["test_users"].astype(np.int64))
    per_user_file = save_per_user(ranks_file.with_suffix(PER_USER_SUFFIX), result)
    best_score, best_epoch, time_to_best = recorder.best if recorder.best else (float("nan"), -1, float("nan"))
    row = {
        "key": key,
        "config_hash": identity,
        "label": label,
        "model": model,
        "seed": settings["seed"],
        "epochs_trained": recorder.epochs,
        "best_epoch": best_epoch,
        "time_to_best_s": round(time_to_best, 1),
        "wall_time_s": round(result["wall_time_s"], 1),
        "protocol": result["protocol"],  # for a reader of the CSV; the report renders protocol_fields
        "protocol_fields": json.dumps(result["protocol_fields"]),
        "command": run_command(model, dataset, settings),
        "commit": commit,
        "device": result["device"],
        "ranks_file": _relative(ranks_file),
        "users_file": _relative(users_file),
        "per_user_file": _relative(per_user_file) if per_user_file else "",
    }
    row.update({f"valid_{name}": float(value) for name, value in (result["best_valid_result"] or {}).items()})
    row.update({f"test_{name}": float(value) for name, value in result["test_result"].items()})
    row.update({f"candidate_{name}": float(value) for name, value in (result["candidate_result"] or {}).items()})
    return row


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def save_per_user(path: Path, result: dict[str, Any]) -> Path | None:
    """Write the run's per-user arrays beyond the full ranking's ranks to one ``.npz`` (None when it has none):
    ``values``, each test target's value in the ranks' order (with a GMV metric), and ``candidate_ranks`` with
    ``candidate_users`` (the candidate-set protocol's rank of each user's target)."""
    arrays = {
        name: result[key]
        for name, key in (
            ("values", "test_values"),
            ("candidate_ranks", "candidate_ranks"),
            ("candidate_users", "candidate_users"),
        )  # fmt: skip
        if result.get(key) is not None
    }
    if not arrays:
        path.unlink(missing_ok=True)  # a re-run's row must not point at, or leave, an earlier run's arrays
        return None
    np.savez(path, **arrays)
    return path


def _per_user_arrays(row: dict[str, Any], names: tuple[str, ...]) -> list[np.ndarray] | None:
    if not row.get("per_user_file"):
        return None
    with np.load(REPO / row["per_user_file"]) as arrays:
        return [arrays[name] for name in names] if all(name in arrays for name in names) else None


def per_user_ndcg(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(user ids, NDCG@10)`` of each test user averaged over the rows' seeds; None if a row kept no user ids."""
    if not all(row.get("users_file") for row in rows):
        return None
    users = [np.load(REPO / row["users_file"]) for row in rows]
    return per_user_mean(users, [rank_metrics(np.load(REPO / row["ranks_file"]), 10)["ndcg"] for row in rows])


def per_user_gmv(rows: list[dict[str, Any]], k: int = 10) -> tuple[np.ndarray, np.ndarray] | None:
    """``(user ids, share of GMV@k)`` of each test user averaged over the rows' seeds, each seed's shares averaging
    to its GMV@k (:class:`~recbole_oneranker.evaluator.metrics.GMV`); None if a row kept no target values."""
    users, shares = [], []
    for row in rows:
        arrays = _per_user_arrays(row, ("values",))
        if arrays is None or not row.get("users_file"):
            return None
        hit = rank_metrics(np.load(REPO / row["ranks_file"]), k)["hit"]
        users.append(np.load(REPO / row["users_file"]))
        shares.append(hit * value_shares(arrays[0].astype(np.float64)))
    return per_user_mean(users, shares)


def per_user_candidate_hit(rows: list[dict[str, Any]], k: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """``(user ids, candidate-set HR@k)`` of each test user averaged over the rows' seeds; None if a row kept no
    candidate ranks."""
    arrays = [_per_user_arrays(row, ("candidate_users", "candidate_ranks")) for row in rows]
    if any(pair is None for pair in arrays):
        return None
    return per_user_mean([users for users, _ in arrays], [rank_metrics(ranks, k)["hit"] for _, ranks in arrays])


def paired_cell(own: tuple[np.ndarray, np.ndarray] | None, baseline: tuple[np.ndarray, np.ndarray] | None) -> str:
    """Mean per-user difference to the baseline row (``(user ids, values)`` pairs) and its 95% paired bootstrap
    interval."""
    if own is None or baseline is None:
        return "-"
    difference = paired_difference(own, baseline)
    low, high = bootstrap_ci(difference)
    return f"{difference.mean():+.4f} [{low:+.4f}, {high:+.4f}]"


# What ``--paired`` compares user by user: name -> reader of the rows' per-user values (None without them).
PAIRED_MEASURES = {
    "test NDCG@10": per_user_ndcg,
    "candidate-set HR@1": lambda rows: per_user_candidate_hit(rows, 1),
    "GMV@10": lambda rows: per_user_gmv(rows, 10),
}


def print_paired(rows: list[dict[str, Any]], label: str, other: str, only_seeds: list[int] | None = None) -> int:
    """Print ``label``'s per-user differences to ``other`` (``--paired``): test NDCG@10, and candidate-set HR@1 and
    GMV@10 where both rows kept their per-user files, over each row's runs of ``only_seeds`` (None: every run); 2 if
    either has no such finished run."""
    by_label = {
        name: [row for row in rows if row["label"] == name and (only_seeds is None or int(row["seed"]) in only_seeds)]
        for name in (label, other)
    }
    missing = [name for name, runs in by_label.items() if not runs]
    if missing:
        of_seeds = "" if only_seeds is None else f" of seeds {sorted(only_seeds)}"
        print(
            f"error: no finished run{of_seeds} of {missing} in this table (with the bench config as it is now)",
            file=sys.stderr,
        )
        return 2
    seeds = {name: sorted(int(row["seed"]) for row in runs) for name, runs in by_label.items()}
    print(f"{label} (seeds {seeds[label]}) - {other} (seeds {seeds[other]}), per user:")
    for measure, read in PAIRED_MEASURES.items():
        cell = paired_cell(read(by_label[label]), read(by_label[other]))
        print(f"  {measure} {cell if cell != '-' else '- (not kept by both rows; a row run before: --rerun it)'}")
    return 0


def _title(metric: str) -> str:
    return metric.upper().replace("HIT", "HR")


def _shared_part_count(part_lists: list[list[str]]) -> int:
    """How many leading parts every list has in common."""
    count = 0
    while all(len(parts) > count and parts[count] == part_lists[0][count] for parts in part_lists):
        count += 1
    return count


def protocol_line(rows: list[dict[str, Any]]) -> str:
    """The protocol the rows share, then the parts only some rows have, with those rows. Rows differ in training
    (RecBole's SASRec trains one row per prefix, not whole sequences), and one line per protocol would repeat the
    rest."""
    labels_of: dict[str, list[str]] = defaultdict(list)  # by the protocol's fields, as JSON
    for row in rows:
        if row["label"] not in labels_of[row["protocol_fields"]]:
            labels_of[row["protocol_fields"]].append(row["label"])
    part_lists = [Protocol(**json.loads(fields)).parts() for fields in labels_of]
    head = _shared_part_count(part_lists)
    tail = _shared_part_count([parts[head:][::-1] for parts in part_lists])
    first = part_lists[0]
    line = "Protocol: " + ", ".join(first[:head] + first[len(first) - tail :]) + "."
    if len(part_lists) > 1:
        differing = [
            f"{', '.join(parts[head : len(parts) - tail]) or 'none of that'} ({', '.join(labels)})"
            for parts, labels in zip(part_lists, labels_of.values(), strict=True)
        ]
        line += " Rows differ in: " + "; ".join(differing) + "."
    return line


def write_report(
    rows: list[dict[str, Any]], dataset: str, command: str, out: Path, baseline: str | None = None
) -> None:
    """``results/<dataset>.md`` from the CSV rows: one line per row label, then one per run. With a ``baseline``
    label, each row also gets its paired per-user NDCG@10 difference to that row."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    baseline_ndcg = per_user_ndcg(by_label[baseline]) if baseline in by_label else None
    metrics = [m for m in HEADLINE if f"test_{m}" in rows[0]]
    candidate_metrics = [m for m in CANDIDATE_HEADLINE if f"candidate_{m}" in rows[0]]
    lines = [
        f"# {dataset}: test metrics (mean ± 95% t-interval over seeds)",
        "",
        f"Last written by `{command}`; rows accumulate across runs, each run's own command is under Runs.",
        "Early stopping on validation NDCG@10;",
        "each row's best checkpoint is tested once. Per-user bootstrap: 95% interval of NDCG@10 over test users, on",
        "each user's NDCG@10 averaged over seeds (1000 resamples)."
        + (
            f" Δ vs {baseline}: mean per-user difference of that NDCG@10 to the {baseline} row, over the users both"
            " rows tested, with its 95% paired bootstrap interval ('-': a row saved no user ids)."
            if baseline
            else ""
        ),
        "",
        protocol_line(rows),
        "",
        "Columns HR/NDCG/MRR/GMV@K: full ranking"
        + (
            "; 'cand.': the candidate-set protocol (target + sampled negatives, see the protocol line)."
            if candidate_metrics
            else "."
        ),
        "",
        "| row | seeds | "
        + " | ".join(_title(m) for m in metrics)
        + "".join(f" | cand. {_title(m)}" for m in candidate_metrics)
        + " | NDCG@10 bootstrap"
        + (f" | Δ NDCG@10 vs {baseline}" if baseline else "")
        + " | epochs to best | time to best (s) | wall (s) |",
        "|---" * (len(metrics) + len(candidate_metrics) + 6 + bool(baseline)) + "|",
    ]
    for label, label_rows in by_label.items():
        cells = []
        for column in [f"test_{m}" for m in metrics] + [f"candidate_{m}" for m in candidate_metrics]:
            mean, half = mean_ci([float(r[column]) for r in label_rows])
            cells.append(f"{mean:.4f} ± {half:.4f}")
        per_user = per_user_ndcg(label_rows)
        spread = "[{:.4f}, {:.4f}]".format(*bootstrap_ci(per_user[1])) if per_user is not None else "-"
        epochs = np.mean([int(r["best_epoch"]) + 1 for r in label_rows])
        to_best = np.mean([float(r["time_to_best_s"]) for r in label_rows])
        wall = np.mean([float(r["wall_time_s"]) for r in label_rows])
        paired = f" | {paired_cell(per_user, baseline_ndcg)}" if baseline else ""
        lines.append(
            f"| {label} | {len(label_rows)} | " + " | ".join(cells) + f" | {spread}{paired} | "
            f"{epochs:.0f} | {to_best:.0f} | {wall:.0f} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "Commit: the code a run was made with ('-dirty': with uncommitted changes; '-': not recorded, older rows). "
        "Device: what it trained on, which wall times depend on ('-': not recorded; those rows ran on CPU).",
        "",
        "| row | seed | valid NDCG@10 | test NDCG@10 | commit | device | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['seed']} | {float(row['valid_ndcg@10']):.4f} | "
            f"{float(row['test_ndcg@10']):.4f} | {row.get('commit') or '-'} | {row.get('device') or '-'} | "
            f"`{row['command']}` |"
        )
    out.write_text("\n".join(lines) + "\n")


def mark_rerun(row: dict[str, Any], before: dict[str, Any]) -> str:
    """Record in a re-run ``row`` what it replaced (``replaced_commit``, ``replaced_test_ndcg@10``) and whether it
    ``reproduced`` it: the same best epoch and every validation, test and candidate-set metric both rows hold, as
    RecBole rounds them (4 decimals). Ranks are not compared: rank files made before commit 261c5bd hold 0 for a
    target beyond the top 20. Returns the verdict."""
    metrics = [
        column
        for column, value in before.items()
        if column.startswith(("valid_", "test_", "candidate_")) and value not in ("", None) and column in row
    ]
    same = int(before["best_epoch"]) == int(row["best_epoch"]) and all(
        f"{float(before[column]):.4f}" == f"{float(row[column]):.4f}" for column in metrics
    )
    row.update(replaced_commit=before.get("commit", ""), **{"replaced_test_ndcg@10": before["test_ndcg@10"]})
    row["reproduced"] = same
    verdict = "reproduced" if same else "NOT reproduced"
    return (
        f"{verdict} the row it replaced (commit {before.get('commit') or '-'}, test ndcg@10 {before['test_ndcg@10']})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="ml-100k", help="dataset name; its rows are in bench/configs/<dataset>.yaml"
    )
    parser.add_argument("--models", nargs="+", help="row labels to run (default: every row of the bench config)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row: 2020, 2021, ...")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=FIRST_SEED,
        help=f"the first of those seeds (default {FIRST_SEED}); --first-seed 2021 --seeds 1 runs seed 2021 alone, "
        "so a row's seeds can run in parallel processes",
    )
    parser.add_argument("--epochs", type=int, help="cap the epochs (smoke runs); recorded in the row's settings")
    parser.add_argument("--bench-config", type=Path, help="another bench config file")
    parser.add_argument(
        "--data-path", type=Path, default=DEFAULT_DATA_PATH, help="converted datasets (default: dataset/)"
    )
    parser.add_argument("--results", type=Path, default=REPO / "results", help="output folder (default: results/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config for every row")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="write <results>/README.md: each model's best row on validation per dataset, from every CSV; no training",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="train finished rows again and put the new rows in their place, saying whether each reproduced "
        "(e.g. for the per-user files of rows made before they were kept)",
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        metavar=("A", "B"),
        help="print row A's per-user NDCG@10 (candidate HR@1, GMV@10) difference to row B; no training",
    )
    parser.add_argument(
        "--paired-seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="with --paired: compare only these seeds' runs of both rows (default: every finished seed of each)",
    )
    args = parser.parse_args(argv)
    if args.paired_seeds and not args.paired:
        parser.error("--paired-seeds selects the runs --paired compares; give --paired A B with it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary:
        print(f"written to {write_summary(args.results)}")
        return 0
    bench_config = load_bench_config(args.dataset, args.bench_config)
    dataset = bench_config.get("dataset", args.dataset)  # a named bench config (e.g. ablations) names its dataset
    results_name = args.bench_config.stem if args.bench_config else dataset
    labels = args.paired or args.models or list(bench_config["rows"])
    unknown = [label for label in labels if label not in bench_config["rows"]]
    if unknown:
        print(f"error: unknown rows {unknown}; rows of this config: {list(bench_config['rows'])}", file=sys.stderr)
        return 2
    try:
        extra = parse_assignments(args.set, "--set")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.epochs:
        extra["epochs"] = args.epochs
    if dataset != EMBEDDED_DATASET:  # RecBole always reads ml-100k from its own wheel
        extra.setdefault("data_path", str(ensure_dataset(dataset, args.data_path)))

    table = ResultTable(args.results / f"{results_name}.csv")
    command = "python bench/quality.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    jobs = [(label, args.first_seed + i) for label in labels for i in range(args.seeds)]
    hashes = config_hashes(bench_config, dataset, extra)
    if args.paired:
        return print_paired(current_rows(table, hashes), *args.paired, only_seeds=args.paired_seeds)
    out, baseline = args.results / f"{results_name}.md", bench_config.get("baseline")
    commit = code_version()  # the code this process imported, whatever changes on disk while it runs
    for done, (label, seed) in enumerate(jobs, start=1):
        model, settings = row_settings(bench_config, label, {**extra, "seed": seed})
        key = row_key(label, model, dataset, settings)
        before = table.row(key)
        if before and not args.rerun:
            print(f"[{done}/{len(jobs)}] {label} seed {seed}: done before, skipped", flush=True)
            continue
        print(f"[{done}/{len(jobs)}] {label} seed {seed}: training {model} on {dataset} ...", flush=True)
        row = run_row(label, model, dataset, settings, args.results / "ranks" / results_name, commit)
        verdict = f"; {mark_rerun(row, before)}" if before else ""
        table.append(row)
        print(
            f"[{done}/{len(jobs)}] {label} seed {seed}: test ndcg@10 {row['test_ndcg@10']:.4f} "
            f"(best epoch {row['best_epoch']}, {row['wall_time_s']:.0f} s){verdict}",
            flush=True,
        )
        write_report(current_rows(table, hashes), results_name, command, out, baseline)
    rows = current_rows(table, hashes)
    if rows:  # also when every row was done before: a re-run rewrites the report from the CSV
        write_report(rows, results_name, command, out, baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
