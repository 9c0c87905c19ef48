"""Amazon review 5-core sequences as released with S3-Rec (``Beauty.txt`` + ``Beauty_item2attributes.json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_oneranker.data.converters.base import (
    Converted,
    Option,
    Progress,
    Table,
    find_file,
    input_error,
    read_text,
)
from recbole_oneranker.errors import shorten

INTER_TYPES = {"user_id": "token", "item_id": "token", "timestamp": "float"}
ITEM_TYPES = {"item_id": "token", "attributes": "token_seq"}
OPTIONS = (Option("category", "Beauty", "file stem of the S3-Rec release, e.g. Beauty, Sports_and_Outdoors"),)


def convert(src: Path, options: Mapping[str, str], progress: Progress) -> Converted:
    """Convert an S3-Rec category: ``<category>.txt[.gz]`` and ``<category>_item2attributes.json[.gz]``.

    Source: one user per line, ``user_id item_1 item_2 ... item_n`` (space-separated, chronological, ids from 1);
    the JSON file is one object ``{"item_id": [attribute_id, ...]}``.

    Output: ``.inter`` ``user_id item_id timestamp``, users in file order and each user's items in sequence order;
    ``.item`` ``item_id attributes`` (space-separated attribute ids, JSON order). Choice: the data has no time, so
    ``timestamp`` is the 1-based position of the item in its user's sequence (1, 2, ..., n): it orders each user's
    history and nothing else (do not compare it across users). A user listed on two lines is an error. Default name:
    the category in lower case (``beauty``).
    """
    category = options["category"]
    sequences = find_file(src, f"{category}.txt.gz", f"{category}.txt")
    attributes = find_file(src, f"{category}_item2attributes.json.gz", f"{category}_item2attributes.json")
    progress.step(f"reading {sequences.name}")
    inter = read_sequences(sequences)
    progress.step(f"reading {attributes.name}")
    return Converted(
        default_name=category.lower(),
        inter=Table(inter, INTER_TYPES),
        item=Table(read_attributes(attributes), ITEM_TYPES),
    )


def read_sequences(path: Path) -> pd.DataFrame:
    """One row per (user, item) of a ``user item_1 ... item_n`` file, with the 1-based position as timestamp."""
    raw = read_text(path).split("\n")
    numbers = np.arange(1, len(raw) + 1)
    lines = pd.Series(raw, dtype=object)
    keep = (lines.str.strip() != "").to_numpy()
    tokens = lines[keep].str.split()
    numbers = numbers[keep]
    lengths = tokens.str.len().to_numpy()
    if (lengths < 2).any():
        line = int(numbers[np.flatnonzero(lengths < 2)[0]])
        raise input_error(path, "expected a user id followed by at least one item id", line)
    flat = np.concatenate(tokens.to_numpy())
    starts = np.cumsum(lengths) - lengths  # position of each line's user id in ``flat``
    users = pd.Series(flat[starts])
    repeated = users.duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise input_error(path, f"user {shorten(repr(users.iloc[row]))} already has a line", int(numbers[row]))
    is_item = np.ones(len(flat), dtype=bool)
    is_item[starts] = False
    counts = lengths - 1
    first = np.repeat(np.cumsum(counts) - counts, counts)  # index of each item's first sibling among the items
    return pd.DataFrame(
        {
            "user_id": np.repeat(flat[starts], counts),
            "item_id": flat[is_item],
            "timestamp": (np.arange(int(counts.sum())) - first + 1).astype(np.float64),
        }
    )


def read_attributes(path: Path) -> pd.DataFrame:
    """``{"item": [attr, ...]}`` as rows ``item_id attributes`` (attributes space-separated)."""
    try:
        mapping = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise input_error(path, f"invalid JSON: {exc.msg}", exc.lineno) from exc
    if not isinstance(mapping, dict):
        raise input_error(path, "expected one JSON object mapping item ids to attribute lists")
    bad = next((item for item, attrs in mapping.items() if not isinstance(attrs, list)), None)
    if bad is not None:
        raise input_error(path, f"item {shorten(repr(bad))}: expected a list of attribute ids")
    return pd.DataFrame(
        {"item_id": list(mapping), "attributes": [" ".join(map(str, attrs)) for attrs in mapping.values()]}
    )
