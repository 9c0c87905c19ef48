"""RewardModel: labels of its loss, set-independent and chunk-independent scores, the reward's definition, the
AUC/ECE helpers and the bench script, on the ml-tiny slice (cascade click -> conversion, value = rating)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from sklearn.metrics import roc_auc_score

from recbole_oneranker.bench import reward as reward_bench
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.sequential_recommender import RewardModel
from recbole_oneranker.model.sequential_recommender.rewardmodel import (
    cascade_log_probs,
    history_levels,
    training_labels,
)
from recbole_oneranker.quick_start import run

REWARD_TINY = {
    "hidden_size": 16,
    "attention_dim": 8,
    "linear_hidden_dim": 8,
    "n_heads": 2,
    "decoder_heads": 2,
    "reward_negatives": 4,
}


@pytest.fixture
def build(tiny_config):
    """``build(**overrides) -> (model, train loader, test loader)`` on ml-tiny."""

    def make(**overrides):
        config = Config("RewardModel", "ml-tiny", config_dict={**tiny_config, **REWARD_TINY, **overrides})
        train, _, test = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        return RewardModel(config, train._dataset), train, test

    return make


def _hand_made_batch() -> Interaction:
    """Two users: items 5, 6, 7 then target 9 (click, no conversion, rating 3); item 8 then target 4 (both stages,
    rating 5)."""
    return Interaction(
        {
            "item_id_list": torch.tensor([[5, 6, 7], [8, 0, 0]]),
            "item_length": torch.tensor([3, 1]),
            "item_id": torch.tensor([9, 4]),
            "click_list": torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
            "conversion_list": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
            "rating_list": torch.tensor([[4.0, 2.0, 3.0], [3.0, 0.0, 0.0]]),
            "click": torch.tensor([1.0, 1.0]),
            "conversion": torch.tensor([0.0, 1.0]),
            "rating": torch.tensor([3.0, 5.0]),
            "timestamp_list": torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]]),
            "timestamp": torch.tensor([4.0, 2.0]),
        }
    )


def test_loss_labels_on_a_hand_made_batch(build):
    model, _, _ = build()
    batch = _hand_made_batch()
    # Every position draws items 6 and 9; 6 is the first row's next item after position 0, 9 after position 2.
    model.sample_negatives = lambda shape, device: torch.tensor([6, 9]).expand(*shape[:-1], 2)
    sets = model.training_candidates(batch, 3)
    assert sets.positions.tolist() == [[0, 1, 2], [0, 1, 2]]  # every position (reward_positions: 0)
    assert sets.candidates[..., 0].tolist() == [[6, 7, 9], [4, 0, 0]]  # the next item first
    # next item's stages: row 0: 6 (no click), 7 (click), 9 (click); row 1: 4 (click and conversion)
    assert sets.labels[..., 0, :].tolist() == [[[0, 0], [1, 0], [1, 0]], [[1, 1], [0, 0], [0, 0]]]
    assert not sets.labels[..., 1:, :].any()  # sampled items: 0 at every stage
    assert sets.weights.tolist() == [
        [[1, 0, 1], [1, 1, 1], [1, 1, 0]],  # a draw equal to the next item is left out
        [[1, 1, 1], [0, 0, 0], [0, 0, 0]],  # padding positions count for nothing
    ]
    assert sets.values.tolist() == [[2.0, 3.0, 3.0], [5.0, 0.0, 0.0]]

    # The loss is the weighted BCE of the chained probabilities on these labels, and the targets' log-value error.
    model.eval()
    model.length_bucket_size = 0
    stage_loss, value_loss = model.calculate_loss(batch)
    logits, log_value = model.score_candidates(model.encode_users(batch), sets.positions, sets.candidates)
    reached = torch.sigmoid(logits).cumprod(-1)
    bce = F.binary_cross_entropy(reached, sets.labels, reduction="none").mean(-1)
    torch.testing.assert_close(stage_loss, (bce * sets.weights).sum() / sets.weights.sum())
    real = sets.candidates[..., 0] > 0
    expected_value = (log_value[..., 0][real] - sets.values[real].log()).pow(2).mean()
    torch.testing.assert_close(value_loss, model.value_loss_weight * expected_value)


def test_training_labels_by_hand():
    candidates, labels, weights = training_labels(
        torch.tensor([[3, 0]]), torch.tensor([[[3, 5], [2, 2]]]), torch.tensor([[[1.0], [0.0]]])
    )
    assert candidates.tolist() == [[[3, 3, 5], [0, 2, 2]]]
    assert labels.squeeze(-1).tolist() == [[[1, 0, 0], [0, 0, 0]]]
    assert weights.tolist() == [[[1, 0, 1], [0, 0, 0]]]


def test_sampled_positions_include_the_last(build):
    model, train, _ = build(reward_positions=3)
    batch = next(iter(train))
    sets = model.training_candidates(batch, int(batch["item_length"].max()))
    assert sets.positions.shape == (len(batch), 3)
    assert torch.equal(sets.positions[:, 0], batch["item_length"] - 1)
    assert (sets.positions < batch["item_length"].unsqueeze(1)).all()


def test_a_candidate_reads_how_far_the_user_went_with_it_before(build):
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0][:4]
    seen = batch["item_id_list"][:, :1]  # each user's first history item
    unseen = torch.full_like(seen, model.n_items - 1)
    assert not (batch["item_id_list"] == model.n_items - 1).any()
    users = model.encode_users(batch)
    positions = (users.lengths - 1).unsqueeze(1)
    levels = history_levels(torch.cat([seen, unseen], 1).unsqueeze(1), positions, users.items, users.levels)
    assert levels[:, 0, 0].tolist() == users.levels[:, 0].tolist() and not levels[:, 0, 1].any()
    with torch.no_grad():
        before = model.reward(batch, torch.cat([seen, unseen], 1)).reward
        model.seen_embedding.weight.normal_()  # only the seen item's token changes
        model.seen_embedding.weight[0] = 0.0
        after = model.reward(batch, torch.cat([seen, unseen], 1)).reward
    assert (after[:, 0] != before[:, 0]).all()
    torch.testing.assert_close(after[:, 1], before[:, 1])
    assert build(candidate_history=False)[0].seen_embedding is None


def test_popularity_negatives_follow_the_training_interactions(build):
    model, train, _ = build(reward_negative_sampling="popularity")
    rows = train._dataset.inter_feat
    items = torch.cat([rows["item_id_list"].flatten(), rows["item_id"]])
    counts = torch.bincount(items[items > 0], minlength=model.n_items).float()
    assert model.item_counts[0] == 0 and (model.item_counts[1:] >= 1).all()
    torch.testing.assert_close(model.item_counts[counts > 0], counts[counts > 0])
    model.item_counts = torch.zeros_like(model.item_counts).index_fill_(0, torch.tensor([7]), 1.0)
    assert (model.sample_negatives((3, 4, 5), torch.device("cpu")) == 7).all()  # drawn by the counts alone
    uniform, _, _ = build()
    assert not hasattr(uniform, "item_counts")
    with pytest.raises(ConfigError, match="reward_negative_sampling"):
        build(reward_negative_sampling="hard")


def test_cascade_probabilities_chain_and_stay_finite():
    logits = torch.tensor([[2.0, -1.0, 0.5], [40.0, 40.0, -40.0], [-40.0, 3.0, 3.0]], requires_grad=True)
    log_reached, log_not_reached = cascade_log_probs(logits)
    reached = torch.sigmoid(logits.double()).cumprod(-1)
    torch.testing.assert_close(log_reached.exp().double(), reached)
    torch.testing.assert_close(log_not_reached.exp().double(), 1 - reached)
    assert (log_reached.diff(dim=-1) <= 0).all()  # a later stage is never likelier
    (log_reached.sum() + log_not_reached.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    # One stage: the ordinary binary cross-entropy with logits.
    one = torch.tensor([[-3.0], [0.2], [25.0]])
    labels = torch.tensor([[0.0], [1.0], [0.0]])
    log_p, log_not_p = cascade_log_probs(one)
    torch.testing.assert_close(
        -(labels * log_p + (1 - labels) * log_not_p), F.binary_cross_entropy_with_logits(one, labels, reduction="none")
    )


def test_gradients_reach_every_parameter(build):
    model, train, _ = build()
    sum(model.calculate_loss(next(iter(train)))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_a_candidates_reward_does_not_depend_on_the_others(build):
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0]
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(1, model.n_items, (len(batch), 6), generator=generator)
    second = torch.randint(1, model.n_items, (len(batch), 9), generator=generator)
    second[:, 4] = first[:, 2]  # the same item, among other items and at another place
    with torch.no_grad():
        a, b = model.reward(batch, first), model.reward(batch, second)
    torch.testing.assert_close(a.stage_probs[:, 2], b.stage_probs[:, 4])
    torch.testing.assert_close(a.reward[:, 2], b.reward[:, 4])
    assert not torch.allclose(a.reward[:, 0], a.reward[:, 1])  # items do differ


def test_chunked_catalogue_scores_equal_one_pass(build):
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        model.score_chunk_size = 10**9  # the whole catalogue at once
        whole = model.full_sort_predict(batch)
        model.score_chunk_size = 7 * len(batch)  # 7 items per chunk: the last chunk is partial
        chunked = model.full_sort_predict(batch)
        items = torch.randint(1, model.n_items, (len(batch), 11))
        estimate = model.reward(batch, items)
    assert whole.shape == (len(batch), model.n_items)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(estimate.reward.log(), whole.gather(1, items))  # the served score is the log reward


@pytest.mark.parametrize(
    "overrides, stages",
    [({}, 2), ({"value_field": None}, 2), ({"cascade_fields": [], "value_field": None}, 1)],
    ids=["cascade-and-value", "no-value", "implicit"],
)
def test_reward_shapes_and_definition(build, overrides, stages):
    model, _, test = build(**overrides)
    model.eval()
    batch = next(iter(test))[0]
    items = torch.randint(1, model.n_items, (len(batch), 5))
    with torch.no_grad():
        estimate = model.reward(batch, items)
    assert estimate.stage_probs.shape == (len(batch), 5, stages)
    assert ((estimate.stage_probs > 0) & (estimate.stage_probs < 1)).all()
    assert (estimate.stage_probs.diff(dim=-1) <= 0).all()
    last = estimate.stage_probs[..., -1]
    if model.value_field:
        assert estimate.value.shape == (len(batch), 5) and (estimate.value > 0).all()
        torch.testing.assert_close(estimate.reward, last * estimate.value)
    else:
        assert estimate.value is None
        torch.testing.assert_close(estimate.reward, last)
    assert len(model.stages) == stages


def test_predict_scores_the_rows_item_as_the_catalogue_does(build, assert_candidate_copies_encoded_once):
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        pointwise = model.predict(batch)
        whole = model.full_sort_predict(batch)
    torch.testing.assert_close(pointwise, whole.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1))
    assert_candidate_copies_encoded_once(model, batch)


def test_length_buckets_change_nothing(build, assert_length_buckets_change_nothing):
    model, _, test = build()
    assert_length_buckets_change_nothing(model, next(iter(test))[0])


def test_repeat_bias_is_refused(build):
    with pytest.raises(ConfigError, match="repeat_bias"):
        build(repeat_bias=True, history_negatives=True)


def test_auc_and_ece_by_hand():
    probs = np.array([0.05, 0.15, 0.12, 0.55, 0.95, 0.92])
    labels = np.array([0, 0, 1, 1, 1, 0])
    # Bins of width 0.1: [0.05] -> |0.05 - 0|; [0.15, 0.12] -> |0.135 - 0.5|; [0.55] -> |0.55 - 1|;
    # [0.95, 0.92] -> |0.935 - 0.5|.
    expected = (1 * 0.05 + 2 * 0.365 + 1 * 0.45 + 2 * 0.435) / 6
    assert reward_bench.expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert reward_bench.expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # 1 in last bin
    # AUC: of the 3 x 3 (positive, negative) pairs, the positive wins 0.12 > 0.05, 0.55 > {0.05, 0.15},
    # 0.95 > {0.05, 0.15, 0.92}: 6 of 9.
    assert reward_bench.auc_or_nan(labels, probs) == pytest.approx(6 / 9) == roc_auc_score(labels, probs)
    assert math.isnan(reward_bench.auc_or_nan(np.ones(3), probs[:3]))
    measures = reward_bench.stage_metrics(probs, labels, np.array([True, True, True, False, False, False]))
    assert measures["mean predicted"] == pytest.approx(probs.mean()) and measures["observed rate"] == 0.5
    assert measures["AUC on targets"] == pytest.approx(0.5)  # the first three: 0.12 above 0.05, below 0.15
    assert "popularity AUC" not in measures
    popularity = np.array([1.0, 4.0, 3.0, 2.0, 5.0, 0.0])  # positives 3, 2, 5 against negatives 1, 4, 0: 7 of 9
    with_popularity = reward_bench.stage_metrics(probs, labels, np.zeros(6, dtype=bool), {"popularity": popularity})
    assert with_popularity["popularity AUC"] == pytest.approx(7 / 9)
    assert math.isnan(with_popularity["AUC on targets"])  # no target at all
    # Targets 0.12 (a repeat) and 0.55 (new), each pooled with the negatives 0.05, 0.15, 0.92: 1 of 3, 2 of 3.
    probs, labels = np.array([0.05, 0.15, 0.12, 0.55, 0.92]), np.array([0, 0, 1, 1, 0])
    is_target, repeat = np.array([0, 0, 1, 1, 0], dtype=bool), np.array([0, 0, 1, 0, 0], dtype=bool)
    by_kind = reward_bench.stage_metrics(probs, labels, is_target, repeat=repeat)
    assert by_kind["AUC, repeat targets"] == pytest.approx(1 / 3)
    assert by_kind["AUC, new targets"] == pytest.approx(2 / 3)


def test_reward_model_end_to_end_on_ml_tiny(tiny_config):
    result = run("RewardModel", "ml-tiny", config_dict={**tiny_config, **REWARD_TINY, "epochs": 1})
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10", "gmv@10"}


def test_bench_script_on_tiny_data(tmp_path, tiny_data_path, run_device):
    out = tmp_path / "reward-ml-tiny.md"
    settings = ["load_col=None", "cascade_fields=['click', 'conversion']", "value_field=rating"]
    settings += [f"{key}={value}" for key, value in REWARD_TINY.items()]
    argv = ["--dataset", "ml-tiny", "--data-path", str(tiny_data_path), "--epochs", "1", "--negatives", "9",
            "--out", str(out), "--set", *settings, "state=ERROR", "show_progress=False"]  # fmt: skip
    assert reward_bench.main(argv) == 0
    report = out.read_text()
    assert "python bench/reward.py --dataset ml-tiny" in report and f"- device: {run_device}" in report
    assert "- seed: 2020" in report and "- commit: " in report
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| c")}
    assert set(rows) == {"click", "conversion"}
    auc = float(rows["click"].split(" | ")[1])
    assert 0.0 <= auc <= 1.0
    assert "RMSE of log value" in report
    assert "and 9 uniformly drawn items" in report and "| popularity AUC | history AUC |" in report
    assert "| AUC, repeat targets | AUC, new targets |" in report
    assert "early stopping on the validation mean of the stages' AUC (each valid target among 100 uniform" in report
    assert "at epoch 1 of 1; test, the catalogue ranked by reward: ndcg@10 " in report
    # The checkpoint it trained evaluates again without training, on the same draws: the same tables.
    checkpoint = tmp_path / "saved" / "reward-ml-tiny-seed2020.pth"
    again = tmp_path / "again.md"
    argv = ["--checkpoint", str(checkpoint), "--negatives", "9", "--out", str(again)]
    assert reward_bench.main(argv) == 0
    assert again.read_text().split("| stage |")[1] == report.split("| stage |")[1]


def test_bench_validation_score_is_the_mean_stage_auc(tiny_config):
    config = Config("RewardModel", "ml-tiny", config_dict={**tiny_config, **REWARD_TINY})
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = RewardModel(config, train._dataset)
    trainer = reward_bench.StageAUCTrainer(config, model, negatives=20, seed=3)
    score, result = trainer._valid_epoch(valid)
    report = reward_bench.reward_report(reward_bench.score_test_users(model, valid, 20, 3), model.stages)
    aucs = [measures["AUC"] for measures in report["stages"].values()]
    assert score == pytest.approx(np.mean(aucs)) and result["auc conversion"] == pytest.approx(aucs[1])
    assert trainer._valid_epoch(valid)[0] == score  # the same draws every epoch
