"""The preference-alignment stage (``stage: align``): a trained GPR or OneRec fine-tuned toward what a RewardModel
prefers among candidates the models generate (GPR's DPO stage and HEPO, OneRec's Iterative Preference Alignment
and ECPO).

    run_recbole --model=GPR --stage=align --from_checkpoint=saved/GPR-X.pth --reward_checkpoint=saved/R.pth
    run_recbole --model=GPR --stage=align --align_method=hepo --from_checkpoint=saved/GPR-X.pth \\
        --reward_checkpoint=saved/R.pth
    run_recbole --model=OneRec --stage=align --from_checkpoint=saved/OneRec-X.pth --reward_checkpoint=saved/R.pth \\
        --align_iterations=2

The policy starts from ``from_checkpoint`` (whose run's settings are the stage's defaults: ``Config``); a frozen copy
of it is the reference, and a frozen RewardModel trained on the same dataset scores candidates. Per training batch
the loss is the policy's next-token loss (HEPO: without GPR's HTE term, the HTE being its critic) plus
``align_weight`` x the mean loss of an :class:`AlignmentMethod` (the registry :data:`ALIGNMENT_METHODS`, keyed by
``align_method``): the preference methods (:class:`BeamPreference`: DPO on the best and the worst of the policy's
beam) and the policy-gradient ones (:class:`PolicyGradient`: HEPO and ECPO, with the reference as the behaviour
policy of PPO's ratio; HEPO first fits its critic alone). Early stopping and the best checkpoint follow the
usual validation metric on real held-out interactions; the run also reports ``reward@K``, the reward model's
estimate of the policy's generated top-K on the test requests (``docs/alignment.md``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from recbole.utils import init_seed
from torch import Tensor, nn

from recbole_oneranker.checkpoints import load_data_and_model, start_from_checkpoint
from recbole_oneranker.config import checkpoint_config
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import (
    clipped_entries,
    clipped_surrogate,
    code_popularity,
    dpo_loss,
    early_clipped_entries,
    early_clipped_surrogate,
    group_advantages,
    hepo_advantages,
    implicit_reward_margins,
    preference_pairs,
    process_rewards,
    sample_without_replacement,
)
from recbole_oneranker.trainer import Trainer

REWARD_MODEL = "RewardModel"


@dataclass
class AlignmentBatch:
    """What an alignment method made of one batch's sampled requests.

    Attributes:
        loss: the method's loss, a mean over its ``count`` units (a 0 tensor when there are none).
        count: how many units the loss and the sums run over (DPO: the requests with a pair; a policy-gradient
            method: the requests).
        sums: each statistic the method logs, summed over the units (the epoch's line shows sum / count).
    """

    loss: Tensor
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class AlignmentStats:
    """An epoch's :class:`AlignmentBatch` totals, and their means for the progress line.

    Attributes:
        names: the statistics the method reports, in the line's order (NaN before any unit; a name a batch adds
            beyond them follows them).
        unit: what ``count`` counts (``pairs``, ``requests``).
    """

    names: tuple[str, ...]
    unit: str
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, batch: AlignmentBatch) -> None:
        self.count += batch.count
        for name, value in batch.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def means(self) -> dict[str, float]:
        """Each statistic's mean over the epoch's units (NaN without any), and the count under the unit's name."""
        names = dict.fromkeys([*self.names, *self.sums])
        means = {name: self.sums.get(name, 0.0) / self.count if self.count else math.nan for name in names}
        return means | {self.unit: float(self.count)}

    def describe(self) -> str:
        means = self.means()
        count = int(means.pop(self.unit))
        return ", ".join(f"{name} {value:.4f}" for name, value in means.items()) + f", {self.unit} {count}"


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) inside the block, back in its mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's ``requires_grad`` off; returns it."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class AlignmentMethod:
    """A way to turn a batch of requests into an alignment loss (a strategy of :data:`ALIGNMENT_METHODS`).

    Subclasses set ``name`` (the ``align_method`` value), ``models`` (the model classes they align, the first
    model's own method first in the registry), ``iterative`` (whether ``align_iterations`` > 1 means something to
    them), ``statistics`` and ``unit`` (the epoch's progress line: :class:`AlignmentStats`), and implement
    :meth:`loss`. They may change the stage's next-token term (:meth:`next_token_loss`) and fit some parameters alone
    before the first epoch (:meth:`warm_up_parameters`, :meth:`warm_up_loss`, ``warmup_batches``: HEPO's critic).

    Constructor Args:
        config: the stage's config; dataset: the policy's training data.
    """

    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]]
    iterative: ClassVar[bool] = False
    statistics: ClassVar[tuple[str, ...]] = ()
    unit: ClassVar[str] = "requests"

    def __init__(self, config, dataset) -> None:
        self.warmup_batches = 0  # see warm_up_parameters
        self.warmup_learning_rate = 0.0
        self.beta = config["align_beta"]
        self.beam = config["align_beam"]
        if config["align_iterations"] > 1 and not self.iterative:
            raise ConfigError(f"align_method {self.name} has no iterations: leave align_iterations at 1")

    def check(self, policy: nn.Module) -> None:
        """Raise :class:`ConfigError` for a policy configuration the method does not support: here a
        ``repeat_explore`` policy (every method's candidates and log-probabilities cover the SID generator alone:
        GPR's item log-probabilities have no form for the copy mixture, OneRec's session beam proposes no copied
        item)."""
        if policy.repeat_explore is not None:
            raise ConfigError(
                f"align_method {self.name} scores the SID generator alone: align a {type(policy).__name__} without "
                "repeat_explore"
            )

    def new_stats(self) -> AlignmentStats:
        """An empty epoch total of this method's statistics."""
        return AlignmentStats(self.statistics, self.unit)

    def loss(self, policy, reference, reward_model, interaction) -> AlignmentBatch:
        """The alignment loss of the requests of ``interaction`` (differentiable in ``policy`` only)."""
        raise NotImplementedError

    def next_token_loss(self, policy, interaction) -> tuple[Tensor, ...]:
        """The stage's next-token term: the policy's own training loss, its parts as ``calculate_loss`` gives them."""
        parts = policy.calculate_loss(interaction)
        return parts if isinstance(parts, tuple) else (parts,)

    def warm_up_parameters(self, policy) -> list[nn.Parameter]:
        """The parameters :meth:`warm_up_loss` fits, alone, for ``warmup_batches`` batches at
        ``warmup_learning_rate`` before the stage's first epoch."""
        return []

    def warm_up_loss(self, policy, reference, reward_model, interaction) -> Tensor:
        """The loss the warm-up minimises on a batch's sampled requests (for :meth:`warm_up_parameters`)."""
        raise NotImplementedError


