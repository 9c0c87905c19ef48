"""Tests of the policy-gradient pieces (GPR's HEPO, OneRec's ECPO): each against a slow reference written from the
papers' equations, property-based where the inputs are arbitrary (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_oneranker.model.layers import (
    clipped_entries,
    clipped_surrogate,
    code_popularity,
    early_clipped_entries,
    early_clipped_surrogate,
    generalized_advantages,
    group_advantages,
    hepo_advantages,
    process_rewards,
)

floats = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, width=32)
trajectories = st.integers(min_value=1, max_value=6).flatmap(
    lambda steps: st.tuples(*[st.lists(floats, min_size=steps, max_size=steps)] * 2)
)  # rewards and values of one length


def slow_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t, V_T = 0: summed term by term."""
    steps = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < steps else 0.0) - values[t] for t in range(steps)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(steps - t)) for t in range(steps)]


@settings(max_examples=60, deadline=None)
@given(trajectories, st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_generalized_advantages_equal_the_term_by_term_sum(trajectory, gamma, lam):
    rewards, values = trajectory
    advantages, returns = generalized_advantages(torch.tensor(rewards), torch.tensor(values), gamma, lam)
    expected = slow_gae(rewards, values, gamma, lam)
    assert advantages.tolist() == pytest.approx(expected, abs=1e-4)
    assert returns.tolist() == pytest.approx([a + v for a, v in zip(expected, values, strict=True)], abs=1e-4)


def test_generalized_advantages_run_along_the_last_dimension_only():
    rewards, values = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    advantages, _ = generalized_advantages(rewards, values, 0.9, 0.8)
    for b in range(3):
        for k in range(4):
            single, _ = generalized_advantages(rewards[b, k], values[b, k], 0.9, 0.8)
            assert torch.allclose(advantages[b, k], single)


def test_mismatched_rewards_and_values_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        generalized_advantages(torch.zeros(3), torch.zeros(4), 1.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=2, max_size=8))
def test_group_advantages_have_mean_zero_and_unit_spread(rewards):
    # float64: in float32 a group whose rewards differ by ~1e-5 has a mean off by ~1e-3 of its spread
    advantages = group_advantages(torch.tensor([rewards], dtype=torch.float64))[0]
    assert float(advantages.mean()) == pytest.approx(0.0, abs=1e-4)
    spread = float(torch.tensor(rewards, dtype=torch.float64).std(unbiased=False))
    assert float(advantages.std(unbiased=False)) == pytest.approx(spread / (spread + 1e-6), abs=1e-3)
    order = torch.tensor(rewards).argsort(stable=True)
    assert torch.all(advantages[order].diff() >= -1e-6)  # the order of the rewards is kept


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(floats, st.booleans()), min_size=2, max_size=8))
def test_masked_group_advantages_are_those_of_the_valid_candidates_alone(candidates):
    rewards = torch.tensor([[reward for reward, _ in candidates]], dtype=torch.float64)
    valid = torch.tensor([[keep for _, keep in candidates]])
    advantages = group_advantages(rewards, valid=valid)[0]
    assert torch.all(advantages[~valid[0]] == 0)
    if valid.any():
        alone = group_advantages(rewards[:, valid[0]])[0]
        torch.testing.assert_close(advantages[valid[0]], alone)
    torch.testing.assert_close(group_advantages(rewards, valid=torch.ones_like(valid)), group_advantages(rewards))


def slow_process_rewards(popularity, codes, alphas):
    """r_l = alpha_l max(0, P_l(z_l) - mean over the distinct level-l codes S_l of the group of P_l(t))."""
    batch, group, levels = codes.shape
    rewards = torch.zeros(batch, group, levels)
    for b in range(batch):
        for level in range(levels - 1):
            by_code = {int(codes[b, k, level]): float(popularity[b, k, level]) for k in range(group)}
            baseline = sum(by_code.values()) / len(by_code)
            for k in range(group):
                rewards[b, k, level] = alphas[level] * max(0.0, float(popularity[b, k, level]) - baseline)
    return rewards


@pytest.mark.parametrize("seed", range(5))
def test_process_rewards_equal_a_loop_over_each_groups_distinct_codes(seed):
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(0, 3, (2, 7, 3), generator=generator)
    mask = torch.rand(2, 7, generator=generator) > 0.3
    codes = torch.randint(0, 3, (2, 5, 3), generator=generator)
    popularity = code_popularity(history, mask, codes)
    alphas = [0.5, 2.0]
    assert torch.allclose(process_rewards(popularity, codes, alphas), slow_process_rewards(popularity, codes, alphas))


def test_code_popularity_counts_only_the_positive_history():
    history = torch.tensor([[[1, 0], [1, 1], [2, 1]]])
    codes = torch.tensor([[[1, 1], [2, 0]]])
    everything = code_popularity(history, torch.tensor([[True, True, True]]), codes)
    assert torch.allclose(everything, torch.tensor([[[2 / 3, 2 / 3], [1 / 3, 1 / 3]]]))
    first_only = code_popularity(history, torch.tensor([[True, False, False]]), codes)
    assert first_only.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    nothing = code_popularity(history, torch.zeros(1, 3, dtype=torch.bool), codes)
    assert nothing.abs().sum() == 0


def test_process_rewards_need_one_alpha_per_level_before_the_last():
    with pytest.raises(ValueError, match="one alpha per level"):
        process_rewards(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.long), [1.0])


