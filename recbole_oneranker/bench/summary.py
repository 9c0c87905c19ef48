"""``results/README.md``: the best configuration of each model on each dataset, read from every results CSV.

    python bench/quality.py --summary

Per dataset and evaluation protocol (rows measured differently are not compared), and per model, the bench row (a
label of ``bench/configs/<file>.yaml``, as it is now) with the highest validation NDCG@10 averaged over its seeds
among the model's rows of the most seeds (up to 3),
its test HR/NDCG/MRR@10 averaged over the same seeds, the table it is in, and the ``run_recbole`` command of its
first seed. Test numbers are read only for the row validation chose.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from recbole_oneranker.bench.common import CONFIG_DIR, configured_rows
from recbole_oneranker.evaluator.protocol import Protocol

SELECTION_METRIC = "ndcg@10"
TEST_METRICS = ("ndcg@10", "hit@10", "mrr@10")
CITABLE_SEEDS = 3  # the seeds of a full bench row


def bench_rows(results_dir: Path) -> list[dict[str, Any]]:
    """The current rows (:func:`current_rows`) of every ``<results_dir>/<name>.csv`` whose bench config
    ``bench/configs/<name>.yaml`` exists, each with its ``dataset`` and results ``file`` added."""
    rows = []
    for table_file in sorted(results_dir.glob("*.csv")):
        config_file = CONFIG_DIR / f"{table_file.stem}.yaml"
        if not config_file.is_file():
            continue
        _, dataset, _, table_rows = configured_rows(results_dir, table_file.stem, config_file)
        rows += [{**row, "dataset": dataset, "file": table_file.with_suffix(".md").name} for row in table_rows]
    return rows


def _evaluation(row: dict[str, Any]) -> str:
    """How the row was evaluated: its protocol's line without the training parts (whole-sequence or one row per
    prefix), which rows of one comparison may differ in."""
    fields = json.loads(row["protocol_fields"])
    return Protocol(**{**fields, "whole_sequence": False, "whole_sequence_windows": True}).render()


def _standing(runs: list[dict[str, Any]]) -> tuple[int, float]:
    """How a row ranks among a model's rows: first by its seeds up to :data:`CITABLE_SEEDS` (a single lucky
    validation does not stand for a model that has a row over 3 seeds), then by its mean validation NDCG@10."""
    return min(len(runs), CITABLE_SEEDS), _mean(runs, f"valid_{SELECTION_METRIC}")


def best_configurations(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(dataset, evaluation protocol): [the seeds of each model's best row, ...]}``: the best row of a model is
    the (file, label) of highest :func:`_standing`: among its rows of the most seeds (up to 3), the one with the
    highest validation NDCG@10 averaged over its seeds."""
    seeds: dict[tuple[str, str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        seeds[(row["dataset"], _evaluation(row), row["model"], row["file"], row["label"])].append(row)
    best: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (dataset, evaluation, model, _, _), runs in seeds.items():
        incumbent = best.get((dataset, evaluation, model))
        if incumbent is None or _standing(runs) > _standing(incumbent):
            best[(dataset, evaluation, model)] = runs
    by_protocol: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for (dataset, evaluation, _), runs in sorted(best.items(), key=lambda item: (item[0][0], item[0][2])):
        by_protocol[(dataset, evaluation)].append(runs)
    return dict(by_protocol)


def _mean(runs: list[dict[str, Any]], column: str) -> float:
    """The mean of ``column`` over ``runs``; NaN when a run lacks it (a metric the row did not compute)."""
    return float(np.mean([float(run[column]) if run.get(column) else np.nan for run in runs]))


def _cell(runs: list[dict[str, Any]], column: str) -> str:
    value = _mean(runs, column)
    return "-" if np.isnan(value) else f"{value:.4f}"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The markdown of ``results/README.md``."""
    lines = [
        "# Results at a glance",
        "",
        "Written by `python bench/quality.py --summary` from every `results/<name>.csv` whose bench config",
        "`bench/configs/<name>.yaml` exists, with the rows made under that config as it is now. For each dataset,",
        "evaluation protocol and model: the row with the best validation NDCG@10 (mean over its seeds) among the",
        "model's rows of the most seeds (up to 3, so that one lucky seed does not stand for a model), its test",
        "metrics (mean over the same seeds), the table it is in and the `run_recbole` command of its first seed",
        "(the others differ by `--seed`). Intervals, the other rows and their choices are in each table.",
    ]
    titles = " | ".join(f"test {metric.upper().replace('HIT', 'HR')}" for metric in TEST_METRICS)
    for (dataset, evaluation), best in best_configurations(rows).items():
        lines += ["", f"## {dataset}", "", f"Protocol: {evaluation}.", ""]
        lines += [f"| model | row | seeds | valid NDCG@10 | {titles} | table | command |", "|---" * 9 + "|"]
        for runs in best:
            first = min(runs, key=lambda run: int(run["seed"]))
            cells = [first["model"], first["label"], str(len(runs)), _cell(runs, f"valid_{SELECTION_METRIC}")]
            cells += [_cell(runs, f"test_{metric}") for metric in TEST_METRICS]
            cells += [f"[{first['file']}]({first['file']})", f"`{first['command']}`"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(results_dir: Path) -> Path:
    """Write ``<results_dir>/README.md`` (:func:`summary_markdown` of :func:`bench_rows`); returns its path."""
    out = results_dir / "README.md"
    out.write_text(summary_markdown(bench_rows(results_dir)))
    return out
