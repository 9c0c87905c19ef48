"""The ``run_recbole`` command: train and test any model, this package's or RecBole's, in one harness.

    run_recbole --model=SASRec                       # the ml-100k copy shipped inside recbole
    run_recbole --model=SASRec --dataset=beauty --config_files="a.yaml b.yaml" --epochs=20 --hidden_size=64
    run_recbole --model=HSTU --nproc=2                # DDP: 2 processes (gloo on the CPU, nccl on GPUs)
    torchrun --nproc_per_node=2 -m recbole_oneranker --model=HSTU   # the same, started by torchrun

``--model``, ``--dataset`` and ``--config_files`` are read here; every other ``--key=value`` is a RecBole config
override (values are Python literals, as in RecBole: ``--topk=[10,20]``). Mistakes in the command (unknown model,
dataset or key, a value outside its rule, a malformed data file) and files that cannot be read or written (an
unwritable folder, a truncated resume snapshot) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from recbole_oneranker import distributed
from recbole_oneranker.compat import IncompatibleEnvironmentError
from recbole_oneranker.errors import ConfigError, RunFileError, UnknownModelError
from recbole_oneranker.registry import model_names

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_recbole",
        description="Train a recommender with early stopping on validation, then test it (RecBole 1.2.1 flow).",
        epilog="Any other --key=value overrides a RecBole config key, e.g. --epochs=10 --learning_rate=0.0005.",
    )
    parser.add_argument("--model", "-m", default=None, help="model name, e.g. SASRec, BERT4Rec, GRU4Rec")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (default: ml-100k shipped in recbole)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files, later ones win")
    parser.add_argument("--list-models", action="store_true", help="print the available model names and exit")
    return parser


def _format_metrics(result: dict[str, Any] | None) -> str:
    if not result:
        return "(none)"
    return "  ".join(f"{name} {float(value):.4f}" for name, value in result.items())


def summary(result: dict[str, Any]) -> str:
    """The closing block of a run: what ran, how it was measured, best validation and test metrics, files."""
    lines = [
        f"== {result['model']} on {result['dataset']}  (run {result['run_id']}, {result['wall_time_s']:.0f} s)",
        f"protocol   : {result['protocol']}",
        f"best valid : {_format_metrics(result['best_valid_result'])}",
        f"test       : {_format_metrics(result['test_result'])}",
    ]
    if result["candidate_result"]:
        lines.append(f"candidates : {_format_metrics(result['candidate_result'])}")
    if result.get("reward_result"):
        lines.append(f"reward     : {_format_metrics(result['reward_result'])} (the reward model's estimate)")
    if result["saved_model_file"]:
        lines.append(f"checkpoint : {result['saved_model_file']}")
    lines.append(f"log        : {result['log_file']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = _parser().parse_known_args(argv)
    if args.list_models:
        print("\n".join(model_names()))
        return 0
    if args.model is None:
        print("run_recbole: error: no model given: pass --model=NAME (e.g. --model=SASRec)", file=sys.stderr)
        return USAGE_ERROR
    config_files = args.config_files.split() if args.config_files else None
    try:
        from recbole_oneranker.quick_start import run

        result = run(args.model, args.dataset, config_file_list=config_files, cmd_args=overrides)
    except (ConfigError, UnknownModelError, IncompatibleEnvironmentError, RunFileError) as error:
        print(f"run_recbole: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    if distributed.is_first_here():  # torchrun runs this command once per process
        print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
