"""Preference alignment from a reward model's choices: the DPO loss and the pairs it is trained on.

A policy proposes ``N`` candidates per request (a beam); a reward model scores them; the best-scored candidate is
*chosen* and the worst *rejected* (OneRec's IPA, GPR's DPO stage). Direct Preference Optimization (Rafailov et al.,
NeurIPS 2023) then raises the policy's log-likelihood ratio to a frozen reference on the chosen candidate against the
rejected one:

    loss = -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

``beta * (log pi - log ref)`` is DPO's *implicit reward*; the pair is ranked right when the chosen candidate's
implicit reward is the larger (:func:`implicit_reward_margins` > 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo_loss", "implicit_reward_margins", "preference_pairs"]


def implicit_reward_margins(
    policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor, beta: float
) -> Tensor:
    """``[P]`` the chosen candidate's implicit reward minus the rejected one's,
    ``beta * ((pc - rc) - (pr - rr))``, from ``[P]`` log-probabilities of each pair under the policy and the
    reference."""
    return beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor, beta: float
) -> Tensor:
    """``[P]`` the DPO loss of each pair, ``-log sigmoid(margin)`` with the margin of
    :func:`implicit_reward_margins`; its gradient in ``policy_chosen`` is ``-beta * sigmoid(-margin)``.

    Args:
        policy_chosen, policy_rejected: ``[P]`` the policy's log-probabilities (differentiable).
        reference_chosen, reference_rejected: ``[P]`` the frozen reference's log-probabilities.
        beta: how far the policy may move from the reference (larger: a sharper preference, a stronger pull).

    >>> dpo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 0.1)
    tensor([0.6931])
    """
    margins = implicit_reward_margins(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    return -F.logsigmoid(margins)


def preference_pairs(rewards: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The chosen (highest reward) and rejected (lowest reward) valid candidate of each request.

    Args:
        rewards: ``[B, N]`` each candidate's reward.
        valid: ``[B, N]`` bool, the candidates that exist (a beam may find fewer than ``N``).

    Returns:
        ``chosen`` ``[B]`` and ``rejected`` ``[B]`` candidate indices (the first of tied candidates) and ``has_pair``
        ``[B]``: False for a request with fewer than two valid candidates or with all its rewards equal (no
        preference to learn from); its indices are then meaningless.

    >>> preference_pairs(torch.tensor([[0.2, 0.9, 0.1], [0.5, 0.5, 0.3]]),
    ...                  torch.tensor([[True, True, True], [True, True, False]]))
    (tensor([1, 0]), tensor([2, 0]), tensor([ True, False]))
    """
    chosen = torch.where(valid, rewards, float("-inf")).argmax(dim=1)
    rejected = torch.where(valid, rewards, float("inf")).argmin(dim=1)
    best = rewards.gather(1, chosen.unsqueeze(1)).squeeze(1)
    worst = rewards.gather(1, rejected.unsqueeze(1)).squeeze(1)
    has_pair = (valid.sum(dim=1) >= 2) & (best > worst)
    return chosen, rejected, has_pair
