"""GMV@K against hand-computed values, and its registration with RecBole's evaluator."""

from __future__ import annotations

import pytest
import torch
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.register import metric_types, metrics_dict

from recbole_oneranker.evaluator import GMV, target_ranks

METRIC_CONFIG = {"topk": [1, 2, 3], "metric_decimal_place": 4, "metrics": ["Hit", "GMV"]}


def _struct(hit_ranks: list[int | None], values: list[float], max_k: int = 3) -> DataStruct:
    """rec.topk rows for users whose single target sits at the given 1-based rank (None: not in the top max_k)."""
    rows = torch.zeros(len(hit_ranks), max_k + 1, dtype=torch.int)
    for user, rank in enumerate(hit_ranks):
        if rank is not None:
            rows[user, rank - 1] = 1
    rows[:, -1] = 1  # one positive per user
    struct = DataStruct()
    struct.set("rec.topk", rows)
    struct.set("data.value", torch.tensor(values))
    return struct


def test_gmv_hand_computed():
    # Targets at ranks 1, 3 and outside the list, worth 10, 20 and 30: 60 in all.
    result = GMV(METRIC_CONFIG).calculate_metric(_struct([1, 3, None], [10.0, 20.0, 30.0]))
    assert result == {"gmv@1": pytest.approx(10 / 60, abs=1e-4), "gmv@2": pytest.approx(10 / 60, abs=1e-4),
                      "gmv@3": pytest.approx(30 / 60, abs=1e-4)}  # fmt: skip


def test_gmv_equals_hit_when_values_are_equal():
    struct = _struct([2, None, 1, 3], [5.0] * 4)
    result = Evaluator(METRIC_CONFIG).evaluate(struct)
    for k in (1, 2, 3):
        assert result[f"gmv@{k}"] == pytest.approx(result[f"hit@{k}"])


def test_gmv_favours_valuable_hits():
    cheap_hit = GMV(METRIC_CONFIG).calculate_metric(_struct([1, None], [1.0, 9.0]))
    valuable_hit = GMV(METRIC_CONFIG).calculate_metric(_struct([None, 1], [1.0, 9.0]))
    assert cheap_hit["gmv@1"] == pytest.approx(0.1) and valuable_hit["gmv@1"] == pytest.approx(0.9)


def test_gmv_is_registered_as_ranking_metric():
    assert metrics_dict["gmv"] is GMV
    assert metric_types["gmv"] == metric_types["hit"]


def test_target_ranks_by_hand():
    assert target_ranks(_struct([1, 3, None, 2], [1.0] * 4)).tolist() == [1, 3, 0, 2]