def item_slate_log_probs(model, interaction, slates: Tensor) -> Tensor:
    """``[B, C]`` GPR's log-probability of each one-item slate of ``slates`` (``[B, C, 1]``):
    :meth:`~recbole_oneranker.model.sequential_recommender.GPR.item_log_probs`."""
    return model.item_log_probs(model.encode_requests(interaction), slates[..., 0])


def session_slate_log_probs(model, interaction, slates: Tensor) -> Tensor:
    """``[B, C]`` OneRec's log-probability of each session of ``slates`` (``[B, C, m]``):
    :meth:`~recbole_oneranker.model.sequential_recommender.OneRec.last_session_log_probs`."""
    return model.last_session_log_probs(interaction, slates)


class BeamPreference(AlignmentMethod):
    """DPO on the best and the worst of the policy's beam by reward (OneRec's IPA step, GPR's DPO stage).

    Candidates are slates ``[B, N, m]`` of item ids (``m = 1`` for an item): a slate's reward is the mean reward of
    its items. Dropout is off for the policy's log-probabilities in the DPO term (as TRL's DPO trainer does), so
    the policy and the reference differ only by their weights.
    """

    statistics = ("dpo loss", "chosen reward", "rejected reward", "reward margin", "implicit-reward accuracy")
    unit = "pairs"

    def candidates(self, policy, interaction) -> tuple[Tensor, Tensor]:
        """``(slates [B, N, m], valid [B, N])``: the policy's ``align_beam`` candidates of each request."""
        raise NotImplementedError

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        """``[B, C]`` the log-probability of each slate of ``slates`` (``[B, C, m]``) under ``model``."""
        raise NotImplementedError

    def loss(self, policy, reference, reward_model, interaction) -> AlignmentBatch:
        with torch.no_grad(), evaluation_mode(policy):
            slates, valid = self.candidates(policy, interaction)
            rewards = slate_rewards(reward_model, interaction, slates)  # [B, N]
        chosen, rejected, has_pair = preference_pairs(rewards, valid)
        rows = has_pair.nonzero().squeeze(1)
        if len(rows) == 0:
            return AlignmentBatch(loss=rewards.new_zeros(()))
        pair = torch.stack([chosen[rows], rejected[rows]], dim=1)  # [P, 2]
        pair_slates = slates[rows.unsqueeze(1), pair]  # [P, 2, m]
        requests = interaction[rows]
        with evaluation_mode(policy):
            policy_log_probs = self.log_probs(policy, requests, pair_slates)  # [P, 2]
        with torch.no_grad():
            reference_log_probs = self.log_probs(reference, requests, pair_slates)
        log_probs = (
            policy_log_probs[:, 0],
            policy_log_probs[:, 1],
            reference_log_probs[:, 0],
            reference_log_probs[:, 1],
        )
        losses = dpo_loss(*log_probs, self.beta)
        pair_rewards = rewards[rows.unsqueeze(1), pair]
        chosen_reward, rejected_reward = float(pair_rewards[:, 0].sum()), float(pair_rewards[:, 1].sum())
        correct = int((implicit_reward_margins(*log_probs, self.beta).detach() > 0).sum())
        sums = (float(losses.detach().sum()), chosen_reward, rejected_reward, chosen_reward - rejected_reward, correct)
        return AlignmentBatch(loss=losses.mean(), count=len(rows), sums=dict(zip(self.statistics, sums, strict=True)))