def test_hepo_advantages_on_a_two_candidate_trajectory_by_hand():
    # Two levels; candidate 0: process reward 0.5 at level 1, terminal 1.0; candidate 1: nothing, terminal 0.0
    process = torch.tensor([[[0.5, 9.0], [0.0, 9.0]]])  # the last level's entry is ignored
    terminal = torch.tensor([[1.0, 0.0]])
    values = torch.tensor([[[0.2, 0.6], [0.1, 0.3]]])
    gamma, lam = 0.9, 0.5
    advantages, returns = hepo_advantages(process, terminal, values, gamma, lam)
    # level 2 (terminal): delta = R - V_2; level 1: delta = r_1 + gamma V_2 - V_1, A_1 = delta_1 + gamma lam delta_2
    delta_2 = [1.0 - 0.6, 0.0 - 0.3]
    delta_1 = [0.5 + gamma * 0.6 - 0.2, 0.0 + gamma * 0.3 - 0.1]
    gae_1 = [delta_1[k] + gamma * lam * delta_2[k] for k in range(2)]
    assert advantages[0, :, 0].tolist() == pytest.approx(gae_1)
    assert advantages[0, :, 1].tolist() == pytest.approx([1.0, -1.0], abs=1e-5)  # (R - mean) / std over the group
    assert returns[0, :, 0].tolist() == pytest.approx([gae_1[0] + 0.2, gae_1[1] + 0.1])
    assert returns[0, :, 1].tolist() == pytest.approx([1.0, 0.0])  # the terminal reward itself


@settings(max_examples=80, deadline=None)
@given(floats, floats, st.floats(min_value=-2.0, max_value=2.0))
def test_clipped_surrogate_is_ppos_objective_and_stops_gradients_outside_the_clip(log_prob, old_log_prob, advantage):
    clip = 0.2
    new = torch.tensor(log_prob, requires_grad=True)
    loss = clipped_surrogate(new, torch.tensor(old_log_prob), torch.tensor(advantage), clip)
    loss.backward()
    ratio = math.exp(log_prob - old_log_prob)
    expected = -min(ratio * advantage, min(max(ratio, 1 - clip), 1 + clip) * advantage)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    clipped_away = (advantage > 0 and ratio > 1 + clip) or (advantage < 0 and ratio < 1 - clip)
    if clipped_away:
        assert float(new.grad) == 0.0
    else:
        assert float(new.grad) == pytest.approx(-ratio * advantage, rel=1e-4, abs=1e-5)


@settings(max_examples=80, deadline=None)
@given(floats, floats, st.floats(min_value=-2.0, max_value=2.0))
def test_early_clipping_changes_exactly_the_negative_advantage_ratios_above_its_bound(
    log_prob, old_log_prob, advantage
):
    clip, early = 0.2, 0.1
    new, old, adv = torch.tensor(log_prob), torch.tensor(old_log_prob), torch.tensor(advantage)
    ecpo = float(early_clipped_surrogate(new, old, adv, clip, early))
    ppo = float(clipped_surrogate(new, old, adv, clip))
    ratio = math.exp(log_prob - old_log_prob)
    if advantage < 0 and ratio > 1 + clip + early:
        assert ecpo == pytest.approx(-advantage * (1 + clip + early), rel=1e-4)  # the ratio capped at its bound
        assert ecpo <= ppo + 1e-5
    else:
        assert ecpo == pytest.approx(ppo, rel=1e-5, abs=1e-6)


def test_early_clipping_keeps_a_gradient_for_capped_negative_advantages():
    # PPO's min leaves a large ratio with a negative advantage unclipped; ECPO's raised old probability bounds the
    # ratio but keeps the action's gradient (the ratio's value is pinned, its derivative is not).
    new = torch.tensor([3.0], requires_grad=True)
    early_clipped_surrogate(new, torch.zeros(1), torch.tensor([-1.0]), 0.2, 0.1).sum().backward()
    assert float(new.grad) == pytest.approx(1.3, rel=1e-4)


@settings(max_examples=60, deadline=None)
@given(floats, floats, floats)
def test_clipped_entries_are_where_the_surrogate_passes_no_gradient(log_prob, old_log_prob, advantage):
    log_probs = torch.tensor([log_prob], requires_grad=True)
    clipped_surrogate(log_probs, torch.tensor([old_log_prob]), torch.tensor([advantage]), 0.2).sum().backward()
    ratio = torch.exp(torch.tensor([log_prob - old_log_prob]))
    # A gradient of A * ratio underflows to zero for a subnormal advantage, so tiny advantages say nothing here.
    if abs(float(ratio) - 0.8) > 1e-4 and abs(float(ratio) - 1.2) > 1e-4 and abs(advantage) > 1e-6:
        assert bool(clipped_entries(ratio, torch.tensor([advantage]), 0.2)) == bool(log_probs.grad == 0)


def test_early_clipped_entries_are_the_capped_ratios():
    log_probs, old = torch.log(torch.tensor([1.2, 1.35, 2.0, 2.0])), torch.zeros(4)
    advantages = torch.tensor([-1.0, -1.0, -1.0, 1.0])
    surrogate = early_clipped_surrogate(log_probs, old, advantages, 0.2, 0.1)
    capped = early_clipped_entries(log_probs.exp(), advantages, 0.2, 0.1)
    assert capped.tolist() == [False, True, True, False]
    torch.testing.assert_close(surrogate[capped], torch.full((2,), 1.3))  # -(1 + 0.2 + 0.1) * A
