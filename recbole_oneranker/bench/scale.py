"""Scaling benchmark: training time per batch and peak memory against catalogue size and history length.

    python bench/scale.py                                          # HSTU (sampled and full softmax), OneRanker
    python bench/scale.py --items 10000 100000 --lengths 50 200    # fewer points
    python bench/scale.py --items 200 400 --lengths 10 --users 8 --batches 1 --out /tmp/scale.md   # a smoke run
    python bench/scale.py --curves GPR OneRec --out results/scale-sid.md   # the semantic-ID heads

Two sweeps on synthetic data: the catalogue size at history length ``--base-length``, and the history length at
catalogue size ``--base-items``. Each point is a fresh synthetic dataset in RecBole's atomic files: ``--users`` x
(``--warmup`` + ``--batches``) users, each with a history of the point's length whose items are drawn from a Zipf
popularity over the whole catalogue, and an ``.item`` file that lists every item (so the catalogue is the point's
size, seen or not); GPR and OneRec read random unique semantic IDs written for it. Curves: a model with its
default head, or ``<model>-full`` with ``loss_type=full_softmax``. Every model gets the same width, depth and
heads (:func:`speed.equal_size_settings`) and is trained, each point in its own process (so its peak memory is its
own), on ``--warmup`` batches of ``--users`` users, then timed over ``--batches`` more. The model's epoch-start
hook (OneRanker's k-means of its Fake Item Tokens over the catalogue) is timed apart: an epoch costs it once, plus
one batch time per ``--users`` users. The growth exponent of a model is the slope of log(time) against log(size)
over its points (numpy.polyfit). Points over ``--point-timeout`` seconds or ``--memory-gb`` of address space are
dropped and listed, and so are a curve's larger points in that sweep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from recbole.utils import init_seed

from recbole_oneranker.bench.common import REPO, run_worker
from recbole_oneranker.bench.speed import equal_size_settings, machine, markdown_row
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.data.sid import write_sid_file
from recbole_oneranker.registry import get_model
from recbole_oneranker.trainer_lookup import get_trainer

DATASET = "synthetic"
SID_CODEBOOK, SID_LEVELS = 256, 3  # the synthetic semantic IDs: up to 256**3 items
# Curve label -> (model, its extra config): the same model under another head is a curve of its own.
CURVES: dict[str, tuple[str, dict[str, Any]]] = {
    "HSTU": ("HSTU", {}),
    "HSTU-full": ("HSTU", {"loss_type": "full_softmax"}),
    "OneRanker": ("OneRanker", {}),
    "OneRanker-full": ("OneRanker", {"loss_type": "full_softmax"}),
    "GPR": ("GPR", {}),
    "OneRec": ("OneRec", {}),
}
SID_MODELS = ("GPR", "OneRec")  # they read semantic IDs: a synthetic point writes random unique ones
HEAD_NOTES = {
    "HSTU": "sampled softmax",
    "HSTU-full": "full softmax",
    "OneRanker": "sampled softmax + full-catalogue retrieval at 2 positions per user",
    "OneRanker-full": "full softmax + full-catalogue retrieval at 2 positions per user",
    "GPR": f"semantic IDs, {SID_LEVELS} levels of {SID_CODEBOOK} codes",
    "OneRec": f"semantic IDs, {SID_LEVELS} levels of {SID_CODEBOOK} codes",
}


def write_synthetic_dataset(folder: Path, n_users: int, n_items: int, length: int, seed: int = 0) -> Path:
    """``folder/synthetic/synthetic.{inter,item}``: ``n_users`` users with ``length`` + 3 interactions each (a
    training row of ``length`` inputs and their next items once the last two are held out), items drawn from a
    Zipf(1) popularity over ``n_items`` items, all of which the ``.item`` file lists. Returns ``folder``, the
    data path."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    per_user = length + 3
    items = rng.choice(n_items, size=n_users * per_user, p=popularity / popularity.sum())
    inter = pd.DataFrame(
        {
            "user_id:token": np.repeat(np.arange(n_users), per_user),
            "item_id:token": items,
            "timestamp:float": np.tile(np.arange(per_user, dtype=float), n_users),
        }
    )
    (folder / DATASET).mkdir(parents=True, exist_ok=True)
    inter.to_csv(folder / DATASET / f"{DATASET}.inter", sep="\t", index=False)
    pd.DataFrame({"item_id:token": np.arange(n_items)}).to_csv(
        folder / DATASET / f"{DATASET}.item", sep="\t", index=False
    )
    return folder


