"""The HSTU RecBole model: targets, length buckets, scoring paths, gradients, and real end-to-end runs."""

from __future__ import annotations

import pytest
import torch
from recbole.data import data_preparation
from recbole.data.interaction import Interaction

from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import seen_before
from recbole_oneranker.model.sequential_recommender import HSTU
from recbole_oneranker.quick_start import run

HSTU_TINY = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2, "num_negatives": 16}


@pytest.fixture
def hstu_setup(tiny_config):
    def build(**overrides):
        config = Config("HSTU", "ml-tiny", config_dict={**tiny_config, **HSTU_TINY, **overrides})
        train, _, test = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        return HSTU(config, train._dataset), train, test

    return build


def test_next_item_targets_by_hand(hstu_setup):
    model, _, _ = hstu_setup()
    batch = Interaction(
        {
            "item_id_list": torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]]),
            "item_length": torch.tensor([3, 1]),
            "item_id": torch.tensor([9, 4]),
        }
    )
    assert model.next_items(batch, 4).tolist() == [[6, 7, 9, 0], [4, 0, 0, 0]]


def test_request_time_sits_after_the_history(hstu_setup):
    model, _, _ = hstu_setup()
    batch = Interaction(
        {
            "timestamp_list": torch.tensor([[1.0, 2.0, 0.0], [5.0, 0.0, 0.0]]),
            "timestamp": torch.tensor([3.0, 6.0]),
            "item_length": torch.tensor([2, 1]),
        }
    )
    assert model.request_timestamps(batch, 3).tolist() == [[1, 2, 3, 0], [5, 6, 0, 0]]


def test_length_buckets_do_not_change_the_loss(hstu_setup):
    # Full softmax and no dropout: the loss is deterministic, so bucketing is the only thing that could change it.
    model, train, _ = hstu_setup(loss_type="full_softmax")
    model.eval()
    batch = next(iter(train))
    losses = []
    for bucket_size in (0, 3, 16):
        model.length_bucket_size = bucket_size
        losses.append(model.calculate_loss(batch))
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(losses[2], losses[0])


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: any device but the CPU, as a GPU is
def test_one_length_bucket_off_the_cpu_unless_asked_for(hstu_setup, device):
    model, _, _ = hstu_setup()
    lengths = torch.tensor([5, 1, 3, 2, 4], device=device)
    model.length_bucket_size = 2
    assert len(model.length_buckets(lengths)) == (3 if device == "cpu" else 1)
    model.length_buckets_on_gpu = True
    assert len(model.length_buckets(lengths)) == 3


def test_length_buckets_do_not_change_the_states_or_the_scores(hstu_setup, assert_length_buckets_change_nothing):
    model, _, test = hstu_setup(repeat_bias=True, loss_type="full_softmax")
    torch.nn.init.constant_(model.repeat_shift.shift, -0.2)
    assert_length_buckets_change_nothing(model, next(iter(test))[0])