class DirectPreference(BeamPreference):
    """GPR's DPO stage: the candidates are the items of GPR's trie beam (``generate``), their log-probability the
    heads' mixture of :meth:`~recbole_oneranker.model.sequential_recommender.GPR.item_log_probs`."""

    name = "dpo"
    models = ("GPR",)

    def candidates(self, policy, interaction) -> tuple[Tensor, Tensor]:
        items, _ = policy.generate(interaction, self.beam)  # [B, N], 0 where the catalogue has fewer
        return items.unsqueeze(-1), items > 0

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        return item_slate_log_probs(model, interaction, slates)


class IterativePreferenceAlignment(BeamPreference):
    """OneRec's IPA: the candidates are sessions of OneRec's session beam (``generate_sessions``), their
    log-probability the sum of their items' (:meth:`~recbole_oneranker.model.sequential_recommender.OneRec.
    last_session_log_probs`); each iteration's reference is the model the previous one ended with."""

    name = "ipa"
    models = ("OneRec",)
    iterative = True

    def candidates(self, policy, interaction) -> tuple[Tensor, Tensor]:
        return beam_sessions(policy, interaction, self.beam)

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        return session_slate_log_probs(model, interaction, slates)


@torch.no_grad()
def beam_sessions(model, interaction, beam: int) -> tuple[Tensor, Tensor]:
    """``(sessions [B, beam, m], valid [B, beam])``: OneRec's session beam (``generate_sessions``) of each request;
    a path that found no item, or no finite score, is not valid."""
    sessions, scores = model.generate_sessions(interaction, beam)  # [B, N, m], [B, N]
    return sessions, (sessions > 0).all(dim=-1) & torch.isfinite(scores)


@torch.no_grad()
def sampled_items(model, requests, count: int) -> Tensor:
    """``[B, count]`` distinct items per request (GPR's ``encode_requests``) drawn without replacement from GPR's
    exact catalogue distribution (:meth:`~recbole_oneranker.model.sequential_recommender.GPR.catalogue_log_probs`,
    the distribution its ``item_log_probs`` score), by Gumbel-top-k: a sample of the model, as PPO's importance
    ratio needs."""
    return sample_without_replacement(model.catalogue_log_probs(requests), count)


def positive_feedback_level(config, dataset) -> int:
    """The least feedback level (``GenerativeRecommender.feedback_levels``: 1 + the cascade stages an interaction
    reached) of a *positive* history entry, HEPO's ``P_l``: an entry that reached the first cascade stage beyond
    the base interaction. The base interaction is the leading stages every interaction of ``dataset`` reached
    (ml-100k's ``watched`` and Taobao's ``pv``: positive is then ``liked`` or ``fav``); without a cascade, or when
    every interaction reached every stage, every history entry is positive (level 1)."""
    fields = config["cascade_fields"] or []
    universal = 0
    for name in fields:
        if not bool((dataset.inter_feat[name] > 0).all()):
            break
        universal += 1
    return 1 if universal == len(fields) else universal + 2