def write_synthetic_sids(path: Path, n_items: int, seed: int = 0) -> Path:
    """Random unique semantic IDs for the ``n_items`` synthetic items: each item's place in a random permutation,
    written in base ``SID_CODEBOOK`` over ``SID_LEVELS`` levels."""
    place = torch.from_numpy(np.random.default_rng(seed).permutation(n_items))
    codes = torch.stack([(place // SID_CODEBOOK**level) % SID_CODEBOOK for level in range(SID_LEVELS)], dim=1)
    write_sid_file(path, [str(item) for item in range(n_items)], codes)
    return path


def point_settings(curve: str, items: int, length: int, data_path: Path, args: argparse.Namespace) -> dict:
    """The config of one point: :func:`speed.equal_size_settings` at this history length, on the synthetic data."""
    model, extra = CURVES[curve]
    sizes = argparse.Namespace(**{**vars(args), "max_len": length, "dataset": DATASET, "data_path": data_path})
    settings = equal_size_settings(model, sizes) | extra | {"train_batch_size": args.users, "load_col": None}
    if model in SID_MODELS:
        settings["sid_file"] = str(write_synthetic_sids(data_path / f"{DATASET}.sid", items))
    return settings


def peak_memory_mb() -> float:
    """Peak memory so far: GPU memory allocated on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_point(curve: str, items: int, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build and train one curve at one point in this process; returns its timings and memory."""
    n_users = args.users * (args.warmup + args.batches)
    with tempfile.TemporaryDirectory() as folder:
        data_path = write_synthetic_dataset(Path(folder), n_users, items, length)
        config = Config(CURVES[curve][0], DATASET, config_dict=point_settings(curve, items, length, data_path, args))
        init_seed(config["seed"], config["reproducibility"])
        train_data, _, _ = data_preparation(config, create_dataset(config))
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])  # reads any SIDs
    catalogue = train_data._dataset.item_num - 1  # the padding id aside
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    batches = list(itertools.islice(train_data, args.warmup + args.batches))
    memory_before_training = peak_memory_mb()
    trainer._train_epoch(batches[: args.warmup], 0)
    hook_s = time_epoch_start_hook(model)
    start = time.perf_counter()
    trainer._train_epoch(batches[args.warmup :], 1)  # runs the epoch-start hook again: its time is taken off
    batch_s = (time.perf_counter() - start - hook_s) / len(batches[args.warmup :])
    return {
        "curve": curve,
        "items": items,
        "catalogue": catalogue,
        "length": length,
        "batch_ms": batch_s * 1000,
        "hook_s": hook_s,
        "memory_before_training_mb": memory_before_training,
        "peak_memory_mb": peak_memory_mb(),
    }


def time_epoch_start_hook(model: torch.nn.Module) -> float:
    """Seconds of one call of the model's epoch-start hook (0 without one)."""
    hook = getattr(model, "on_train_epoch_start", None)
    if hook is None:
        return 0.0
    start = time.perf_counter()
    hook(1)
    return time.perf_counter() - start


def limit_memory(gigabytes: float) -> None:
    """Cap this process's address space, so a point that does not fit fails alone instead of swapping."""
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def sweep_points(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """``(sweep, items, length)`` of every point: the catalogue sweep, then the history-length sweep."""
    points = [("catalogue", items, args.base_length) for items in args.items]
    return points + [("history", args.base_items, length) for length in args.lengths]


def run_sweeps(args: argparse.Namespace, raw_args: list[str]) -> tuple[list[dict], list[str], list[float]]:
    """Every curve at every point, one process each: ``(results, dropped points, load averages)``. A point shared
    by both sweeps is measured once; a curve's larger points are skipped once a smaller one was dropped."""
    results: dict[tuple[str, int, int], dict] = {}
    dropped, loads = [], [os.getloadavg()[0]]
    failed: set[tuple[str, str]] = set()  # (curve, sweep) with a dropped point
    failed_points: set[tuple[str, int, int]] = set()
    for sweep, items, length in sweep_points(args):
        for curve in args.curves:
            key = (curve, items, length)
            if key in results or key in failed_points:
                continue
            if (curve, sweep) in failed:
                dropped.append(f"{curve} at {items:,} items, length {length}: skipped, a smaller point was dropped")
                continue
            print(f"{curve}: {items:,} items, history length {length} ...", flush=True)
            point_args = [*raw_args, "--worker", curve, "--point-items", str(items), "--point-length", str(length)]
            result, failure = run_worker("recbole_oneranker.bench.scale", point_args, timeout=args.point_timeout)
            loads.append(os.getloadavg()[0])
            if result is None:
                print(failure, file=sys.stderr)
                dropped.append(f"{curve} at {items:,} items, length {length}: {drop_reason(failure)}")
                failed.add((curve, sweep))
                failed_points.add(key)
                continue
            results[key] = result
            print(f"  {result['batch_ms']:.1f} ms per batch, peak {result['peak_memory_mb']:,.0f} MB", flush=True)
    return list(results.values()), dropped, loads


def drop_reason(failure: str) -> str:
    """A one-line reason from a failed worker's output."""
    if "limit" in failure.splitlines()[0]:
        return failure.splitlines()[0]
    if "MemoryError" in failure or "can't allocate memory" in failure or "DefaultCPUAllocator" in failure:
        return "out of memory (over the address-space limit)"
    return failure.splitlines()[0] + " (see the run's log)"


def growth_exponent(sizes: list[float], values: list[float]) -> float | None:
    """Slope of log(value) against log(size): cost grows as size ** slope (None under two points)."""
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def sweep_table(results: list[dict], args: argparse.Namespace, sweep: str) -> list[str]:
    """One sweep's table: a row per curve, ms per batch (peak MB) at each size, the fitted exponents."""
    size_key, sizes = ("items", args.items) if sweep == "catalogue" else ("length", args.lengths)
    fixed = ("length", args.base_length) if sweep == "catalogue" else ("items", args.base_items)
    header = ["curve", "head", *(f"{size:,}" for size in sizes), "time exponent", "memory exponent"]
    lines = [markdown_row(header), "|" + "---|" * len(header)]
    for curve in args.curves:
        points = {r[size_key]: r for r in results if r["curve"] == curve and r[fixed[0]] == fixed[1]}
        cells = [point_cell(points[s]) if s in points else "dropped" for s in sizes]
        measured = sorted(points)
        time_slope = growth_exponent(measured, [points[s]["batch_ms"] for s in measured])
        memory_slope = growth_exponent(measured, [training_memory_mb(points[s]) for s in measured])
        lines.append(
            markdown_row([curve, HEAD_NOTES[curve], *cells, exponent_cell(time_slope), exponent_cell(memory_slope)])
        )
    return lines


def training_memory_mb(point: dict) -> float:
    """What training added to the peak memory (activations, gradients, optimiser state), at least 1 MB."""
    return max(point["peak_memory_mb"] - point["memory_before_training_mb"], 1.0)


def point_cell(point: dict) -> str:
    return f"{point['batch_ms']:,.1f} ms, {point['peak_memory_mb']:,.0f} MB (+{training_memory_mb(point):,.0f})"


def exponent_cell(slope: float | None) -> str:
    return "–" if slope is None else f"{slope:.2f}".replace("-0.00", "0.00")


def find_point(results: list[dict], curve: str, items: int, length: int) -> dict | None:
    return next((r for r in results if (r["curve"], r["items"], r["length"]) == (curve, items, length)), None)


def parting_lines(results: list[dict], args: argparse.Namespace) -> list[str]:
    """Full softmax's time per batch over sampled softmax's, per catalogue size, for every model with both."""
    lines = []
    for sampled in [c for c in args.curves if f"{c}-full" in args.curves]:
        ratios = []
        for items in args.items:
            base = find_point(results, sampled, items, args.base_length)
            full = find_point(results, f"{sampled}-full", items, args.base_length)
            ratio = f"{full['batch_ms'] / base['batch_ms']:.1f}x" if base and full else "–"
            ratios.append(f"{items:,} items: {ratio}")
        lines.append(f"- {sampled}-full / {sampled}, time per batch: " + ", ".join(ratios))
    return lines


def hook_lines(results: list[dict]) -> list[str]:
    """The epoch-start hook's time per catalogue size, for the curves that have one."""
    timed = [r for r in results if r["hook_s"] > 0.001]
    if not timed:
        return []
    cells = ", ".join(f"{r['curve']} {r['items']:,} items / length {r['length']}: {r['hook_s']:.2f} s" for r in timed)
    return ["", f"Epoch-start hook (once per epoch, not in the batch times): {cells}."]


def write_report(results: list[dict], dropped: list[str], loads: list[float], args, command: str) -> None:
    """The markdown report: both sweeps' tables, the full/sampled ratios, what was dropped, how it was run."""
    memory = "GPU memory allocated" if torch.cuda.is_available() else "peak RSS"
    lines = [
        f"# How training cost grows: {', '.join(args.curves)}",
        "",
        f"Produced by `{command}` on {machine()}; load average (1 min) during the run {min(loads):.2f}–"
        f"{max(loads):.2f}.",
        f"Equal sizes: hidden {args.hidden_size}, {args.layers} layers, {args.heads} head(s). Synthetic data: "
        f"Zipf(1) item popularity over the whole catalogue, every user's training history as long as the point's "
        f"history length. Cells: milliseconds per training batch of {args.users} users (forward, backward, "
        f"optimiser step; the mean of {args.batches} batches after {args.warmup} warm-up), the worker's peak memory "
        f"({memory}, the dataset and model included) and, in brackets, what training added to it (activations, "
        "gradients, optimiser state). An epoch is the epoch-start hook plus one batch per that many users. "
        "Exponents: slope of log(cost) against log(size) over the measured points (numpy.polyfit), for time per "
        "batch and for the memory training added.",
        "",
        f"## Catalogue size (history length {args.base_length})",
        "",
        *sweep_table(results, args, "catalogue"),
        "",
        f"## History length (catalogue of {args.base_items:,} items)",
        "",
        *sweep_table(results, args, "history"),
    ]
    parting = parting_lines(results, args)
    if parting:
        lines += ["", "## Where the heads part ways", "", *parting]
    lines += hook_lines(results)
    lines += ["", "## Dropped points", "", *([f"- {d}" for d in dropped] or ["None."])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", nargs="+", default=["HSTU", "HSTU-full", "OneRanker"], choices=list(CURVES))
    parser.add_argument("--items", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 200, 1024])
    parser.add_argument("--base-items", type=int, default=10_000, help="catalogue size of the history sweep")
    parser.add_argument("--base-length", type=int, default=50, help="history length of the catalogue sweep")
    parser.add_argument("--users", type=int, default=64, help="users per training batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training batches first")
    parser.add_argument("--batches", type=int, default=3, help="timed training batches per point")
    parser.add_argument("--hidden-size", type=int, default=50)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--point-timeout", type=float, default=300, help="seconds before a point is dropped")
    parser.add_argument("--memory-gb", type=float, default=16, help="address space of a point before it is dropped")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config for every model")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scale.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one curve at one point
    parser.add_argument("--point-items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--point-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.items, args.lengths = sorted(args.items), sorted(args.lengths)  # a dropped point skips the larger ones
    args.eval_batch = args.users  # what speed.equal_size_settings reads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        if not torch.cuda.is_available():  # a GPU's memory is not address space
            limit_memory(args.memory_gb)
        print("RESULT " + json.dumps(measure_point(args.worker, args.point_items, args.point_length, args)), flush=True)
        return 0
    raw_args = list(argv if argv is not None else sys.argv[1:])
    results, dropped, loads = run_sweeps(args, raw_args)
    write_report(results, dropped, loads, args, "python bench/scale.py " + " ".join(shlex.quote(a) for a in raw_args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
