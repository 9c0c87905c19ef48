"""Semantic-ID benchmarks: tokenizer quality on real data, and the cost of fitting and of constrained decoding.

    python bench/tokenizers.py report --checkpoint ml-100k=saved/A.pth taobao=saved/B.pth  # -> results/tokenizers.md
    python bench/tokenizers.py speed --threads 1          # -> results/tokenizers-speed-1thread.md

``report`` runs ``python -m recbole_oneranker.tokenize`` (in process, into a temporary folder: ``dataset/`` is left
alone) for every dataset x source x method and tabulates the manifests' metrics, each row with its command.
``speed`` times RQ-KMeans 3 x 256 on Beauty's item attributes and on 100k synthetic items, and a top-50 constrained
beam for 4,096 users with a small GRU decoder over each catalogue's SID trie. Both need the converted datasets
(``python -m recbole_oneranker.data.convert amazon-s3rec`` and ``taobao-userbehavior``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from recbole_oneranker.data.item_vectors import attribute_vectors, item_feature_table
from recbole_oneranker.model.layers import SIDTrie, constrained_beam_search
from recbole_oneranker.model.tokenizers import METHODS, TokenizerConfig, fit_semantic_ids
from recbole_oneranker.tokenize import build_parser, dataset_dir, tokenize

RESULTS = Path("results")
# (dataset, codebook size, attribute columns): ml-100k's 1,682 items get 32 codes a level, the others 256.
DATASETS = (("ml-100k", 32, ["class", "release_year"]), ("taobao", 256, None), ("beauty", 256, None))
NOTES_MARKER = "<!-- notes below are kept when the table is regenerated -->"
METRICS = ["collision_rate", "max_items_per_tuple", "utilisation", "max_load_ratio", "entropy",
           "reconstruction_error", "fit_seconds", "autoencoder_loss"]  # fmt: skip
COLUMNS = ["dataset", "source", "method", "items", *METRICS, "command"]


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def _row_commands(dataset: str, size: int, columns: list[str] | None, checkpoint: str | None) -> list[list[str]]:
    sources = [["attributes"]] + ([["checkpoint"], ["checkpoint", "attributes"]] if checkpoint else [])
    commands = []
    for source in sources:
        for method in METHODS:
            command = ["--dataset", dataset, "--method", method, "--levels", "3", "--codebook-size", str(size)]
            command += ["--source", *source]
            command += ["--columns", *columns] if columns and "attributes" in source else []
            command += ["--checkpoint", checkpoint] if checkpoint and "checkpoint" in source else []
            commands.append(command)
    return commands


def report(checkpoints: dict[str, str]) -> None:
    """Fit every row, then write ``results/tokenizers.md`` and ``.csv``."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for dataset, size, columns in DATASETS:
            for command in _row_commands(dataset, size, columns, checkpoints.get(dataset)):
                out = Path(scratch) / f"{dataset}.sid"
                args = build_parser().parse_args([*command, "--out", str(out), "--quiet"])
                print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command)}", flush=True)
                manifest = json.loads(tokenize(args, command).with_name(out.name + ".json").read_text())
                metrics = manifest["metrics"]
                rows.append(
                    {
                        "dataset": dataset,
                        "source": "+".join(manifest["sources"]),
                        "method": manifest["method"],
                        "items": manifest["num_items"],
                        **{key: metrics.get(key, "") for key in METRICS},  # no autoencoder loss for k-means
                        "command": manifest["command"],
                    }
                )
    _write_report(rows)


