"""The ranker's cross features (what the user did with each candidate before): buckets against a slow reference,
causality, padding and unseen items, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_oneranker.model.layers import CandidateHistoryConfig, CandidateHistoryFeatures, candidate_history_buckets

MAX_COUNT, RECENCY = 3, 4


def reference_buckets(history, levels, positions, candidates) -> list[list[list[tuple[int, int, int]]]]:
    """``(count, recency, level)`` buckets, one loop per (row, position, candidate, entry), written from the
    definitions in the module docstring."""
    out = []
    for row, row_positions in enumerate(positions.tolist()):
        per_position = []
        for r, position in enumerate(row_positions):
            per_candidate = []
            for item in candidates[row, r].tolist():
                where = [j for j in range(position + 1) if item > 0 and history[row, j].item() == item]
                if not where:
                    per_candidate.append((0, 0, 0))
                    continue
                distance = position - max(where)
                recency = min(1 + int(math.floor(math.log2(distance + 1))), RECENCY)
                deepest = max(levels[row, j].item() for j in where)
                per_candidate.append((min(len(where), MAX_COUNT), recency, deepest))
            per_position.append(per_candidate)
        out.append(per_position)
    return out


@st.composite
def histories(draw):
    """Right-padded histories over a few items (so repeats are common), levels, positions and candidates."""
    rows, width, items = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 5))
    lengths = [draw(st.integers(1, width)) for _ in range(rows)]
    history = torch.zeros(rows, width, dtype=torch.long)
    levels = torch.zeros(rows, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        history[row, :length] = torch.tensor(draw(st.lists(st.integers(1, items), min_size=length, max_size=length)))
        levels[row, :length] = torch.tensor(draw(st.lists(st.integers(1, 4), min_size=length, max_size=length)))
    ranked, num = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    positions = torch.tensor([[draw(st.integers(0, length - 1)) for _ in range(ranked)] for length in lengths])
    candidates = torch.tensor(
        draw(st.lists(st.integers(0, items + 1), min_size=rows * ranked * num, max_size=rows * ranked * num))
    )
    return history, levels, positions, candidates.view(rows, ranked, num)


@settings(deadline=None, max_examples=150)
@given(histories())
def test_buckets_match_a_loop_over_the_history(case) -> None:
    history, levels, positions, candidates = case
    count, recency, level = candidate_history_buckets(history, levels, positions, candidates, MAX_COUNT, RECENCY)
    fast = torch.stack([count, recency, level], dim=-1).tolist()
    assert [[[tuple(c) for c in p] for p in row] for row in fast] == reference_buckets(*case)


@settings(deadline=None, max_examples=50)
@given(histories(), st.integers(1, 9), st.integers(1, 4))
def test_entries_after_the_position_change_nothing(case, item, level) -> None:
    history, levels, positions, candidates = case
    later = torch.arange(history.shape[1]) > positions.max(dim=1, keepdim=True).values  # no position sees them
    before = candidate_history_buckets(history, levels, positions, candidates, MAX_COUNT, RECENCY)
    after = candidate_history_buckets(
        history.masked_fill(later, item), levels.masked_fill(later, level), positions, candidates, MAX_COUNT, RECENCY
    )
    for left, right in zip(before, after, strict=True):
        assert torch.equal(left, right)


def test_unseen_and_padding_candidates_get_zero_features() -> None:
    torch.manual_seed(0)
    features = CandidateHistoryFeatures(CandidateHistoryConfig(hidden_size=8, num_levels=5))
    history, levels = torch.tensor([[3, 4, 0, 0]]), torch.tensor([[1, 2, 0, 0]])
    out = features(history, levels, torch.tensor([[1]]), torch.tensor([[[3, 9, 0]]]))  # 0: a padding candidate
    assert out[0, 0, 0].abs().sum() > 0
    assert torch.equal(out[0, 0, 1:], torch.zeros(2, 8))


def test_an_item_the_padding_holds_never_matches() -> None:
    # Position 3 lies in the padding: its entries hold id 0, which no real candidate has.
    count, _, _ = candidate_history_buckets(
        torch.tensor([[2, 0, 0, 0]]), torch.tensor([[1, 0, 0, 0]]), torch.tensor([[3]]), torch.tensor([[[2, 0]]]), 4, 6
    )
    assert count.tolist() == [[[1, 0]]]


def test_gradients_reach_every_table() -> None:
    torch.manual_seed(0)
    features = CandidateHistoryFeatures(CandidateHistoryConfig(hidden_size=8, num_levels=4))
    history, levels = torch.tensor([[1, 2, 1, 3]]), torch.tensor([[1, 3, 2, 1]])
    features(history, levels, torch.tensor([[3]]), torch.tensor([[[1, 2, 3, 5]]])).pow(2).sum().backward()
    for name, parameter in features.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("bad", [{"num_levels": 1}, {"max_count": 0}, {"recency_buckets": 0}])
def test_config_refuses_empty_tables(bad) -> None:
    with pytest.raises(ValueError):
        CandidateHistoryConfig(**{"hidden_size": 4, "num_levels": 3, **bad})