@dataclass
class Rollout:
    """A group of candidates per request drawn from the behaviour policy (the frozen reference), and what the
    policy-gradient update reads of them; every tensor is computed without gradients.

    Attributes:
        slates: ``[B, K, m]`` item ids (``m = 1``: GPR's items; OneRec's sessions), 0 = none.
        valid: ``[B, K]`` the candidates that exist.
        rewards: ``[B, K]`` the reward model's reward of each candidate (a session's: its items' mean).
        old_log_probs: the reference's log-probabilities, ``[B, K]`` per candidate or ``[B, K, L]`` per SID level.
        process: ``[B, K, L]`` HEPO's process rewards (None for ECPO).
    """

    slates: Tensor
    valid: Tensor
    rewards: Tensor
    old_log_probs: Tensor
    process: Tensor | None = None


class PolicyGradient(AlignmentMethod):
    """A policy-gradient method: each request's group of ``align_beam`` candidates comes from the frozen reference
    (the behaviour policy: the "old" policy of PPO's ratio ``pi_theta / pi_ref``), scored by the reward model
    (:meth:`rollout`, without gradients), then the policy is updated on a clipped surrogate (:meth:`objective`).

    The reference is refreshed at each ``align_iterations`` iteration (as for IPA), so within an iteration the clip
    bounds how far the policy moves from it: with one optimiser step per batch, a behaviour policy equal to the
    current policy would make every ratio 1 and the clip meaningless. Dropout is off in the policy's terms, so the
    ratios start at exactly 1.
    """

    iterative = True

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.clip = config["align_clip"]

    def loss(self, policy, reference, reward_model, interaction) -> AlignmentBatch:
        rollout = self.rollout(reference, reward_model, interaction)
        with evaluation_mode(policy):
            return self.objective(policy, interaction, rollout)

    def rollout(self, reference, reward_model, interaction) -> Rollout:
        """The requests' candidates from the reference, their rewards and the reference's log-probabilities."""
        raise NotImplementedError

    def objective(self, policy, interaction, rollout: Rollout) -> AlignmentBatch:
        """The policy's loss on ``rollout`` (differentiable in ``policy``) and its statistics."""
        raise NotImplementedError


def fit_levels(weights: list[float], levels: int, key: str) -> list[float]:
    """``weights`` as one per level: a single value repeated ``levels`` times, or ``levels`` values as given.

    Raises:
        ConfigError: another number of values.
    """
    if len(weights) == 1:
        return list(weights) * levels
    if len(weights) != levels:
        raise ConfigError(f"{key} needs one value or {levels} (one per level it weights), got {list(weights)}")
    return list(weights)


