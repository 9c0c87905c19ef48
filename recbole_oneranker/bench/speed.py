"""Speed benchmark: training throughput, epoch time, training FLOPs, peak memory and full-ranking latency.

    python bench/speed.py                                   # HSTU vs SASRec on ml-100k, d=50, 2 layers, L=50
    python bench/speed.py --models HSTU OneRanker SASRec    # OneRanker's cost next to its backbone's
    python bench/speed.py --models HSTU SASRec --hidden-size 64 --max-len 200 --epochs 2
    python bench/speed.py --max-batches 3 --out /tmp/speed.md      # a smoke run
    python bench/speed.py --models HSTU OneRanker --baseline HSTU --flops-only --out results/flops.md  # no timing
    python bench/speed.py --models OneRanker --flops-only --set use_step2=False --out /tmp/flops.md  # a variant
    python bench/speed.py --models HSTU GPR OneRec --baseline HSTU --beam 50    # + top-50 beam latency

Every model gets the same width, depth, heads and history length, on the same data, each in its own process (so
peak memory is its own). Training is timed over whole epochs (or the first ``--max-batches`` batches), without
validation; throughput counts users and trained target positions per second (SASRec trains one row per prefix,
HSTU one row per user, or per window of the history length, with a loss at every position). Latency is
``full_sort_predict`` per batch of ``--eval-batch`` test users. Training FLOPs (forward + backward, counted by
``torch.utils.flop_counter`` over a few batches) measure cost independently of the machine and of its load;
so do the operators dispatched per training batch and per ``full_sort_predict`` batch, what a GPU pays for when
batches are too small to fill it (most operators are one kernel launch each). ``--flops-only`` counts these alone,
without timing. Models that generate semantic IDs (GPR, OneRec) read the committed ``results/sids/<dataset>``
file unless ``--set sid_file=...`` names another, and get a second table: the latency of their beam searches
at width ``--beam`` per batch of ``--eval-batch`` test users (GPR's and OneRec's ``generate``, the top ``--beam``
items; OneRec's session beam with and without its key/value cache), with the FLOPs and operators of one call.
Writes a markdown report with the command and the machine.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.utils import init_seed
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from recbole_oneranker.bench.common import DEFAULT_DATA_PATH, EMBEDDED_DATASET, REPO, ensure_dataset, run_worker
from recbole_oneranker.config import Config, package_defaults
from recbole_oneranker.data import create_dataset, data_preparation
from recbole_oneranker.overrides import parse_assignments
from recbole_oneranker.registry import get_model
from recbole_oneranker.trainer_lookup import get_trainer

COMMITTED_SIDS = Path("results") / "sids"  # <dataset>/<dataset>.sid: the semantic IDs the bench rows read


def committed_sid_file(dataset: str) -> Path:
    return COMMITTED_SIDS / dataset / f"{dataset}.sid"


def equal_size_settings(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Config giving every model the same width, depth, heads and history length."""
    settings: dict[str, Any] = {
        "hidden_size": args.hidden_size,
        "n_layers": args.layers,
        "n_heads": args.heads,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "eval_batch_size": args.eval_batch,
        "show_progress": False,
        "state": "ERROR",
        "metrics": ["Hit", "NDCG"],
        "valid_metric": "NDCG@10",
    }
    if model == "SASRec":
        settings["inner_size"] = args.hidden_size
    if model in ("HSTU", "OneRanker", "GPR"):  # OneRanker's G-decoder and GPR's HSD are the same HSTU stack
        settings.update(attention_dim=args.hidden_size // args.heads, linear_hidden_dim=args.hidden_size // args.heads)
    if model == "OneRec":  # each stack as deep as the others; feed-forward widths in OneRec.yaml's ratios to d
        settings.update(
            encoder_layers=args.layers,
            decoder_layers=args.layers,
            encoder_inner_size=2 * args.hidden_size,
            expert_inner_size=args.hidden_size,
        )
    if "sid_file" in package_defaults(model, args.dataset) and committed_sid_file(args.dataset).is_file():
        settings["sid_file"] = str(committed_sid_file(args.dataset))
    if args.dataset != EMBEDDED_DATASET:
        settings["data_path"] = str(ensure_dataset(args.dataset, args.data_path))
    # --set KEY=VALUE: extra config for every model (a key a model does not read leaves it unchanged)
    settings.update(parse_assignments(args.set, "--set"))
    return settings


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators that run inside it, views (which compute nothing) left out.

    On a GPU most operators are one kernel launch each, and with small batches the launches, not the FLOPs, set
    the time; like FLOPs, the count does not depend on the machine or its load.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def flop_counter() -> FlopCounterMode:
    """``torch.utils.flop_counter``'s counter, which also counts the CPU's fused attention kernel (its formula is
    the GPU kernels'): without it, scaled_dot_product_attention without dropout counts 0 FLOPs on a CPU."""
    cpu_attention = {  # the formulas on shapes, unwrapped: FlopCounterMode wraps a custom mapping itself
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__,
    }
    return FlopCounterMode(display=False, custom_mapping=cpu_attention)


def training_cost(model: torch.nn.Module, batches: list, device: str) -> tuple[float, float]:
    """``(FLOPs, operators per batch)`` of forward + backward over ``batches``: FLOPs of the matrix products and
    attention (:func:`flop_counter`), operators as :class:`OperatorCounter` counts them."""
    with flop_counter() as flops, OperatorCounter() as operators:
        for batch in batches:
            loss = model.calculate_loss(batch.to(device))
            (sum(loss) if isinstance(loss, tuple) else loss).backward()
    model.zero_grad(set_to_none=True)
    return float(flops.get_total_flops()), operators.count / len(batches)


def inference_cost(model: torch.nn.Module, call: Callable[[Any], Any], interaction) -> tuple[float, int]:
    """``(FLOPs, operators)`` of one ``call(interaction)`` of ``model``'s, e.g. ``model.full_sort_predict``, in eval
    mode without gradients (the model's mode is restored). Its parameters stop requiring gradients meanwhile: the
    FLOP counter's module tracker fails on a view of one (an expanded learned token) under ``no_grad``."""
    training, trainable = model.training, [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for parameter in trainable:
        parameter.requires_grad_(False)
    with torch.no_grad(), flop_counter() as flops, OperatorCounter() as operators:
        call(interaction)
    for parameter in trainable:
        parameter.requires_grad_(True)
    model.train(training)
    return float(flops.get_total_flops()), operators.count


def generation_calls(model: torch.nn.Module, beam: int) -> dict[str, Callable[[Any], Any]]:
    """The model's public beam searches at width ``beam``, by their names in the report: ``generate`` (the top
    ``beam`` items: GPR, OneRec) and OneRec's session beam with and without its key/value cache."""
    calls = {}
    if hasattr(model, "generate"):
        calls["generate"] = functools.partial(model.generate, k=beam)
    if hasattr(model, "generate_sessions"):
        for cached, label in ((True, "KV cache"), (False, "no cache")):
            calls[f"generate_sessions, {label}"] = functools.partial(
                model.generate_sessions, beam_size=beam, use_kv_cache=cached
            )
    return calls


def latencies_ms(call: Callable[[Any], Any], batches: list) -> list[float]:
    """Wall-clock milliseconds of ``call`` on each batch, without gradients."""
    latencies = []
    with torch.no_grad():
        for interaction in batches:
            start = time.perf_counter()
            call(interaction)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def median_and_p90(latencies: list[float]) -> dict[str, float]:
    return {"latency_ms_median": float(np.median(latencies)), "latency_ms_p90": float(np.percentile(latencies, 90))}


def measure(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and time one model in this process; returns the measurements."""
    config = Config(model_name, args.dataset, config_dict=equal_size_settings(model_name, args))
    init_seed(config["seed"], config["reproducibility"])  # the batches and weights of a run: counts reproduce
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train_data._dataset).to(config["device"])

    counted = list(itertools.islice(train_data, args.flop_batches))
    flops, operators_per_batch = training_cost(model, counted, config["device"])
    test_batches = [batch[0].to(config["device"]) for batch in itertools.islice(test_data, args.max_batches or None)]
    result: dict[str, Any] = {
        "model": model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_rows": len(train_data._dataset.inter_feat),
        "epoch_gflops": flops * len(train_data) / len(counted) / 1e9,
        "train_operators": operators_per_batch,
        "ranking_operators": inference_cost(model, model.full_sort_predict, test_batches[0])[1],
        "sid_file": config["sid_file"],
        "test_batches": len(test_batches),
    }
    if not args.flops_only:
        result |= training_and_ranking_times(model, config, train_data, test_batches, args)
    return result | {"generation": generation_rows(model, test_batches, args)}  # after the peak memory is read


def training_and_ranking_times(model, config, train_data, test_batches: list, args: argparse.Namespace) -> dict:
    """Epoch time, throughput, peak memory (so far) and ``full_sort_predict`` latency of a model."""
    train_feat = train_data._dataset.inter_feat
    users = len(np.unique(train_feat[config["USER_ID_FIELD"]].numpy()))
    # Target positions per epoch: one per row, or every history position + the target in whole-sequence mode.
    positions = int(train_feat[config["ITEM_LIST_LENGTH_FIELD"]].sum()) if config["whole_sequence"] else len(train_feat)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_times = []
    for epoch in range(args.epochs):
        batches = list(itertools.islice(train_data, args.max_batches)) if args.max_batches else train_data
        fraction = len(batches) / len(train_data) if args.max_batches else 1.0
        start = time.perf_counter()
        trainer._train_epoch(batches, epoch)
        epoch_times.append((time.perf_counter() - start) / fraction)  # extrapolated to a whole epoch
    epoch_time = float(np.median(epoch_times))

    model.eval()
    latencies = latencies_ms(model.full_sort_predict, test_batches)
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "epoch_time_s": epoch_time,
        "users_per_s": users / epoch_time,
        "positions_per_s": positions / epoch_time,
        "peak_memory_mb": peak_mb,
    } | median_and_p90(latencies)


def generation_rows(model: torch.nn.Module, test_batches: list, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per beam search of the model (:func:`generation_calls`, none with ``--beam 0``): the GFLOPs and
    operators of one call on the first test batch and, unless ``--flops-only``, its latency on every test batch."""
    rows = []
    for name, call in (generation_calls(model, args.beam) if args.beam else {}).items():
        flops, operators = inference_cost(model, call, test_batches[0])
        row = {"call": name, "gflops": flops / 1e9, "operators": operators}
        if not args.flops_only:
            model.eval()
            row |= median_and_p90(latencies_ms(call, test_batches))
        rows.append(row)
    return rows


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def write_report(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    base = next((r for r in results if r["model"] == args.baseline), results[0])
    columns = [  # (header, cell); the timed ones are left out with --flops-only
        ("model", lambda r: r["model"]),
        ("params", lambda r: f"{r['parameters']:,}"),
        ("train rows", lambda r: f"{r['train_rows']:,}"),
        ("training GFLOPs / epoch", lambda r: f"{r['epoch_gflops']:,.1f}"),
        (f"GFLOPs vs {base['model']}", lambda r: f"{r['epoch_gflops'] / base['epoch_gflops']:.2f}x"),
        ("operators / training batch", lambda r: f"{r['train_operators']:,.0f}"),
        ("operators / full-sort batch", lambda r: f"{r['ranking_operators']:,}"),
    ]
    if not args.flops_only:
        columns += [
            ("epoch (s)", lambda r: f"{r['epoch_time_s']:.2f}"),
            (f"speed-up vs {base['model']}", lambda r: f"{base['epoch_time_s'] / r['epoch_time_s']:.1f}x"),
            ("users/s", lambda r: f"{r['users_per_s']:,.0f}"),
            ("positions/s", lambda r: f"{r['positions_per_s']:,.0f}"),
            ("peak memory (MB)", lambda r: f"{r['peak_memory_mb']:,.0f}"),
            (
                "full-sort latency median / p90 (ms)",
                lambda r: f"{r['latency_ms_median']:.1f} / {r['latency_ms_p90']:.1f}",
            ),
        ]
    timing = (
        f" Latency over batches of {args.eval_batch} test users. Epoch time is the median of {args.epochs} epoch(s)"
        + (f", extrapolated from {args.max_batches} batches" if args.max_batches else "")
        + ". Positions = trained next-item targets per epoch."
    )
    lines = [
        f"# {'Training cost' if args.flops_only else 'Speed'}: {', '.join(r['model'] for r in results)} on "
        f"{args.dataset}",
        "",
        f"Produced by `{command}`" + ("." if args.flops_only else f" on {machine()}."),
        f"Equal sizes: hidden {args.hidden_size}, {args.layers} layers, {args.heads} head(s), history length "
        f"{args.max_len}"
        + (" (OneRec: an encoder and a decoder of that depth each)" if "OneRec" in args.models else "")
        + "."
        + ("" if args.flops_only else timing),
        f"Training GFLOPs: forward + backward matrix products and attention over the first {args.flop_batches} "
        "batches (torch.utils.flop_counter), scaled to the epoch: a cost that does not depend on the machine or its "
        "load. Operators: aten operators dispatched (views left out) per training batch (forward + backward, over "
        f"the same batches) and per full_sort_predict of {args.eval_batch} test users; on a GPU most are one kernel "
        "launch each.",
        "",
        markdown_row(header for header, _ in columns),
        "|" + "---|" * len(columns),
    ]
    lines += [markdown_row(cell(r) for _, cell in columns) for r in results]
    lines += sid_note(results) + generation_table(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def markdown_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def sid_note(results: list[dict[str, Any]]) -> list[str]:
    """The line naming the semantic IDs each SID model read (none without such a model)."""
    readers: dict[str, list[str]] = {}
    for r in results:
        if r["sid_file"]:
            readers.setdefault(r["sid_file"], []).append(r["model"])
    if not readers:
        return []
    return [
        "",
        "Semantic IDs: " + "; ".join(f"{', '.join(models)} read `{file}`" for file, models in readers.items()) + ".",
    ]


def generation_table(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The beam-search section: one row per beam search of each model that has one (none without such a model)."""
    rows = [(r, call) for r in results for call in r["generation"]]
    if not rows:
        return []
    columns = [
        ("model", lambda r, call: r["model"]),
        ("beam search", lambda r, call: call["call"]),
        ("GFLOPs / call", lambda r, call: f"{call['gflops']:,.2f}"),
        ("operators / call", lambda r, call: f"{call['operators']:,}"),
    ]
    latency = ""
    if not args.flops_only:
        columns.append(
            (
                "latency median / p90 (ms)",
                lambda r, call: f"{call['latency_ms_median']:.1f} / {call['latency_ms_p90']:.1f}",
            )
        )
        latency = f" Latency: wall clock per call, median / p90 over the {rows[0][0]['test_batches']} test batches."
    return [
        "",
        f"## Beam search: top {args.beam} per batch of {args.eval_batch} test users",
        "",
        "`generate`: the top items by trie-constrained beam search over their semantic IDs (GPR: a beam of "
        f"{args.beam} per MTP head, the union ranked by the served score). `generate_sessions`: OneRec's beam of "
        f"{args.beam} whole sessions (each item a trie beam of {args.beam}), the decoder stepping from its key/value "
        "cache or decoding each path's whole session again at every step. GFLOPs and operators: one call on the "
        "first test batch, without gradients (FLOPs count the matrix products and attention, not the beam's top-k "
        "and gathers)." + latency,
        "",
        markdown_row(header for header, _ in columns),
        "|" + "---|" * len(columns),
        *(markdown_row(cell(r, call) for _, cell in columns) for r, call in rows),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--models", nargs="+", default=["HSTU", "SASRec"])
    parser.add_argument("--baseline", default="SASRec", help="the model speed-ups are relative to")
    parser.add_argument("--hidden-size", type=int, default=50)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per model (median reported)")
    parser.add_argument("--max-batches", type=int, default=0, help="time only this many batches (smoke runs)")
    parser.add_argument("--eval-batch", type=int, default=256, help="test users per full_sort_predict call")
    parser.add_argument("--flop-batches", type=int, default=4, help="training batches whose FLOPs are counted")
    parser.add_argument("--flops-only", action="store_true", help="count training FLOPs only: no timing, any load")
    parser.add_argument("--beam", type=int, default=50, help="width of the SID models' beam searches; 0: none")
    parser.add_argument("--data-path", type=Path, default=DEFAULT_DATA_PATH)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config for every model")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "speed.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker, args)), flush=True)
        return 0
    raw_args = list(argv if argv is not None else sys.argv[1:])
    results = []
    for model in args.models:
        print(f"timing {model} ...", flush=True)
        result, failure = run_worker("recbole_oneranker.bench.speed", [*raw_args, "--worker", model])
        if result is None:
            print(failure, file=sys.stderr)
            return 1
        results.append(result)
        timed = f", epoch {results[-1]['epoch_time_s']:.2f} s" if "epoch_time_s" in results[-1] else ""
        print(f"  {model}: {results[-1]['epoch_gflops']:,.1f} training GFLOPs per epoch{timed}", flush=True)
    write_report(results, args, "python bench/speed.py " + " ".join(shlex.quote(a) for a in raw_args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
