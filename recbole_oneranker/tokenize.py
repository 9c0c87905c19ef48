"""``python -m recbole_oneranker.tokenize``: quantise item vectors into a dataset's semantic-ID file.

Examples::

    python -m recbole_oneranker.tokenize --dataset beauty --method rq-kmeans --levels 3 --codebook-size 256 \\
        --source attributes
    python -m recbole_oneranker.tokenize --dataset ml-100k --method rq-kmeans-plus --codebook-size 32 \\
        --source checkpoint --checkpoint saved/HSTU-ml-100k-....pth
    python -m recbole_oneranker.tokenize --dataset beauty --source attributes file --vectors text.npz

Writes ``<data-path>/<dataset>/<dataset>.sid`` (see :mod:`recbole_oneranker.data.sid`) and the manifest
``<dataset>.sid.json`` beside it: method, sizes, sources, seed, the command, and the metrics of
:func:`recbole_oneranker.model.tokenizers.code_metrics`. The embedded ml-100k is read from inside RecBole when
``<data-path>/ml-100k/`` holds no copy. Mistakes in the command print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from recbole_oneranker.data.converters.base import Progress
from recbole_oneranker.data.item_vectors import (
    ItemVectors,
    attribute_vectors,
    checkpoint_item_table,
    concatenate,
    file_vectors,
    item_feature_table,
)
from recbole_oneranker.data.sid import RECBOLE_EXAMPLE_DIR, manifest_path, write_sid_file
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.tokenizers import METHODS, RQVAEConfig, TokenizerConfig, fit_semantic_ids

SOURCES = ("attributes", "checkpoint", "file")
USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_oneranker.tokenize",
        description="Quantise item vectors into semantic IDs: writes <data-path>/<dataset>/<dataset>.sid + .sid.json",
    )
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. ml-100k, beauty, taobao")
    parser.add_argument(
        "--data-path", type=Path, default=Path("dataset"), help="folder holding <dataset>/ (default: dataset)"
    )
    parser.add_argument("--method", default="rq-kmeans", choices=METHODS)
    parser.add_argument("--levels", type=int, default=3, help="quantisation levels L (default 3)")
    parser.add_argument("--codebook-size", type=int, default=256, help="codes per level K (default 256)")
    parser.add_argument("--source", nargs="+", default=["attributes"], choices=SOURCES, help="several: concatenated")
    parser.add_argument("--columns", nargs="+", help="attributes: item feature columns (default: all categorical)")
    parser.add_argument("--dim", type=int, default=64, help="attributes: SVD components (default 64)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint: a saved/<run_id>.pth of this package")
    parser.add_argument("--checkpoint-key", help="checkpoint: state_dict key (default: the one *item_embedding.weight)")
    parser.add_argument("--vectors", type=Path, help="file: .npz (ids + vectors), .npy (+ --ids) or .parquet")
    parser.add_argument("--ids", type=Path, help="file: item tokens of an .npy's rows, one per line")
    parser.add_argument("--epochs", type=int, default=50, help="rq-vae / rq-kmeans-plus training epochs (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="SID file (default: <data-path>/<dataset>/<dataset>.sid)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def dataset_dir(data_path: Path, dataset_name: str) -> Path:
    """The folder of the dataset's atomic files: ``<data_path>/<name>``, or the copy of ml-100k inside RecBole."""
    folder = data_path / dataset_name
    if (folder / f"{dataset_name}.inter").is_file():
        return folder
    if (RECBOLE_EXAMPLE_DIR / dataset_name / f"{dataset_name}.inter").is_file():
        return RECBOLE_EXAMPLE_DIR / dataset_name
    raise ConfigError(
        f"dataset '{dataset_name}' not found: no file {folder / (dataset_name + '.inter')} "
        f"(convert raw data with 'python -m recbole_oneranker.data.convert')"
    )


