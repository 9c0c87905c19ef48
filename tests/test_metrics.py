"""GMV@K against hand-computed values, its registration with RecBole's evaluator, and the per-user ranks the
collector keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.register import metric_types, metrics_dict

from recbole_oneranker.evaluator import GMV
from recbole_oneranker.evaluator.collector import score_row_users
from recbole_oneranker.evaluator.ranking import mask_seen_items, rank_metrics, target_ranks

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


def test_target_ranks_count_ties_for_the_target_and_put_masked_targets_last():
    scores = torch.tensor([[-float("inf"), 0.5, 0.2, 0.9], [-float("inf"), -float("inf"), 0.3, 0.1],
                           [-float("inf"), 0.4, 0.4, 0.1]])  # fmt: skip
    is_target = torch.tensor([[False, False, True, False], [False, True, False, False], [False, False, True, False]])
    assert target_ranks(scores, is_target).tolist() == [3, 3, 1]  # row 2: a tie with item 1 leaves the target first


def test_rank_metrics_by_hand():
    metrics = rank_metrics(np.array([1, 3, 0, 11]), k=10)  # 0: not ranked; 11: beyond the cut-off
    np.testing.assert_allclose(metrics["hit"], [1, 1, 0, 0])
    np.testing.assert_allclose(metrics["ndcg"], [1, 0.5, 0, 0])  # 1 / log2(3 + 1)
    np.testing.assert_allclose(metrics["mrr"], [1, 1 / 3, 0, 0])
    assert rank_metrics(np.array([11]))["hit"].tolist() == [1.0]  # no cut-off


def test_ranks_agree_with_recboles_evaluator(monkeypatch):
    monkeypatch.setattr(np, "float", float, raising=False)  # RecBole's NDCG reads it; its Config restores it so
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.6, 0.4], [0.3, 0.2, 0.1, 0.9]])
    targets = torch.tensor([2, 3, 0])
    ranks = target_ranks(scores, torch.nn.functional.one_hot(targets, 4).bool())
    assert ranks.tolist() == [2, 3, 2]
    struct = _struct(ranks.tolist(), [1.0] * 3)  # RecBole's rec.topk rows of targets at those ranks
    recbole = Evaluator({"topk": [1, 2, 3], "metric_decimal_place": 6, "metrics": ["NDCG", "MRR"]}).evaluate(struct)
    for k in (1, 2, 3):
        mine = rank_metrics(ranks.numpy(), k)
        assert recbole[f"ndcg@{k}"] == pytest.approx(mine["ndcg"].mean(), abs=1e-6)
        assert recbole[f"mrr@{k}"] == pytest.approx(mine["mrr"].mean(), abs=1e-6)


def test_seen_items_are_masked_but_not_the_padding_item():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    masked = mask_seen_items(scores.clone(), torch.tensor([[3, 1, 0]]))  # 0-padded history
    assert masked.tolist() == [[0.0, -float("inf"), 2.0, -float("inf")]]


def test_score_row_users_of_a_full_ranking_batch_are_its_interactions():
    users = torch.tensor([4, 4, 9])  # one interaction per score row, whatever the ids
    assert score_row_users(users, 3).tolist() == [4, 4, 9]


@settings(deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=8, unique=True), st.integers(2, 6))
def test_score_row_users_of_a_candidate_batch_are_its_blocks(users, candidates):
    # RecBole's negative-sampled evaluation: each user's target and its negatives, one block per user
    interactions = torch.tensor(users).repeat_interleave(candidates)
    assert score_row_users(interactions, len(users)).tolist() == users


def test_score_row_users_refuse_a_batch_of_neither_layout():
    with pytest.raises(ValueError, match="5 evaluated interactions of 2 users for 3 score rows"):
        score_row_users(torch.tensor([1, 1, 1, 2, 2]), 3)
