"""Policy-gradient pieces of the generative models' post-training: GPR's HEPO and OneRec's ECPO.

A generated item is a trajectory of ``L`` actions, its semantic-ID codes ``z_1 .. z_L`` chosen coarse to fine; a
request samples ``K`` such items (a group). Everything here is a pure function of tensors shaped ``[..., K, L]``
(or ``[..., K]`` for per-item quantities), so that a training stage only gathers log-probabilities, values and
rewards and calls these.

- :func:`sample_without_replacement`: a request's group of ``K`` distinct candidates drawn from a policy's
  distribution (Gumbel-top-K).
- :func:`group_advantages`: rewards normalised within each request's group (GRPO; HEPO's terminal advantage
  ``A_L = (R - mu_K) / (sigma_K + eps)``).
- :func:`generalized_advantages`: GAE over the levels of each trajectory.
- :func:`code_popularity` and :func:`process_rewards`: HEPO's per-level process reward
  ``r_l = alpha_l * max(0, P_l(z_l) - mean_{t in S_l} P_l(t))``.
- :func:`hepo_advantages`: the advantages and critic targets of GPR's Eq. 10.
- :func:`clipped_surrogate` (PPO) and :func:`early_clipped_surrogate` (ECPO: the old probability of an action
  with a negative advantage is raised to ``sg(pi) / (1 + eps + delta)``, which bounds its ratio), and which
  entries each clips (:func:`clipped_entries`, :func:`early_clipped_entries`: a stage's clip fractions).

Where GPR's paper is silent (which codes form ``S_l``, how the terminal reward meets GAE) the choice is written in
the function's docstring and in ``docs/alignment.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "clipped_entries",
    "clipped_surrogate",
    "code_popularity",
    "early_clipped_entries",
    "early_clipped_surrogate",
    "generalized_advantages",
    "group_advantages",
    "hepo_advantages",
    "process_rewards",
    "sample_without_replacement",
]


def sample_without_replacement(log_probs: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``[..., k]`` indices of ``k`` distinct entries of the last dimension drawn without replacement from the
    distribution ``softmax(log_probs)``: the top ``k`` of ``log_probs + Gumbel noise`` (Gumbel-top-k), which draws
    them as successive draws from the remaining entries would (Plackett-Luce), in the order drawn. Entries of
    ``-inf`` are never drawn while ``k`` does not exceed the finite ones.

    >>> sample_without_replacement(torch.tensor([[0.0, float("-inf"), 0.0]]), 2).sort().values
    tensor([[0, 2]])
    """
    uniform = torch.rand(log_probs.shape, generator=generator, device=log_probs.device, dtype=log_probs.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(uniform.dtype).tiny)))
    return (log_probs + gumbel).topk(k, dim=-1).indices


def group_advantages(rewards: Tensor, eps: float = 1e-6, valid: Tensor | None = None) -> Tensor:
    """``[..., K]`` each reward's distance to its group's mean in units of the group's standard deviation
    (population, over the last dimension): GRPO's advantage and HEPO's terminal ``A_L``.

    A group whose rewards are all equal gets advantages of 0: no sample is better than another. With ``valid``
    (``[..., K]`` bool: the candidates that exist, e.g. of a beam that found fewer than ``K``), the mean and the
    spread run over the valid candidates only, and the others get 0.

    >>> group_advantages(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    tensor([[-1.0000,  1.0000],
            [ 0.0000,  0.0000]])
    >>> group_advantages(torch.tensor([[1.0, 3.0, 9.0]]), valid=torch.tensor([[True, True, False]]))
    tensor([[-1.0000,  1.0000,  0.0000]])
    """
    if valid is None:
        mean = rewards.mean(dim=-1, keepdim=True)
        std = rewards.std(dim=-1, unbiased=False, keepdim=True)
        return (rewards - mean) / (std + eps)
    weights = valid.to(rewards.dtype)
    count = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (rewards * weights).sum(dim=-1, keepdim=True) / count
    std = (((rewards - mean) ** 2 * weights).sum(dim=-1, keepdim=True) / count).sqrt()
    return torch.where(valid, (rewards - mean) / (std + eps), torch.zeros_like(rewards))


