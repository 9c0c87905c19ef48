"""The SID file: each item token's semantic-ID codes, and its alignment to a RecBole dataset's item ids.

``dataset/<name>/<name>.sid`` is tab-separated with a header, one item per row::

    item_id	code_1	code_2	code_3	code_4
    4	17	203	5	0

The last code tells apart items that share the codes before it (TIGER), so every row's codes are unique. A JSON
manifest beside it, ``<name>.sid.json``, records how it was made (``python -m recbole_oneranker.tokenize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import recbole
import torch
from torch import Tensor

from recbole_oneranker.errors import ConfigError

ITEM_COLUMN = "item_id"
PAD_CODE = -1
"""The codes of RecBole's padding item 0 in :func:`load_dataset_sids`: no real code, so a lookup fails loudly."""
RECBOLE_EXAMPLE_DIR = Path(recbole.__file__).resolve().parent / "dataset_example"


class SIDFileError(ConfigError):
    """A SID file that is missing, malformed, or does not cover a dataset's items."""


def manifest_path(sid_file: Path) -> Path:
    """``<name>.sid.json`` beside ``<name>.sid``."""
    return sid_file.with_name(sid_file.name + ".json")


def default_sid_file(data_path: str | Path, dataset_name: str) -> Path:
    """Where a dataset's SID file lives: beside its atomic files (``data_path`` is RecBole's resolved folder of the
    dataset). RecBole always reads the embedded ml-100k from inside its wheel, so that one's file is under
    ``./dataset/ml-100k/``, where ``python -m recbole_oneranker.tokenize --dataset ml-100k`` writes it."""
    folder = Path(data_path)
    if folder.resolve().is_relative_to(RECBOLE_EXAMPLE_DIR):
        folder = Path("dataset") / dataset_name
    return folder / f"{dataset_name}.sid"


def tokenize_command(dataset_name: str, sid_file: Path, default_file: Path) -> str:
    """The command that writes ``sid_file`` for ``dataset_name`` (from the item side features); ``default_file`` is
    the dataset's :func:`default_sid_file`, whose folder's parent is the tokenizer's ``--data-path``."""
    command = (
        f"python -m recbole_oneranker.tokenize --dataset {dataset_name} --data-path {default_file.parent.parent} "
        f"--method rq-kmeans --source attributes"
    )
    return command if sid_file == default_file else f"{command} --out {sid_file}"


def write_sid_file(path: Path, tokens: Sequence[str], codes: Tensor) -> None:
    """Write ``tokens`` (``N`` item tokens) and their ``(N, L)`` int codes as a SID file."""
    header = "\t".join([ITEM_COLUMN] + [f"code_{level + 1}" for level in range(codes.shape[1])])
    rows = ("\t".join([token, *map(str, row)]) for token, row in zip(tokens, codes.tolist(), strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def read_sid_file(path: Path) -> tuple[list[str], Tensor]:
    """Parse a SID file.

    Returns:
        ``N`` item tokens and their ``(N, L)`` int64 codes.

    Raises:
        SIDFileError: one line naming the file and line: a wrong header, a row with another number of codes, a
        code that is not a non-negative integer, a token twice, or two items with the same codes.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if len(header) < 2 or header[0] != ITEM_COLUMN:
        raise SIDFileError(f"{path}:1: the header must be '{ITEM_COLUMN}' then one column per code level")
    tokens, rows = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header) or not all(field.isdigit() for field in fields[1:]):
            raise SIDFileError(f"{path}:{number}: expected an item token and {len(header) - 1} non-negative codes")
        tokens.append(fields[0])
        rows.append([int(field) for field in fields[1:]])
    codes = torch.tensor(rows, dtype=torch.int64).view(len(rows), len(header) - 1)
    if len(set(tokens)) != len(tokens):
        raise SIDFileError(f"{path}: an item token appears on more than one row")
    if len(torch.unique(codes, dim=0)) != len(codes):
        raise SIDFileError(f"{path}: two items share all their codes (the last code must tell them apart)")
    return tokens, codes


def load_dataset_sids(dataset, sid_file: str | Path | None = None) -> Tensor:
    """The codes of every item of a RecBole ``dataset``, in its internal item-id order.

    Args:
        dataset: a RecBole dataset (reads ``field2id_token[iid_field]``, ``dataset_name`` and
            ``config["data_path"]``).
        sid_file: the SID file; :func:`default_sid_file` when None.

    Returns:
        ``(n_items, L)`` int64: row ``i`` holds the codes of internal item id ``i``; row 0, RecBole's padding item,
        holds :data:`PAD_CODE`.

    Raises:
        SIDFileError: the file is missing (the message names the command that makes it), malformed, or lacks
        some of the dataset's items.
    """
    default_file = default_sid_file(dataset.config["data_path"], dataset.dataset_name)
    path = Path(sid_file) if sid_file is not None else default_file
    command = tokenize_command(dataset.dataset_name, path, default_file)
    if not path.is_file():
        raise SIDFileError(
            f"no semantic IDs for dataset '{dataset.dataset_name}': {path} does not exist; make it with: {command}"
        )
    tokens, codes = read_sid_file(path)
    row_of = {token: row for row, token in enumerate(tokens)}
    dataset_tokens = list(dataset.field2id_token[dataset.iid_field][1:])  # [0] is the padding token
    missing = [token for token in dataset_tokens if token not in row_of]
    if missing:
        raise SIDFileError(
            f"{path} has no codes for {len(missing):,} of the dataset's {len(dataset_tokens):,} items "
            f"(e.g. {', '.join(missing[:3])}); make it again with: {command}"
        )
    table = torch.full((len(dataset_tokens) + 1, codes.shape[1]), PAD_CODE, dtype=torch.int64)
    table[1:] = codes[torch.tensor([row_of[token] for token in dataset_tokens], dtype=torch.int64)]
    return table
