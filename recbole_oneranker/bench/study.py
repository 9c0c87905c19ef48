"""The comparison the project exists for, from benchmark rows already run (no training): OneRanker beside GPR,
OneRec, HSTU and SASRec in the shape of the OneRanker paper's Table 1.

    python bench/study.py --dataset ml-100k                       # each model's plain row, against GPR
    python bench/study.py --dataset taobao --rows HSTU GPR GPR-repeat OneRanker --out results/study-taobao.md

Per row of ``results/<dataset>.csv`` made under ``bench/configs/<dataset>.yaml`` as it is now: the candidate-set
protocol's HR@K and NDCG@K for K in 1, 3, 5, 10, 15 (the paper's Table 1; target + the config's sampled negatives),
GMV@10 of the full ranking, each as mean ± 95% t-interval over the row's seeds; the relative HR@1 over the baseline
row (the paper's headline, "OneRanker HR@1 .2639 against GPR .1824"), as a ratio of the seed means; the full
ranking's test NDCG@10; and the per-user paired differences to the baseline of candidate HR@1, GMV@10 and NDCG@10
(95% bootstrap interval over users, from the rows' rank and per-user files).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from recbole_oneranker.bench.common import REPO, configured_rows, mean_ci
from recbole_oneranker.bench.quality import paired_cell, per_user_candidate_hit, per_user_gmv, per_user_ndcg

__all__ = ["DEFAULT_ROWS", "TABLE1_CUTOFFS", "main", "study_markdown", "study_rows"]

TABLE1_CUTOFFS = (1, 3, 5, 10, 15)
DEFAULT_ROWS = ("SASRec", "HSTU", "GPR", "OneRec", "OneRanker")


def study_rows(dataset: str, labels: list[str], results: Path) -> dict[str, list[dict[str, Any]]]:
    """Label -> the finished seeds of that row, for each of ``labels`` that has any (in the order given)."""
    bench_config, _, _, rows = configured_rows(results, dataset)
    unknown = [label for label in labels if label not in bench_config["rows"]]
    if unknown:
        raise ValueError(f"no row {unknown} in bench/configs/{dataset}.yaml (rows: {', '.join(bench_config['rows'])})")
    found = {label: [row for row in rows if row["label"] == label] for label in labels}
    return {label: runs for label, runs in found.items() if runs}


def _cell(runs: list[dict[str, Any]], column: str) -> str:
    values = [float(run[column]) for run in runs if run.get(column) not in (None, "")]
    if len(values) < len(runs):
        return "-"
    mean, half = mean_ci(values)
    return f"{mean:.4f} ± {half:.4f}" if len(values) > 1 else f"{mean:.4f}"


def _seed_mean(runs: list[dict[str, Any]], column: str) -> float | None:
    values = [float(run[column]) for run in runs if run.get(column) not in (None, "")]
    return sum(values) / len(values) if values and len(values) == len(runs) else None


def _relative(own: float | None, baseline: float | None) -> str:
    if own is None or not baseline:
        return "-"
    return f"{own / baseline - 1:+.1%}"


def study_markdown(dataset: str, by_label: dict[str, list[dict[str, Any]]], baseline: str, command: str) -> str:
    """The study's table (module docstring) for the rows of ``by_label``, against the row ``baseline``."""
    base_runs = by_label.get(baseline, [])
    base_hr1 = _seed_mean(base_runs, "candidate_hit@1")
    per_user = {"hr1": per_user_candidate_hit, "gmv": per_user_gmv, "ndcg": per_user_ndcg}
    base = {name: read(base_runs) if base_runs else None for name, read in per_user.items()}
    header = ["row", "model", "seeds"]
    header += [f"cand. HR@{k}" for k in TABLE1_CUTOFFS] + [f"cand. NDCG@{k}" for k in TABLE1_CUTOFFS[1:]]
    header += [f"cand. HR@1 vs {baseline}", f"Δ cand. HR@1 vs {baseline} (per user)"]
    header += ["GMV@10", f"Δ GMV@10 vs {baseline} (per user)", "test NDCG@10", f"Δ NDCG@10 vs {baseline} (per user)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, runs in by_label.items():
        own = {name: read(runs) for name, read in per_user.items()}
        cells = [label, runs[0]["model"], str(len(runs))]
        cells += [_cell(runs, f"candidate_hit@{k}") for k in TABLE1_CUTOFFS]
        cells += [_cell(runs, f"candidate_ndcg@{k}") for k in TABLE1_CUTOFFS[1:]]
        cells += [_relative(_seed_mean(runs, "candidate_hit@1"), base_hr1), paired_cell(own["hr1"], base["hr1"])]
        cells += [_cell(runs, "test_gmv@10"), paired_cell(own["gmv"], base["gmv"])]
        cells += [_cell(runs, "test_ndcg@10"), paired_cell(own["ndcg"], base["ndcg"])]
        lines.append("| " + " | ".join(cells) + " |")
    negatives = {run["command"].split("--candidate_negatives=")[1].split()[0] for runs in by_label.values()
                 for run in runs if "--candidate_negatives=" in run["command"]}  # fmt: skip
    candidates = f"the target and {', '.join(sorted(negatives))} sampled negatives" if negatives else "-"
    intro = [
        f"# The study on {dataset}: the OneRanker paper's Table 1 shape, against {baseline}",
        "",
        f"Produced by `{command}` from the benchmark rows in [{dataset}.md]({dataset}.md) (no training; each row's",
        "commands and per-seed numbers are there). cand.: the candidate-set protocol, each test target ranked among",
        f"{candidates}; mean ± 95% t-interval over seeds (one seed: the value alone). GMV@10 and NDCG@10: full",
        f"ranking. cand. HR@1 vs {baseline}: the ratio of the seed means, less 1 (the paper's relative HR@1). Each Δ:",
        f"the mean per-user difference to {baseline} (each user's value averaged over the row's seeds) over the users",
        "both rows tested, with its 95% paired bootstrap interval; '-' where a row was run before its per-user",
        "candidate ranks and target values were kept (results/ranks/<dataset>/*.per-user.npz). Each run draws its",
        "candidates' negatives after training, so two rows pair users, not negatives: the interval holds that noise.",
        "",
    ]
    return "\n".join(intro + lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/study.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a bench config name: bench/configs/<dataset>.yaml")
    parser.add_argument("--rows", nargs="+", help=f"row labels, in table order (default: {' '.join(DEFAULT_ROWS)})")
    parser.add_argument("--baseline", default="GPR", help="the row the others are compared with (default: GPR)")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="the results folder")
    parser.add_argument("--out", type=Path, help="write the markdown there (default: print it)")
    args = parser.parse_args(argv)
    labels = list(dict.fromkeys(args.rows or DEFAULT_ROWS))
    try:
        by_label = study_rows(args.dataset, labels if args.baseline in labels else [*labels, args.baseline],
                              args.results)  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.baseline not in by_label:
        print(f"error: the baseline row {args.baseline} has no finished seed in {args.dataset}.csv", file=sys.stderr)
        return 2
    command = "python bench/study.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = study_markdown(args.dataset, by_label, args.baseline, command)
    if args.out:
        args.out.write_text(report)
        print(f"wrote {args.out}")
    else:
        print(report, end="")
    return 0
