"""Ali-CCP (Alibaba click and conversion prediction) in torch-rechub's CSV layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_oneranker.data.converters.base import (
    ConversionError,
    Converted,
    Option,
    Progress,
    Rows,
    Table,
    input_error,
    read_delimited,
)

USER_FIELD, ITEM_FIELD = "101", "205"  # Ali-CCP field ids of the user id and the item id
FLOAT_COLUMNS = {"timestamp", "impression", "click", "conversion"}
DEFAULT_FILES = "ali_ccp_train_sample.csv,ali_ccp_val_sample.csv,ali_ccp_test_sample.csv"
OPTIONS = (Option("files", DEFAULT_FILES, "comma-separated CSV files in --src, concatenated in this order"),)


def convert(src: Path, options: Mapping[str, str], progress: Progress) -> Converted:
    """Convert torch-rechub's Ali-CCP CSVs (default: the train, val and test samples, concatenated in that order).

    Source columns (with header): ``click``, ``purchase``, categorical fields named by Ali-CCP field id (``101``,
    ``121``, ..., ``205``, ..., ``109_14``, ...; label-encoded integers) and dense fields ``D109_14`` ... ``D853``.

    Output ``.inter``: ``user_id item_id timestamp impression click conversion``, then every other categorical field
    as token ``f<field id>`` (e.g. ``f121``) and every dense field as float under its own name, in source order.
    Choices: in Ali-CCP field 101 is the user id and field 205 the item id; the data has no time, so ``timestamp``
    is the row's 1-based ordinal over the concatenated files (train rows first); every row is an impression, so
    ``impression`` is 1; ``conversion`` is the ``purchase`` label. Default name ``ali-ccp``.
    """
    names = [name.strip() for name in options["files"].split(",") if name.strip()]
    if not names:
        raise ConversionError("--files names no file")
    parts, header = [], None
    for name in names:
        progress.step(f"reading {name}")
        rows = read_delimited(src / name, ",")
        if header is not None and list(rows.frame.columns) != header:
            raise input_error(rows.path, f"columns differ from those of {names[0]}", 1)
        header = list(rows.frame.columns)
        parts.append(_read_part(rows))
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(2, "timestamp", np.arange(1, len(frame) + 1, dtype=np.float64))
    types = {c: "float" if c in FLOAT_COLUMNS or c.startswith("D") else "token" for c in frame.columns}
    return Converted(default_name="ali-ccp", inter=Table(frame, types), labels=("impression", "click", "conversion"))


def _read_part(rows: Rows) -> pd.DataFrame:
    """One file as ``user_id item_id impression click conversion f<field>... D...`` (numbers validated)."""
    rows.require("click", "purchase", USER_FIELD, ITEM_FIELD)
    labels = {"click", "purchase", USER_FIELD, ITEM_FIELD}
    dense = [c for c in rows.frame.columns if c.startswith("D")]
    sparse = [c for c in rows.frame.columns if c not in labels and c not in dense]
    columns = {
        "user_id": rows.frame[USER_FIELD],
        "item_id": rows.frame[ITEM_FIELD],
        "impression": np.ones(len(rows)),
        "click": rows.numbers("click"),
        "conversion": rows.numbers("purchase"),
        **{f"f{c}": rows.frame[c] for c in sparse},
        **{c: rows.numbers(c) for c in dense},
    }
    return pd.DataFrame(columns)