def test_seen_before_by_hand(hstu_setup):
    model, _, _ = hstu_setup()
    seen = seen_before(torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert seen.tolist() == [[[5, 0, 0], [5, 6, 0], [5, 6, 7]], [[8, 0, 0], [8, 0, 0], [8, 0, 0]]]


def test_history_negatives_add_only_the_earlier_items_not_the_target(hstu_setup):
    model, _, _ = hstu_setup(history_negatives=True)
    users = torch.nn.functional.normalize(torch.randn(2, model.hidden_size), dim=-1)
    scorer = model.dot_scorer(users)
    targets = torch.tensor([3, 4])
    seen = torch.tensor([[5, 6, 0], [4, 0, 0]])  # row 1 has seen its own target before: a repeat, never a negative

    def loss(seen_items):
        torch.manual_seed(0)  # the same uniform negatives
        return model.softmax(scorer, targets, seen_items)

    without, with_seen = loss(None), loss(seen)
    assert with_seen[0] > without[0]  # items 5 and 6 joined row 0's denominator
    torch.testing.assert_close(with_seen[1], without[1])  # the target and padding were masked out
    model.softmax.config.history_negatives = False
    torch.testing.assert_close(loss(seen), without)  # the switch is off: seen is ignored


def test_history_negatives_raise_the_training_loss(hstu_setup):
    model, train, _ = hstu_setup(history_negatives=True)
    model.eval()  # no dropout: only the negatives differ
    batch = next(iter(train))
    torch.manual_seed(0)
    with_seen = model.calculate_loss(batch)
    model.softmax.config.history_negatives = False
    torch.manual_seed(0)
    assert with_seen > model.calculate_loss(batch)


@pytest.mark.parametrize("loss_type", ["sampled_softmax", "full_softmax"])
def test_repeat_bias_is_learned_and_shifts_exactly_the_seen_items(hstu_setup, loss_type):
    model, train, test = hstu_setup(repeat_bias=True, history_negatives=True, loss_type=loss_type)
    model.calculate_loss(next(iter(train))).backward()
    assert model.repeat_shift.shift.grad.abs() > 0  # seen items among the candidates teach it
    batch = next(iter(test))[0]
    model.eval()
    with torch.no_grad():
        model.repeat_shift.shift.fill_(0.0)
        plain = model.full_sort_predict(batch)
        model.repeat_shift.shift.fill_(-0.5)
        shifted = model.full_sort_predict(batch)
    seen = torch.zeros_like(plain, dtype=torch.bool).scatter_(1, batch["item_id_list"], True)
    seen[:, 0] = False
    torch.testing.assert_close(shifted[seen], plain[seen] - 0.5)
    torch.testing.assert_close(shifted[~seen], plain[~seen])


def test_repeat_shift_by_hand_counts_a_repeated_item_once(hstu_setup):
    model, _, _ = hstu_setup(repeat_bias=True, loss_type="full_softmax")
    torch.nn.init.constant_(model.repeat_shift.shift, -1.0)
    seen = torch.tensor([[3, 3, 0], [5, 1, 0]])  # row 0 saw item 3 twice; 0 is padding
    scores = torch.zeros(2, 2, 6, requires_grad=True)  # [P, tasks, n_items]: the tasks share the shift
    shifted = model.shift_seen(scores, seen)
    expected = torch.zeros(2, 6)
    expected[0, 3] = expected[1, 5] = expected[1, 1] = -1.0
    torch.testing.assert_close(shifted, expected.unsqueeze(1).expand(2, 2, 6))
    shifted.sum().backward()
    assert model.repeat_shift.shift.grad.item() == 6.0  # 3 distinct (row, item) pairs x 2 tasks, the repeat not twice
    torch.testing.assert_close(scores.grad, torch.ones_like(scores))


def test_repeat_bias_with_sampled_softmax_needs_history_negatives(hstu_setup):
    with pytest.raises(ConfigError, match="history_negatives"):
        hstu_setup(repeat_bias=True)


@pytest.mark.parametrize("overrides", [{}, {"repeat_bias": True, "history_negatives": True}])
def test_full_sort_agrees_with_predict(hstu_setup, overrides):
    model, _, test = hstu_setup(**overrides)
    if model.repeat_shift is not None:
        torch.nn.init.constant_(model.repeat_shift.shift, -0.3)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        pointwise = model.predict(batch)
    assert full.shape == (len(batch), model.n_items)
    torch.testing.assert_close(full[torch.arange(len(batch)), batch["item_id"]], pointwise)


def test_sampled_evaluation_encodes_each_history_once(hstu_setup, assert_candidate_copies_encoded_once):
    model, _, test = hstu_setup(repeat_bias=True, history_negatives=True)
    torch.nn.init.constant_(model.repeat_shift.shift, -0.3)
    assert_candidate_copies_encoded_once(model, next(iter(test))[0])


def test_whole_catalogue_scoring_matches_gathered_samples(hstu_setup, assert_scoring_paths_agree):
    # The fast path (score every item, gather the samples) against the reference path (gather, then score).
    model, train, _ = hstu_setup()
    assert_scoring_paths_agree(model, next(iter(train)))


@pytest.mark.parametrize("relative_bias", ["time_and_position", "position"])
def test_gradients_reach_every_parameter(hstu_setup, relative_bias):
    model, train, _ = hstu_setup(relative_bias=relative_bias)
    model.calculate_loss(next(iter(train))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("loss_type", ["sampled_softmax", "full_softmax"])
def test_hstu_end_to_end(tiny_config, loss_type):
    result = run("HSTU", "ml-tiny", config_dict={**tiny_config, **HSTU_TINY, "epochs": 2, "loss_type": loss_type})
    assert "whole-sequence training" in result["protocol"]
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10", "gmv@10"}
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    ranks = result["test_ranks"]  # per-user ranks reproduce the aggregate metric
    assert abs((ranks[(ranks > 0) & (ranks <= 10)] > 0).sum() / len(ranks) - result["test_result"]["hit@10"]) < 1e-4