class HierarchyEnhancedPolicyOptimization(PolicyGradient):
    """GPR's HEPO (Eq. 10): PPO per SID level, with process rewards for codes popular in the user's positive
    history, GAE over the levels against the HTE's per-level values, and a group-normalised terminal advantage.

    Per request: ``align_beam`` items drawn without replacement from the reference's catalogue distribution
    (:func:`sampled_items`); the reference's per-level log-probabilities ``item_level_log_probs`` (no gradient);
    process rewards ``r_l = alpha_l max(0, P_l(z_l) - mean_{S_l} P_l)`` (``hepo_process_weights``;
    :func:`~recbole_oneranker.model.layers.code_popularity` over the positive history entries:
    :func:`positive_feedback_level`); terminal reward ``R`` = the reward model's reward of the item. The update
    (:meth:`objective`): advantages and returns of :func:`~recbole_oneranker.model.layers.hepo_advantages`
    (``hepo_gamma``, ``hepo_lambda``) with the policy's HTE values, detached, as ``V``; the loss
    ``sum_l c_l mean_K clipped_surrogate_l + hepo_value_weight * MSE(V, returns)``, ``c_l`` = ``hepo_level_weights``.
    The critic's term trains the HTE alone: ``level_values`` reads a stop-gradient of the trunk.
    """

    name = "hepo"
    models = ("GPR",)
    statistics = ("policy loss", "critic loss", "terminal reward", "process reward", "clip fraction", "ratio")

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.gamma = config["hepo_gamma"]
        self.lam = config["hepo_lambda"]
        self.value_weight = config["hepo_value_weight"]
        self.warmup_batches = config["hepo_critic_warmup"]
        self.warmup_learning_rate = config["hepo_critic_learning_rate"]
        self.given_process_weights = list(config["hepo_process_weights"])
        self.given_level_weights = list(config["hepo_level_weights"])
        self.positive_level = positive_feedback_level(config, dataset)
        self.process_weights: list[float] = []
        self.level_weights: list[float] = []

    def check(self, policy) -> None:
        """Refuse a policy without the HTE (the critic) or with ``repeat_explore``; fit the per-level weights to
        the policy's SID levels."""
        super().check(policy)
        if policy.hte is None:
            raise ConfigError(
                "align_method hepo: the critic is GPR's HTE: align a GPR checkpoint trained with use_hte: True"
            )
        levels = policy.item_codes.shape[1]
        self.process_weights = fit_levels(self.given_process_weights, levels - 1, "hepo_process_weights")
        self.level_weights = fit_levels(self.given_level_weights, levels, "hepo_level_weights")

    @torch.no_grad()
    def rollout(self, reference, reward_model, interaction) -> Rollout:
        requests = reference.encode_requests(interaction)
        items = sampled_items(reference, requests, self.beam)  # [B, K]
        codes = reference.item_codes[items]  # [B, K, L]
        seq_len = int(interaction[reference.ITEM_SEQ_LEN].max())
        history = interaction[reference.ITEM_SEQ][:, :seq_len]
        positive = reference.feedback_levels(interaction, seq_len) >= self.positive_level  # padding: level 0
        popularity = code_popularity(reference.item_codes[history], positive, codes)
        return Rollout(
            slates=items.unsqueeze(-1),
            valid=items > 0,
            rewards=slate_rewards(reward_model, interaction, items.unsqueeze(-1)),
            old_log_probs=reference.item_level_log_probs(requests, items),
            process=process_rewards(popularity, codes, self.process_weights),
        )

    def next_token_loss(self, policy, interaction) -> tuple[Tensor, ...]:
        """GPR's generation loss without its HTE term (``calculate_loss`` gives ``(generation, value)`` with the HTE,
        which HEPO requires): the HTE is HEPO's critic here, trained on the returns alone; its pre-training target,
        the normalised value, is on another scale and would pull it back at every batch."""
        generation, _ = policy.calculate_loss(interaction)
        return (generation,)

    def warm_up_parameters(self, policy) -> list[nn.Parameter]:
        """The critic's (the HTE's): it was pre-trained on the normalised value, while its targets here are the
        reward model's rewards, on another scale; the first advantages would mostly measure that gap."""
        return list(policy.hte.parameters())

    def warm_up_loss(self, policy, reference, reward_model, interaction) -> Tensor:
        """The critic's squared error against the returns of a rollout from the reference (the objective's critic
        term, no policy term)."""
        rollout = self.rollout(reference, reward_model, interaction)
        with evaluation_mode(policy):
            _, returns, values = self.advantages(policy, policy.encode_requests(interaction), rollout)
        return (values - returns).pow(2).mean()

    def advantages(self, policy, requests, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
        """``(advantages, returns, values)``, each ``[B, K, L]``: Eq. 10's advantages and critic targets from the
        rollout's rewards and the policy's HTE values of ``requests`` (its ``encode_requests`` of the batch; detached
        for them), and those values with their gradient (into the HTE only)."""
        values = policy.level_values(requests, rollout.slates[..., 0])
        advantages, returns = hepo_advantages(rollout.process, rollout.rewards, values.detach(), self.gamma, self.lam)
        return advantages, returns, values

    def objective(self, policy, interaction, rollout: Rollout) -> AlignmentBatch:
        requests = policy.encode_requests(interaction)  # one encoding for the log-probabilities and the values
        log_probs = policy.item_level_log_probs(requests, rollout.slates[..., 0])  # [B, K, L]
        advantages, returns, values = self.advantages(policy, requests, rollout)
        surrogate = clipped_surrogate(log_probs, rollout.old_log_probs, advantages, self.clip)  # [B, K, L]
        coefficients = torch.tensor(self.level_weights, dtype=surrogate.dtype, device=surrogate.device)
        policy_loss = (surrogate.mean(dim=1) * coefficients).sum(-1)  # [B]
        critic_loss = (values - returns).pow(2).mean(dim=(1, 2))  # [B]
        ratio = torch.exp(log_probs.detach() - rollout.old_log_probs)
        clipped = clipped_entries(ratio, advantages, self.clip).float()
        sums = (
            policy_loss.detach().sum(),
            critic_loss.detach().sum(),
            rollout.rewards.mean(dim=1).sum(),
            rollout.process[..., :-1].mean(dim=(1, 2)).sum(),  # the last level's entry is no process reward
            clipped.mean(dim=(1, 2)).sum(),
            ratio.mean(dim=(1, 2)).sum(),
        )
        return AlignmentBatch(
            loss=(policy_loss + self.value_weight * critic_loss).mean(),
            count=len(log_probs),
            sums={name: float(value) for name, value in zip(self.statistics, sums, strict=True)},
        )


class EarlyClippedPolicyOptimization(PolicyGradient):
    """OneRec's ECPO (technical report): GRPO with early clipping, for GPR and OneRec.

    Per request a group of ``align_beam`` candidates from the reference: GPR's items sampled without replacement
    from its catalogue distribution (:func:`sampled_items`), OneRec's session beam (:func:`beam_sessions`: a beam
    is not a sample, so the ratio is then a trust-region weight around the reference rather than an unbiased
    importance weight). Rewards from the reward model (a session's: its items' mean); advantages normalised in the
    group (:func:`~recbole_oneranker.model.layers.group_advantages`, over the valid candidates); sequence-level
    log-probabilities (GPR's ``item_log_probs``, OneRec's ``last_session_log_probs``); the loss
    :func:`~recbole_oneranker.model.layers.early_clipped_surrogate` (``align_clip``, ``ecpo_early_clip``), averaged
    over each request's valid candidates. The report's format reward (legal SIDs) is left out: every candidate
    here comes from the trie, so it is always legal.
    """

    name = "ecpo"
    models = ("GPR", "OneRec")
    statistics = ("policy loss", "reward", "clip fraction", "early-clip fraction", "ratio")

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.early_clip = config["ecpo_early_clip"]
        self.samples_items = config["model"] == "GPR"  # GPR samples items; OneRec's group is its session beam

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        """``[B, C]`` each candidate's sequence-level log-probability under ``model``."""
        score = item_slate_log_probs if self.samples_items else session_slate_log_probs
        return score(model, interaction, slates)

    @torch.no_grad()
    def rollout(self, reference, reward_model, interaction) -> Rollout:
        if self.samples_items:  # one encoding of the histories for the draw and its log-probabilities
            requests = reference.encode_requests(interaction)
            items = sampled_items(reference, requests, self.beam)
            slates, valid, old_log_probs = items.unsqueeze(-1), items > 0, reference.item_log_probs(requests, items)
        else:
            slates, valid = beam_sessions(reference, interaction, self.beam)
            old_log_probs = self.log_probs(reference, interaction, slates)
        return Rollout(
            slates=slates,
            valid=valid,
            rewards=slate_rewards(reward_model, interaction, slates),
            old_log_probs=old_log_probs,
        )

    def objective(self, policy, interaction, rollout: Rollout) -> AlignmentBatch:
        log_probs = self.log_probs(policy, interaction, rollout.slates)  # [B, K]
        advantages = group_advantages(rollout.rewards, valid=rollout.valid)
        surrogate = early_clipped_surrogate(log_probs, rollout.old_log_probs, advantages, self.clip, self.early_clip)
        weights = rollout.valid.to(surrogate.dtype)
        candidates = weights.sum(dim=1).clamp(min=1.0)  # [B]

        def per_request(values: Tensor) -> Tensor:  # [B, K] -> [B], the mean over the valid candidates
            return (values * weights).sum(dim=1) / candidates

        policy_loss = per_request(surrogate)
        ratio = torch.exp(log_probs.detach() - rollout.old_log_probs)
        sums = (
            policy_loss.detach().sum(),
            per_request(rollout.rewards).sum(),
            per_request(clipped_entries(ratio, advantages, self.clip).float()).sum(),
            per_request(early_clipped_entries(ratio, advantages, self.clip, self.early_clip).float()).sum(),
            per_request(ratio).sum(),
        )
        return AlignmentBatch(
            loss=policy_loss.mean(),
            count=len(log_probs),
            sums={name: float(value) for name, value in zip(self.statistics, sums, strict=True)},
        )


# align_method -> its method; config_rules lists the same names for the align_method key. A model's own method
# (the default of align_method ~) is the first that names it.
ALIGNMENT_METHODS: dict[str, type[AlignmentMethod]] = {
    method.name: method
    for method in (
        DirectPreference,
        IterativePreferenceAlignment,
        HierarchyEnhancedPolicyOptimization,
        EarlyClippedPolicyOptimization,
    )
}


def alignment_method(config, dataset) -> AlignmentMethod:
    """The config's :class:`AlignmentMethod` (``align_method``, or the model's own when ~) for the policy's training
    data ``dataset``.

    Raises:
        ConfigError: a model no method aligns, or a method of another model.
    """
    name = config["align_method"]
    if name is None:
        own = [method.name for method in ALIGNMENT_METHODS.values() if config["model"] in method.models]
        if not own:
            models = ", ".join(sorted({model for method in ALIGNMENT_METHODS.values() for model in method.models}))
            raise ConfigError(f"stage: align aligns {models}, not {config['model']}")
        name = own[0]
    method = ALIGNMENT_METHODS[name]
    if config["model"] not in method.models:
        raise ConfigError(f"align_method {name} aligns a {' or a '.join(method.models)}, not a {config['model']}")
    return method(config, dataset)


@torch.no_grad()
def slate_rewards(reward_model, interaction, slates: Tensor) -> Tensor:
    """``[B, N]`` the reward of each slate (``[B, N, m]`` item ids, 0 = none) for the requests of ``interaction``:
    the mean reward of its items (``RewardModel.reward_of_users``; a slate without items gets 0)."""
    batch, count, length = slates.shape
    users = reward_model.encode_users(interaction)
    rewards = reward_model.reward_of_users(users, slates.flatten(1)).reward.view(batch, count, length)
    present = (slates > 0).float()
    return (rewards * present).sum(-1) / present.sum(-1).clamp(min=1.0)


@torch.no_grad()
def generated_reward(policy, reward_model, loader, k: int) -> float:
    """The reward model's mean reward of the policy's top-``k`` generated items (``policy.generate``), averaged over
    each request's items, then over the requests of ``loader`` (RecBole's evaluation loader)."""
    policy.eval()
    total, requests = 0.0, 0
    for batch in loader:
        interaction = batch[0].to(policy.device)
        items, _ = policy.generate(interaction, k)
        total += float(slate_rewards(reward_model, interaction, items.unsqueeze(1)).sum())
        requests += len(items)
    return total / max(requests, 1)


def load_reward_model(path: str, config, dataset) -> nn.Module:
    """The frozen RewardModel of ``path``, checked against the policy's config and dataset.

    Raises:
        ConfigError: not a RewardModel checkpoint, one of another dataset, another item count or other item ids,
            or one that reads shorter histories than the policy's requests.
    """
    saved = checkpoint_config(path, "reward_checkpoint")
    if saved.get("model") != REWARD_MODEL or saved.get("dataset") != config["dataset"]:
        raise ConfigError(
            f"reward_checkpoint {path} is a {saved.get('model')} on {saved.get('dataset')}, "
            f"not a {REWARD_MODEL} on {config['dataset']}"
        )
    data_path = os.path.dirname(os.path.normpath(config["data_path"]))  # the folder holding <dataset>/
    reward_config, reward_model, reward_dataset, *_ = load_data_and_model(path, data_path)
    init_seed(config["seed"], config["reproducibility"])  # loading re-seeds with the reward run's seed: undo that
    tokens = reward_dataset.field2id_token[reward_dataset.iid_field]
    own_tokens = dataset.field2id_token[dataset.iid_field]
    if len(tokens) != len(own_tokens):
        raise ConfigError(
            f"reward_checkpoint {path} knows {len(tokens) - 1} items, the policy's data {len(own_tokens) - 1}"
        )
    if not np.array_equal(tokens, own_tokens):
        raise ConfigError(f"reward_checkpoint {path} numbers the items otherwise (other data filtering?)")
    if reward_config["MAX_ITEM_LIST_LENGTH"] < config["MAX_ITEM_LIST_LENGTH"]:
        raise ConfigError(
            f"reward_checkpoint {path} reads histories of {reward_config['MAX_ITEM_LIST_LENGTH']} items, "
            f"shorter than the policy's {config['MAX_ITEM_LIST_LENGTH']}"
        )
    return frozen(reward_model.to(config["device"]))


class AlignmentTrainer(Trainer):
    """This package's trainer for ``stage: align`` (module docstring).

    Epoch ``e`` belongs to iteration ``e // align_epochs``; the first epoch of each later iteration freezes a copy
    of the policy as it is then as the new reference (for HEPO and ECPO also the behaviour policy that draws the
    candidates and whose log-probabilities are PPO's "old" ones). The resume snapshot also holds the reference and the
    iteration, so a killed stage continues as the uninterrupted one would.

    Constructor Args:
        config: the stage's config; model: the policy, built in ``from_checkpoint``'s shape (its weights are
        loaded here); dataset: the policy's data (its item ids are checked against the reward model's).
    """

    def __init__(self, config, model, dataset):
        if not config["single_spec"]:
            raise ConfigError("stage: align runs in one process: leave nproc and torchrun out")
        self.method = alignment_method(config, dataset)
        self.method.check(model)
        start_from_checkpoint(model, config["from_checkpoint"])
        if not config["reward_checkpoint"]:
            raise ConfigError("stage: align needs reward_checkpoint, a RewardModel trained on the same dataset")
        super().__init__(config, model)
        self.reference = frozen(copy.deepcopy(model))
        self.reward_model = load_reward_model(config["reward_checkpoint"], config, dataset)
        self.align_weight = config["align_weight"]
        self.align_share = config["align_share"]
        self.align_epochs = config["align_epochs"]
        self.align_iterations = config["align_iterations"]
        self.reward_topk = config["align_reward_topk"]
        self.iteration = 0
        self.stats = self.method.new_stats()

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if epoch_idx == 0 and self.method.warmup_batches:  # a resumed stage continues after its first epoch
            self.warm_up(train_data)
        iteration = epoch_idx // self.align_epochs
        if iteration != self.iteration:
            self.begin_iteration(iteration)
        self.stats = self.method.new_stats()
        losses = super()._train_epoch(train_data, epoch_idx, loss_func=self.aligned_loss, show_progress=show_progress)
        self.logger.info(
            f"alignment epoch {epoch_idx} (iteration {iteration + 1} of {self.align_iterations}, "
            f"{self.method.name}): {self.stats.describe()}"
        )
        return losses

    def warm_up(self, train_data) -> None:
        """Fit the method's warm-up parameters alone (HEPO: the critic) on the sampled requests of
        ``warmup_batches`` training batches, with their own Adam, and log the warm-up loss's first and last mean."""
        method, losses = self.method, []
        optimizer = torch.optim.Adam(method.warm_up_parameters(self.model), lr=method.warmup_learning_rate)
        while len(losses) < method.warmup_batches:
            for interaction in train_data:
                requests = interaction.to(self.device)[self.sampled_requests(len(interaction))]
                loss = method.warm_up_loss(self.model, self.reference, self.reward_model, requests)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if len(losses) == method.warmup_batches:
                    break
        window = max(1, len(losses) // 10)
        self.logger.info(
            f"{method.name} warm-up: {len(losses)} batches, loss {np.mean(losses[:window]):.4g} (first {window}) -> "
            f"{np.mean(losses[-window:]):.4g} (last {window})"
        )

    def begin_iteration(self, iteration: int) -> None:
        """Start iteration ``iteration`` (0-based) of IPA, HEPO or ECPO: the policy as it is now, frozen, becomes the
        reference (the DPO pairs' reference, the policy-gradient methods' behaviour policy)."""
        self.reference.load_state_dict(self.model.state_dict())
        self.iteration = iteration
        self.logger.info(
            f"alignment iteration {iteration + 1}: the reference is now the policy of iteration {iteration}"
        )

    def sampled_requests(self, batch_size: int) -> Tensor:
        """``align_share`` of a batch's rows (rounded up: at least one), drawn without replacement."""
        count = math.ceil(self.align_share * batch_size)
        return torch.randperm(batch_size, device=self.device)[:count]

    def aligned_loss(self, interaction) -> tuple[Tensor, ...]:
        """The policy's next-token loss (its parts) and ``align_weight`` x the method's loss on the sampled
        requests, each request's whole history (the row as the loader gives it)."""
        parts = self.method.next_token_loss(self.model, interaction)
        requests = interaction[self.sampled_requests(len(interaction))]
        batch = self.method.loss(self.model, self.reference, self.reward_model, requests)
        self.stats.add(batch)
        return (*parts, self.align_weight * batch.loss)

    def snapshot_state(self) -> dict[str, Any]:
        return {"reference_state_dict": self.reference.state_dict(), "iteration": self.iteration}

    def load_snapshot_state(self, snapshot: dict[str, Any]) -> None:
        self.reference.load_state_dict(snapshot["reference_state_dict"])
        self.iteration = int(snapshot["iteration"])

    def evaluate_reward(self, eval_data) -> dict[str, float]:
        """``{"reward@K": ...}``: :func:`generated_reward` of the model as it is now on ``eval_data``."""
        return {
            f"reward@{self.reward_topk}": generated_reward(self.model, self.reward_model, eval_data, self.reward_topk)
        }