def _cell(key: str, value) -> str:
    if key == "autoencoder_loss" and value:
        return f"{value[0]:.4f} -> {value[1]:.4f}"
    if isinstance(value, list):
        return " / ".join(f"{v:.2f}" for v in value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write_report(rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "tokenizers.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: json.dumps(v) if isinstance(v, list) else v for key, v in row.items()} for row in rows)
    header = "| " + " | ".join(COLUMNS[:-1]) + " |\n|" + "---|" * (len(COLUMNS) - 1) + "\n"
    table = "".join("| " + " | ".join(_cell(key, row[key]) for key in COLUMNS[:-1]) + " |\n" for row in rows)
    commands = "".join(f"- {row['dataset']} / {row['source']} / {row['method']}: `{row['command']}`\n" for row in rows)
    report_file = RESULTS / "tokenizers.md"
    notes = report_file.read_text().partition(NOTES_MARKER)[2] if report_file.exists() else "\n"
    report_file.write_text(
        f"# Semantic-ID tokenizers on ml-100k, Taobao and Beauty\n\n"
        f"<!-- generated by bench/tokenizers.py report at commit {_commit()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} -->\n\n{header}{table}\nCommands:\n\n{commands}\n"
        f"{NOTES_MARKER}{notes}"
    )


class GRUDecoder(nn.Module):
    """A small random decoder for timing the beam: a GRU over the prefix's code embeddings, started from the
    user's state, then a linear head per level."""

    def __init__(self, codebook_sizes: list[int], num_users: int, dim: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embeddings = nn.ModuleList(nn.Embedding(size, dim) for size in codebook_sizes)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.heads = nn.ModuleList(nn.Linear(dim, size) for size in codebook_sizes)
        self.user_states = torch.randn(num_users, dim)

    @torch.no_grad()
    def forward(self, prefixes: Tensor, level: int) -> Tensor:  # [B, P, l] -> [B, P, K_l]
        batch, width = prefixes.shape[:2]
        state = self.user_states[:, None].expand(batch, width, -1).reshape(1, batch * width, -1).contiguous()
        if level > 0:
            embedded = torch.stack([self.embeddings[i](prefixes[..., i]) for i in range(level)], dim=2)
            _, state = self.gru(embedded.view(batch * width, level, -1), state)
        return self.heads[level](state[0]).view(batch, width, -1)


def speed(threads: int, users: int, beam: int) -> None:
    """Time fitting and decoding on Beauty's attributes and on 100k synthetic items; write the markdown table."""
    beauty = attribute_vectors(item_feature_table(dataset_dir(Path("dataset"), "beauty"), "beauty")).vectors
    synthetic = torch.randn(100_000, beauty.shape[1], generator=torch.Generator().manual_seed(0))
    lines = []
    with threadpool_limits(threads):
        torch.set_num_threads(threads)
        for name, vectors in (("Beauty attributes", beauty), ("synthetic Gaussian", synthetic)):
            ids = fit_semantic_ids(vectors, TokenizerConfig(method="rq-kmeans", levels=3, codebook_size=256))
            fit_s = ids.metrics["fit_seconds"]
            started = time.perf_counter()
            trie = SIDTrie(ids.codes, ids.codebook_sizes)
            trie_s = time.perf_counter() - started
            decoder = GRUDecoder(ids.codebook_sizes, users)
            started = time.perf_counter()
            constrained_beam_search(decoder, trie, users, beam)
            beam_s = time.perf_counter() - started
            lines.append(
                f"| {name} | {len(vectors):,} x {vectors.shape[1]} | {threads} | {fit_s:.1f} | {trie_s:.2f} | "
                f"{beam_s:.1f} | {ids.codebook_sizes} |"
            )
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tokenizers-speed-{threads}thread.md"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())  # the cores are shared: say how busy they were
    out.write_text(
        f"<!-- generated by `{' '.join(['python', *sys.argv])}` at commit {_commit()}; "
        f"{os.cpu_count()} cores, load average {load} when it finished -->\n\n"
        f"| items | vectors | threads | RQ-KMeans 3x256 fit (s) | trie build (s) | top-{beam} beam, {users:,} users "
        f"(s) | codes per level |\n|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    report_parser = commands.add_parser("report", help="tokenizer quality per dataset x source x method")
    report_parser.add_argument("--checkpoint", nargs="*", default=[], help="DATASET=saved/RUN.pth, one per dataset")
    speed_parser = commands.add_parser("speed", help="fit and beam wall times")
    speed_parser.add_argument("--threads", type=int, default=1)
    speed_parser.add_argument("--users", type=int, default=4096)
    speed_parser.add_argument("--beam", type=int, default=50)
    args = parser.parse_args(argv)
    if args.command == "report":
        report(dict(pair.split("=", 1) for pair in args.checkpoint))
    else:
        speed(args.threads, args.users, args.beam)
    return 0


if __name__ == "__main__":
    sys.exit(main())