def checkpoint_vectors(path: Path, key: str | None, data_path: Path) -> ItemVectors:
    """A checkpoint's item table keyed by token: the dataset is rebuilt from the checkpoint's config to map its
    internal item ids back to tokens (RecBole numbers items in the order its filtering and remapping leave)."""
    from recbole_oneranker.checkpoints import load_data_and_model  # RecBole's training stack: only this source

    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    table = checkpoint_item_table(path, key)
    _, _, dataset, *_ = load_data_and_model(path, data_path=str(data_path))
    tokens = list(dataset.field2id_token[dataset.iid_field])
    if len(tokens) != len(table):
        raise ConfigError(f"{path}: item table has {len(table)} rows, its dataset {len(tokens)} items")
    return ItemVectors(tokens[1:], table[1:])  # row 0: the padding item


def source_vectors(args: argparse.Namespace, data_dir: Path, progress: Progress) -> tuple[ItemVectors, dict]:
    """The item vectors the command asks for, and a record of where they came from (for the manifest)."""
    parts, record = [], {}
    for source in args.source:
        progress.step(f"reading {source} vectors")
        if source == "attributes":
            parts.append(
                attribute_vectors(item_feature_table(data_dir, args.dataset), args.columns, args.dim, args.seed)
            )
            record[source] = {"columns": args.columns or "all categorical", "dim": parts[-1].vectors.shape[1]}
        elif source == "checkpoint":
            if args.checkpoint is None:
                raise ConfigError("--source checkpoint needs --checkpoint saved/<run_id>.pth")
            parts.append(checkpoint_vectors(args.checkpoint, args.checkpoint_key, args.data_path))
            record[source] = {"path": str(args.checkpoint), "key": args.checkpoint_key or "*item_embedding.weight"}
        else:
            if args.vectors is None:
                raise ConfigError("--source file needs --vectors FILE")
            parts.append(file_vectors(args.vectors, args.ids))
            record[source] = {"path": str(args.vectors), "ids": str(args.ids) if args.ids else None}
    vectors = parts[0] if len(parts) == 1 else concatenate(parts)
    return vectors, record


def tokenize(args: argparse.Namespace, argv: Sequence[str]) -> Path:
    """Fit the semantic IDs the parsed command asks for and write the SID file and its manifest; returns the file."""
    progress = Progress(not args.quiet)
    data_dir = dataset_dir(args.data_path, args.dataset)
    vectors, sources = source_vectors(args, data_dir, progress)
    if len(vectors.tokens) < args.codebook_size:
        raise ConfigError(f"--codebook-size {args.codebook_size} exceeds the {len(vectors.tokens)} items to quantise")
    try:
        config = TokenizerConfig(
            method=args.method,
            levels=args.levels,
            codebook_size=args.codebook_size,
            seed=args.seed,
            autoencoder=RQVAEConfig(epochs=args.epochs),
        )
    except ValueError as error:  # sizes out of range
        raise ConfigError(str(error)) from error
    progress.step(f"{args.method}: {len(vectors.tokens):,} items x {vectors.vectors.shape[1]} dims")
    ids = fit_semantic_ids(vectors.vectors, config, progress.step)
    out = args.out or args.data_path / args.dataset / f"{args.dataset}.sid"
    write_sid_file(out, vectors.tokens, ids.codes)
    manifest = {
        "dataset": args.dataset,
        "method": args.method,
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "codebook_sizes": ids.codebook_sizes,
        "sources": sources,
        "seed": args.seed,
        "num_items": len(vectors.tokens),
        "vector_dim": vectors.vectors.shape[1],
        "command": shlex.join(["python", "-m", "recbole_oneranker.tokenize", *argv]),
        "metrics": ids.metrics,
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    progress.step(f"wrote {out} (collision rate before the last code {ids.metrics['collision_rate']:.4f})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 a mistake in the command or its inputs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        tokenize(args, argv)
    except ConfigError as error:
        print(f"tokenize: error: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
