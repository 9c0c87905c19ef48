"""Taobao UserBehavior (Tianchi 649): ``user,item,category,behavior,timestamp`` CSV, no header."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_oneranker.data.converters.base import (
    Converted,
    Option,
    Progress,
    Table,
    input_error,
    numeric_key,
    read_delimited,
)

STAGES = {"pv": 1, "fav": 2, "cart": 3, "buy": 4}  # funnel order: view < favourite < add-to-cart < purchase
COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
INTER_TYPES = {
    "user_id": "token",
    "item_id": "token",
    "category_id": "token",
    "timestamp": "float",
    **{stage: "float" for stage in STAGES},
    "value": "float",
}
OPTIONS = (Option("file", "", "CSV file in --src (.csv or .csv.gz); default: the only UserBehavior*.csv[.gz]"),)


def convert(src: Path, options: Mapping[str, str], progress: Progress) -> Converted:
    """Convert a UserBehavior CSV (``.csv`` or ``.csv.gz``): ``user_id,item_id,category_id,behavior_type,timestamp``.

    ``behavior_type`` is one of ``pv``, ``fav``, ``cart``, ``buy``; ``timestamp`` is Unix seconds.

    Output ``.inter``: ``user_id item_id category_id timestamp pv fav cart buy value``, rows sorted by (user,
    timestamp), stably (ties keep file order; users in numeric order when all ids are numbers). Choices: the four
    label columns are a cumulative cascade in the funnel order pv < fav < cart < buy, so the label of stage k is 1
    when the event's stage is k or later (a ``buy`` row has pv = fav = cart = buy = 1, a ``pv`` row only pv = 1);
    ``value`` is the stage level 1..4 (pv = 1 ... buy = 4), a declared proxy because the data has no price. Default
    name ``taobao``.
    """
    path = _source_file(src, options["file"])
    progress.step(f"reading {path.name}")
    rows = read_delimited(path, ",", COLUMNS)
    stage = rows.one_of("behavior_type", STAGES)
    frame = rows.frame[["user_id", "item_id", "category_id"]].assign(timestamp=rows.numbers("timestamp"))
    for name, level in STAGES.items():
        frame[name] = (stage >= level).astype(np.float64)
    frame["value"] = stage.astype(np.float64)
    progress.step("sorting by user and time")
    order = np.lexsort((frame["timestamp"].to_numpy(), _rank(frame["user_id"])))  # lexsort is stable
    frame = frame.iloc[order].reset_index(drop=True)
    return Converted(default_name="taobao", inter=Table(frame, INTER_TYPES), labels=tuple(STAGES))


def _rank(ids: pd.Series) -> np.ndarray:
    """Integer codes of ``ids`` in sort order (numeric when every id is a number)."""
    key = numeric_key(ids)
    return pd.factorize(key, sort=True)[0]


def _source_file(src: Path, name: str) -> Path:
    """``src/name``, or the only ``UserBehavior*.csv[.gz]`` in ``src`` when no name is given."""
    if name:
        path = src / name
        if not path.is_file():
            raise input_error(path, "file not found")
        return path
    found = sorted([*src.glob("UserBehavior*.csv"), *src.glob("UserBehavior*.csv.gz")])
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise input_error(src, f"{what} UserBehavior*.csv[.gz] files found; pass --file to choose one")
    return found[0]