def generalized_advantages(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation along the last dimension (the ``T`` steps of each trajectory).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V_{T} = 0`` after the last step, and
    ``A_t = sum_{k >= 0} (gamma * lam)^k * delta_{t+k}``, computed backwards in ``T`` vector steps.

    Args:
        rewards: ``[..., T]`` the reward after each step.
        values: ``[..., T]`` the critic's value of each step's state.
        gamma: discount; lam: GAE's lambda.

    Returns:
        ``advantages`` ``[..., T]`` and ``returns`` ``[..., T]`` (``advantages + values``: the critic's targets).

    >>> advantages, returns = generalized_advantages(torch.tensor([0.0, 1.0]), torch.zeros(2), 1.0, 1.0)
    >>> advantages.tolist(), returns.tolist()
    ([1.0, 1.0], [1.0, 1.0])
    """
    if rewards.shape != values.shape:
        shapes = f"{tuple(rewards.shape)} and {tuple(values.shape)}"
        raise ValueError(f"rewards and values must have one shape, got {shapes}")
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = rewards + gamma * next_values - values
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[..., 0])
    for step in reversed(range(deltas.shape[-1])):
        running = deltas[..., step] + gamma * lam * running
        advantages[..., step] = running
    return advantages, advantages + values


def code_popularity(history_codes: Tensor, history_mask: Tensor, codes: Tensor) -> Tensor:
    """HEPO's ``P_l(z_l)``: the share of the user's positive history items whose level-``l`` code is the
    candidate's level-``l`` code.

    Args:
        history_codes: ``[B, N, L]`` the codes of each user's history items.
        history_mask: ``[B, N]`` True for the positive-feedback history items the popularity counts (padding and
            negative feedback False).
        codes: ``[B, K, L]`` the codes of each request's ``K`` candidates.

    Returns:
        ``[B, K, L]`` shares in ``[0, 1]``; 0 for a user without a positive history item.

    >>> history = torch.tensor([[[0, 1], [0, 2], [1, 2], [3, 3]]])
    >>> code_popularity(history, torch.tensor([[True, True, True, False]]), torch.tensor([[[0, 2], [3, 3]]]))
    tensor([[[0.6667, 0.6667],
             [0.0000, 0.0000]]])
    """
    same = codes.unsqueeze(2) == history_codes.unsqueeze(1)  # [B, K, N, L]
    counted = (same & history_mask[:, None, :, None]).sum(dim=2).float()  # [B, K, L]
    positives = history_mask.sum(dim=1).clamp(min=1).float()  # [B]
    return counted / positives[:, None, None]


def process_rewards(popularity: Tensor, codes: Tensor, alphas: Sequence[float]) -> Tensor:
    """HEPO's process rewards ``r_l = alpha_l * max(0, P_l(z_l) - mean_{t in S_l} P_l(t))`` for the levels
    ``l < L``; the last level's entry is 0 (its reward is the terminal one, :func:`hepo_advantages`).

    ``S_l`` (the paper does not define it further) is the set of distinct level-``l`` codes among the request's
    ``K`` candidates: a code reached by several candidates counts once in the mean, so the baseline is the
    popularity of what the group explored, not of how often it explored it.

    Args:
        popularity: ``[B, K, L]`` :func:`code_popularity` of each candidate's codes.
        codes: ``[B, K, L]`` the candidates' codes (which of them share a code).
        alphas: ``L - 1`` weights ``alpha_l`` of the levels before the last.

    >>> popularity = torch.tensor([[[0.5, 0.2], [0.5, 0.9], [0.1, 0.0]]])
    >>> codes = torch.tensor([[[1, 4], [1, 5], [2, 6]]])
    >>> process_rewards(popularity, codes, [1.0])  # S_1 = {1, 2}: mean (0.5 + 0.1) / 2 = 0.3
    tensor([[[0.2000, 0.0000],
             [0.2000, 0.0000],
             [0.0000, 0.0000]]])
    """
    levels = codes.shape[-1]
    if len(alphas) != levels - 1:
        raise ValueError(f"need one alpha per level before the last ({levels - 1}), got {list(alphas)}")
    same = codes.unsqueeze(2) == codes.unsqueeze(1)  # [B, K, K, L]
    share = 1.0 / same.sum(dim=2).float()  # [B, K, L]: 1 / how many candidates have this candidate's code
    distinct = share.sum(dim=1, keepdim=True)  # [B, 1, L] the size of S_l
    baseline = (popularity * share).sum(dim=1, keepdim=True) / distinct  # [B, 1, L] the mean over S_l
    weights = torch.tensor([*alphas, 0.0], dtype=popularity.dtype, device=popularity.device)
    return weights * (popularity - baseline).clamp(min=0.0)


def hepo_advantages(
    process: Tensor, terminal: Tensor, values: Tensor, gamma: float, lam: float, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """HEPO's per-level advantages and the critic's targets (GPR, Eq. 10).

    The trajectory's rewards are the process rewards of the levels ``l < L`` and the terminal reward ``R`` at the
    last level. Levels ``l < L`` take GAE's advantage over those rewards and the critic's per-level values (so
    the terminal reward reaches the earlier levels through GAE); the last level's advantage is the group-normalised
    ``A_L = (R - mu_K) / (sigma_K + eps)`` over the request's ``K`` candidates. The critic's targets are GAE's
    returns ``A^GAE + V`` at every level (``R`` itself at the last).

    Args:
        process: ``[B, K, L]`` :func:`process_rewards` (its last level is ignored).
        terminal: ``[B, K]`` each candidate's terminal reward ``R``.
        values: ``[B, K, L]`` the critic's value after each level's code (GPR's HTE).

    Returns:
        ``advantages`` ``[B, K, L]`` and ``returns`` ``[B, K, L]``.
    """
    rewards = torch.cat([process[..., :-1], terminal.unsqueeze(-1)], dim=-1)
    advantages, returns = generalized_advantages(rewards, values, gamma, lam)
    advantages = torch.cat([advantages[..., :-1], group_advantages(terminal, eps).unsqueeze(-1)], dim=-1)
    return advantages, returns


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """``[...]`` PPO's clipped surrogate as a loss to minimise: ``-min(rho * A, clip(rho, 1 - e, 1 + e) * A)`` with
    ``rho = exp(log_probs - old_log_probs)``; gradients flow through ``log_probs`` only.

    >>> clipped_surrogate(torch.tensor([0.5, 0.5]), torch.zeros(2), torch.tensor([1.0, -1.0]), 0.2)
    tensor([-1.2000,  1.6487])
    """
    ratio = torch.exp(log_probs - old_log_probs.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    return -torch.minimum(unclipped, clipped)


def early_clipped_surrogate(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float, early_clip: float
) -> Tensor:
    """``[...]`` ECPO's surrogate (OneRec technical report): for an action with a negative advantage the old
    probability becomes ``max(sg(pi) / (1 + clip + early_clip), pi_old)``, so its ratio never exceeds
    ``1 + clip + early_clip`` (PPO's ``min`` leaves it unbounded there, and a few such actions can dominate a
    step); actions with a non-negative advantage keep PPO's surrogate.

    >>> early_clipped_surrogate(torch.tensor([3.0]), torch.zeros(1), torch.tensor([-1.0]), 0.2, 0.1)
    tensor([1.3000])
    """
    raised = torch.maximum(log_probs.detach() - math.log(1.0 + clip + early_clip), old_log_probs.detach())
    old = torch.where(advantages < 0, raised, old_log_probs.detach())
    return clipped_surrogate(log_probs, old, advantages, clip)


def clipped_entries(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """``[...]`` bool: where PPO's clip binds (the clipped term is the minimum and differs from the unclipped one, so
    the entry passes no gradient): ``A > 0`` with ``ratio > 1 + clip``, or ``A < 0`` with ``ratio < 1 - clip``.

    >>> clipped_entries(torch.tensor([1.5, 1.5, 0.5]), torch.tensor([1.0, -1.0, -1.0]), 0.2)
    tensor([ True, False,  True])
    """
    return ((advantages > 0) & (ratio > 1.0 + clip)) | ((advantages < 0) & (ratio < 1.0 - clip))


def early_clipped_entries(ratio: Tensor, advantages: Tensor, clip: float, early_clip: float) -> Tensor:
    """``[...]`` bool: the entries :func:`early_clipped_surrogate` changes, a negative advantage with
    ``ratio > 1 + clip + early_clip`` (its ratio is capped there; PPO's clip leaves such entries unbounded).

    >>> early_clipped_entries(torch.tensor([1.5, 1.2, 1.5]), torch.tensor([-1.0, -1.0, 1.0]), 0.2, 0.1)
    tensor([ True, False, False])
    """
    return (advantages < 0) & (ratio > 1.0 + clip + early_clip)
