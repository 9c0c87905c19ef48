"""Open Bandit Dataset (ZOZOTOWN): ``{policy}_{campaign}.csv[.gz]`` impressions + ``item_context_*.csv``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from recbole_oneranker.data.converters.base import Converted, Option, Progress, Table, find_file, read_delimited

USER_FEATURES = [f"user_feature_{k}" for k in range(4)]
INTER_TYPES = {
    "user_id": "token",
    "item_id": "token",
    "timestamp": "float",
    "position": "token",
    "impression": "float",
    "click": "float",
    "propensity_score": "float",
}
ITEM_TYPES = {
    "item_id": "token",
    "item_feature_0": "float",
    "item_feature_1": "token",
    "item_feature_2": "token",
    "item_feature_3": "token",
}
OPTIONS = (
    Option("policy", "random", "behaviour policy of the log", ("random", "bts")),
    Option("campaign", "all", "campaign of the log", ("all", "men", "women")),
)


def convert(src: Path, options: Mapping[str, str], progress: Progress) -> Converted:
    """Convert one OBD log: ``<policy>_<campaign>.csv[.gz]`` and ``item_context_<policy>_<campaign>.csv``.

    Source columns (with header; the first, unnamed, is a row index): ``timestamp`` (ISO date-time, UTC,
    microseconds), ``item_id``, ``position`` (slot 1/2/3), ``click``, ``propensity_score``, ``user_feature_0..3``
    (hashed categoricals), ``user-item_affinity_<k>``; item context: ``item_id``, ``item_feature_0`` (numeric),
    ``item_feature_1..3`` (hashed).

    Output ``.inter``: ``user_id item_id timestamp position impression click propensity_score`` in log order;
    ``.item``: ``item_id item_feature_0..3``. Choices: OBD has no user id, so ``user_id`` is a pseudo id, the four
    hashed user features joined with ``_`` (users with identical features share it); ``timestamp`` is Unix seconds
    with the microseconds kept as the fraction; every row is a shown item, so ``impression`` is 1; the
    ``user-item_affinity_*`` columns are not kept. Default name ``obd`` for the default ``random``/``all`` log,
    else ``obd-<policy>-<campaign>`` so that logs do not overwrite each other.
    """
    policy, campaign = options["policy"], options["campaign"]
    log = find_file(src, f"{policy}_{campaign}.csv.gz", f"{policy}_{campaign}.csv")
    progress.step(f"reading {log.name}")
    rows = read_delimited(log, ",")
    rows.require("timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES)
    features = rows.frame[USER_FEATURES]
    inter = pd.DataFrame(
        {
            "user_id": features.iloc[:, 0].str.cat(features.iloc[:, 1:], sep="_"),
            "item_id": rows.frame["item_id"],
            "timestamp": rows.unix_seconds("timestamp"),
            "position": rows.frame["position"],
            "impression": 1.0,
            "click": rows.numbers("click"),
            "propensity_score": rows.numbers("propensity_score"),
        }
    )
    context = find_file(src, f"item_context_{policy}_{campaign}.csv", f"item_context_{policy}_{campaign}.csv.gz")
    progress.step(f"reading {context.name}")
    items = read_delimited(context, ",")
    items.require(*ITEM_TYPES)
    item = items.frame[list(ITEM_TYPES)].assign(item_feature_0=items.numbers("item_feature_0"))
    name = "obd" if (policy, campaign) == ("random", "all") else f"obd-{policy}-{campaign}"
    return Converted(
        default_name=name,
        inter=Table(inter, INTER_TYPES),
        item=Table(item, ITEM_TYPES),
        labels=("impression", "click"),
    )
