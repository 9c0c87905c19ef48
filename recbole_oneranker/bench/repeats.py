"""Benchmark rows' test metrics split by whether the target repeats an item of the history the model read.

On the Taobao funnel most test targets are items the user has viewed before; a model that can point back at a
history item scores there, one that cannot scores little anywhere (new items are rarely hit by any model). This
split, from the rank files the benchmark rows already wrote, says which part of a row's NDCG@K comes from repeats.
A repeat is further split into one of the last history item (under leave-one-out, the test target repeating the
validation target) and one of an earlier item: the two ask different things of a model. Under leave-one-out the
last history item of a test row may also be an item no training row holds (first met as the validation target),
which an id model has learned nothing of; the report says how often.
Used by ``python bench/diagnose.py repeats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from recbole_oneranker.bench.common import DEFAULT_DATA_PATH, REPO, configured_rows, mean_ci, row_settings
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset, data_preparation, items_held
from recbole_oneranker.evaluator.ranking import rank_metrics

__all__ = [
    "EARLIER",
    "LAST",
    "NEW",
    "TARGET_KINDS",
    "RepeatShares",
    "HeldOutTargets",
    "repeat_shares",
    "repeat_targets",
    "repeats_report",
    "split_by_repeats",
]

LAST, EARLIER, NEW = "last", "earlier", "new"
TARGET_KINDS = (LAST, EARLIER, NEW)


class HeldOutTargets(NamedTuple):
    """What each test user's target is to the history of the test row, and whose history ends with an unknown item.

    Attributes:
        kinds: test user id -> ``LAST``, ``EARLIER`` or ``NEW`` (:func:`repeat_targets`).
        unknown_last: the test users whose history's last item no training row holds.
    """

    kinds: dict[int, str]
    unknown_last: frozenset[int]


def repeat_targets(model: str, dataset: str, settings: dict[str, Any]) -> HeldOutTargets:
    """Test user id -> what the user's test target is to the history items of the test row (the model's input
    window: the last ``MAX_ITEM_LIST_LENGTH`` interactions before the target): the last of them (``LAST``), another
    of them (``EARLIER``), or none (``NEW``); and the users whose last history item no training row holds."""
    config = Config(model, dataset, None, {**settings, "show_progress": False, "state": "ERROR"})
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    known = items_held(train_data._dataset)
    repeats: dict[int, str] = {}
    unknown_last: set[int] = set()
    for batch in test_data:
        interaction = batch[0]  # full-ranking loaders give (interaction, history index, positive u, positive i)
        items = config["ITEM_ID_FIELD"]
        history, target = interaction[items + config["LIST_SUFFIX"]], interaction[items]
        last = history.gather(1, (interaction[config["ITEM_LIST_LENGTH_FIELD"]] - 1).unsqueeze(1)).squeeze(1)
        in_history = (history == target.unsqueeze(1)).any(dim=1)
        kinds = [LAST if at_last else EARLIER if seen else NEW for at_last, seen in zip(
            (last == target).tolist(), in_history.tolist(), strict=True)]  # fmt: skip
        users = interaction[config["USER_ID_FIELD"]]
        repeats.update(zip(users.tolist(), kinds, strict=True))
        unknown_last.update(users[~known[last]].tolist())
    return HeldOutTargets(repeats, frozenset(unknown_last))


def split_by_repeats(rows: list[dict[str, Any]], repeats: dict[int, str], k: int) -> dict[str, tuple[float, float]]:
    """Mean and t-interval over the rows' seeds of HR@k and NDCG@k (``<metric>_<part>``) on all test users
    (``all``), on those whose target repeats a history item (``repeat``), split into the last history item
    (``last``) and an earlier one (``earlier``), and on the others (``new``)."""
    per_seed: dict[str, list[float]] = {}
    for row in rows:
        ranks, users = np.load(REPO / row["ranks_file"]), np.load(REPO / row["users_file"])
        kinds = np.array([repeats[int(user)] for user in users])
        parts = {"all": np.ones(len(kinds), dtype=bool), "repeat": kinds != NEW}
        parts.update({kind: kinds == kind for kind in TARGET_KINDS})
        metrics = rank_metrics(ranks, k)
        for name in ("hit", "ndcg"):
            for part, chosen in parts.items():  # an empty part (no such user) is nan
                values = metrics[name][chosen]
                per_seed.setdefault(f"{name}_{part}", []).append(float(values.mean()) if len(values) else float("nan"))
    return {name: mean_ci(values) for name, values in per_seed.items()}


class RepeatShares(NamedTuple):
    """Shares of the test users: targets that repeat a history item, histories ending with an item no training
    row holds, and the same among the users whose target is that last item."""

    repeat: float
    unknown_last: float
    unknown_last_of_last_targets: float


def repeats_report(
    dataset: str, bench_config_path: Path | None, results: Path, data_path: str | Path | None, k: int
) -> tuple[RepeatShares, list[tuple[str, int, dict[str, tuple[float, float]]]]]:
    """The shares of :class:`RepeatShares`, and per current row with rank files: ``(label, seeds, split)``."""
    name = bench_config_path.stem if bench_config_path else dataset
    bench_config, dataset, extra, rows = configured_rows(
        results, name, bench_config_path, data_path or DEFAULT_DATA_PATH
    )
    rows = [row for row in rows if row.get("users_file")]
    windows: dict[Any, HeldOutTargets] = {}  # the history a test row holds depends on its window alone
    report = []
    for label in dict.fromkeys(row["label"] for row in rows):
        model, settings = row_settings(bench_config, label, extra)
        window = settings.get("MAX_ITEM_LIST_LENGTH")
        if window not in windows:
            print(f"repeats: test histories of length {window or 'default'} ...", flush=True)
            windows[window] = repeat_targets(model, dataset, settings)
        own = [row for row in rows if row["label"] == label]
        report.append((label, len(own), split_by_repeats(own, windows[window].kinds, k)))
    return repeat_shares(next(iter(windows.values()), HeldOutTargets({}, frozenset()))), report


def repeat_shares(targets: HeldOutTargets) -> RepeatShares:
    """The :class:`RepeatShares` of ``targets``; nan where no user is counted."""
    kinds = targets.kinds
    last_targets = [user for user, kind in kinds.items() if kind == LAST]
    return RepeatShares(
        repeat=_share([kind != NEW for kind in kinds.values()]),
        unknown_last=_share([user in targets.unknown_last for user in kinds]),
        unknown_last_of_last_targets=_share([user in targets.unknown_last for user in last_targets]),
    )


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")
