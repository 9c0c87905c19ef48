"""Taobao display advertising (Tianchi 56) as FuxiCTR's joined CSVs (click log + ad feature + user profile)."""

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
    read_delimited,
)

DEFAULT_FILES = "fuxictr_tiny_csv_train_sample.csv,fuxictr_tiny_csv_test_sample.csv"
OPTIONS = (Option("files", DEFAULT_FILES, "comma-separated CSV files in --src, concatenated in this order"),)
INTER_TYPES = {
    "user_id": "token",
    "item_id": "token",
    "timestamp": "float",
    "impression": "float",
    "click": "float",
    "value": "float",
    "pid": "token",
}
ITEM_TYPES = {
    "item_id": "token",
    "cate_id": "token",
    "campaign_id": "token",
    "customer": "token",
    "brand": "token",
    "price": "float",
}
USER_FEATURES = [
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
]
USER_TYPES = {"user_id": "token", **{name: "token" for name in USER_FEATURES}}


def convert(src: Path, options: Mapping[str, str], progress: Progress) -> Converted:
    """Convert FuxiCTR's Taobao-ad CSVs (default: the tiny train and test samples, concatenated in that order).

    Source columns (with header): ``clk, time_stamp, userid, adgroup_id, pid, cate_id, campaign_id, customer,
    brand, price``, the user profile ``cms_segid ... new_user_class_level`` and ``click_sequence``.

    Output ``.inter``: ``user_id`` (userid) ``item_id`` (adgroup_id, the ad) ``timestamp impression click value
    pid`` in file order; ``.item``: ``item_id cate_id campaign_id customer brand price``; ``.user``: ``user_id`` and
    the eight profile fields. Choices: ``timestamp`` is Unix seconds of ``time_stamp`` (FuxiCTR writes a date-time;
    read as UTC, only the order matters); every row is a shown ad, so ``impression`` is 1; ``value`` is the ad's
    ``price``; ad and user attributes come from each id's first row (FuxiCTR's sample repeats some ids with other
    attributes); missing profile cells stay empty tokens; ``click_sequence`` is not kept; rows repeated across files
    are kept. Default name ``taobao-ad``.
    """
    names = [name.strip() for name in options["files"].split(",") if name.strip()]
    if not names:
        raise ConversionError("--files names no file")
    parts = []
    for name in names:
        progress.step(f"reading {name}")
        parts.append(_read_part(read_delimited(src / name, ",")))
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.rename(columns={"userid": "user_id", "adgroup_id": "item_id"})
    inter = frame[list(INTER_TYPES)]
    item = frame.drop_duplicates("item_id")[list(ITEM_TYPES)]
    user = frame.drop_duplicates("user_id")[list(USER_TYPES)]
    return Converted(
        default_name="taobao-ad",
        inter=Table(inter.reset_index(drop=True), INTER_TYPES),
        user=Table(user.reset_index(drop=True), USER_TYPES),
        item=Table(item.reset_index(drop=True), ITEM_TYPES),
        labels=("impression", "click"),
    )


def _read_part(rows: Rows) -> pd.DataFrame:
    """One file with validated numbers: ``clk`` as ``click``, ``price`` also as ``value``, parsed timestamps."""
    ad_columns = ["cate_id", "campaign_id", "customer", "brand"]
    rows.require("clk", "time_stamp", "userid", "adgroup_id", "pid", "price", *ad_columns, *USER_FEATURES)
    price = rows.numbers("price")
    return rows.frame[["userid", "adgroup_id", "pid", *ad_columns, *USER_FEATURES]].assign(
        timestamp=rows.unix_seconds("time_stamp"),
        impression=np.ones(len(rows)),
        click=rows.numbers("clk"),
        value=price,
        price=price,
    )
