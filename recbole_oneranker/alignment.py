"""The preference-alignment stage (``stage: align``): a trained GPR or OneRec fine-tuned toward what a RewardModel
prefers among the model's own generations (GPR's DPO stage, OneRec's Iterative Preference Alignment).

    run_recbole --model=GPR --stage=align --from_checkpoint=saved/GPR-X.pth --reward_checkpoint=saved/R.pth
    run_recbole --model=OneRec --stage=align --from_checkpoint=saved/OneRec-X.pth --reward_checkpoint=saved/R.pth \\
        --align_iterations=2

The policy starts from ``from_checkpoint`` (whose run's settings are the stage's defaults: ``Config``); a frozen copy
of it is the reference, and a frozen RewardModel trained on the same dataset scores candidates. Per training batch
the loss is the policy's next-token loss plus ``align_weight`` x the mean loss of an :class:`AlignmentMethod` (the
registry :data:`ALIGNMENT_METHODS`, keyed by ``align_method``; a policy-gradient method plugs in there). Early
stopping and the best checkpoint follow the usual validation metric on real held-out interactions; the run also
reports ``reward@K``, the reward model's estimate of the policy's generated top-K on the test requests
(``docs/alignment.md``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from recbole.utils import init_seed
from torch import Tensor, nn

from recbole_oneranker import compat
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.config import checkpoint_config
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import dpo_loss, implicit_reward_margins, preference_pairs
from recbole_oneranker.trainer import Trainer

REWARD_MODEL = "RewardModel"
PAIR_MEANS = ("dpo loss", "chosen reward", "rejected reward", "reward margin", "implicit-reward accuracy")


@dataclass
class PreferenceBatch:
    """What an alignment method made of one batch's sampled requests.

    Attributes:
        loss: the mean alignment loss over the pairs (a 0 tensor without any pair).
        pairs: how many requests had a pair; the sums below run over them.
        loss_sum: the sum of the pairs' losses.
        chosen_reward, rejected_reward: the sums of the chosen and the rejected candidates' rewards.
        correct: the pairs whose chosen candidate has the larger implicit reward (DPO's accuracy).
    """

    loss: Tensor
    pairs: int = 0
    loss_sum: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    correct: int = 0


@dataclass
class PreferenceStats:
    """An epoch's :class:`PreferenceBatch` totals, and their means for the progress line."""

    pairs: int = 0
    loss_sum: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    correct: int = 0

    def add(self, batch: PreferenceBatch) -> None:
        self.pairs += batch.pairs
        self.loss_sum += batch.loss_sum
        self.chosen_reward += batch.chosen_reward
        self.rejected_reward += batch.rejected_reward
        self.correct += batch.correct

    def means(self) -> dict[str, float]:
        """Mean DPO loss, mean reward of the chosen and rejected candidates, their margin and the implicit-reward
        accuracy over the epoch's pairs (NaN without a pair), and the pair count."""
        if not self.pairs:
            return {name: math.nan for name in PAIR_MEANS} | {"pairs": 0.0}
        chosen, rejected = self.chosen_reward / self.pairs, self.rejected_reward / self.pairs
        means = (self.loss_sum / self.pairs, chosen, rejected, chosen - rejected, self.correct / self.pairs)
        return dict(zip(PAIR_MEANS, means, strict=True)) | {"pairs": float(self.pairs)}

    def describe(self) -> str:
        means = self.means()
        pairs = int(means.pop("pairs"))
        return ", ".join(f"{name} {value:.4f}" for name, value in means.items()) + f", pairs {pairs}"


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

    Subclasses set ``name`` (the ``align_method`` value), ``model`` (the model class they align) and ``iterative``
    (whether ``align_iterations`` > 1 means something to them), and implement :meth:`loss`.
    """

    name: ClassVar[str]
    model: ClassVar[str]
    iterative: ClassVar[bool] = False

    def __init__(self, config) -> None:
        self.beta = config["align_beta"]
        self.beam = config["align_beam"]
        if config["align_iterations"] > 1 and not self.iterative:
            raise ConfigError(f"align_method {self.name} has no iterations: leave align_iterations at 1")

    def check(self, policy: nn.Module) -> None:
        """Raise :class:`ConfigError` for a policy configuration the method does not support."""

    def loss(self, policy, reference, reward_model, interaction) -> PreferenceBatch:
        """The alignment loss of the requests of ``interaction`` (differentiable in ``policy`` only)."""
        raise NotImplementedError


class BeamPreference(AlignmentMethod):
    """DPO on the best and the worst of the policy's beam by reward (OneRec's IPA step, GPR's DPO stage).

    Candidates are slates ``[B, N, m]`` of item ids (``m = 1`` for an item): a slate's reward is the mean reward of
    its items. Dropout is off for the policy's log-probabilities in the DPO term (as TRL's DPO trainer does), so
    the policy and the reference differ only by their weights.
    """

    def candidates(self, policy, interaction) -> tuple[Tensor, Tensor]:
        """``(slates [B, N, m], valid [B, N])``: the policy's ``align_beam`` candidates of each request."""
        raise NotImplementedError

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        """``[B, C]`` the log-probability of each slate of ``slates`` (``[B, C, m]``) under ``model``."""
        raise NotImplementedError

    def loss(self, policy, reference, reward_model, interaction) -> PreferenceBatch:
        with torch.no_grad(), evaluation_mode(policy):
            slates, valid = self.candidates(policy, interaction)
            rewards = slate_rewards(reward_model, interaction, slates)  # [B, N]
        chosen, rejected, has_pair = preference_pairs(rewards, valid)
        rows = has_pair.nonzero().squeeze(1)
        if len(rows) == 0:
            return PreferenceBatch(loss=rewards.new_zeros(()))
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
        return PreferenceBatch(
            loss=losses.mean(),
            pairs=len(rows),
            loss_sum=float(losses.detach().sum()),
            chosen_reward=float(pair_rewards[:, 0].sum()),
            rejected_reward=float(pair_rewards[:, 1].sum()),
            correct=int((implicit_reward_margins(*log_probs, self.beta).detach() > 0).sum()),
        )


class DirectPreference(BeamPreference):
    """GPR's DPO stage: the candidates are the items of GPR's trie beam (``generate``), their log-probability the
    heads' mixture of :meth:`~recbole_oneranker.model.sequential_recommender.GPR.item_log_probs`."""

    name = "dpo"
    model = "GPR"

    def check(self, policy) -> None:
        if policy.repeat_explore is not None:
            raise ConfigError("align_method dpo scores the SID generator alone: align a GPR without repeat_explore")

    def candidates(self, policy, interaction) -> tuple[Tensor, Tensor]:
        items, _ = policy.generate(interaction, self.beam)  # [B, N], 0 where the catalogue has fewer
        return items.unsqueeze(-1), items > 0

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        return model.item_log_probs(interaction, slates[..., 0])


class IterativePreferenceAlignment(BeamPreference):
    """OneRec's IPA: the candidates are sessions of OneRec's session beam (``generate_sessions``), their
    log-probability the sum of their items' (:meth:`~recbole_oneranker.model.sequential_recommender.OneRec.
    last_session_log_probs`); each iteration's reference is the model the previous one ended with."""

    name = "ipa"
    model = "OneRec"
    iterative = True

    def check(self, policy) -> None:
        if policy.repeat_explore is not None:
            raise ConfigError(
                "align_method ipa: the session beam ignores the copy mixture; align without repeat_explore"
            )

    def candidates(self, policy, interaction) -> tuple[Tensor, Tensor]:
        sessions, scores = policy.generate_sessions(interaction, self.beam)  # [B, N, m], [B, N]
        return sessions, (sessions > 0).all(dim=-1) & torch.isfinite(scores)

    def log_probs(self, model, interaction, slates: Tensor) -> Tensor:
        return model.last_session_log_probs(interaction, slates)


# align_method -> its method; config_rules lists the same names for the align_method key.
ALIGNMENT_METHODS: dict[str, type[AlignmentMethod]] = {
    method.name: method for method in (DirectPreference, IterativePreferenceAlignment)
}


def alignment_method(config) -> AlignmentMethod:
    """The config's :class:`AlignmentMethod` (``align_method``, or the model's own when ~).

    Raises:
        ConfigError: a model no method aligns, or a method of another model.
    """
    name = config["align_method"]
    if name is None:
        own = [method.name for method in ALIGNMENT_METHODS.values() if method.model == config["model"]]
        if not own:
            models = ", ".join(sorted({method.model for method in ALIGNMENT_METHODS.values()}))
            raise ConfigError(f"stage: align aligns {models}, not {config['model']}")
        name = own[0]
    method = ALIGNMENT_METHODS[name]
    if method.model != config["model"]:
        raise ConfigError(f"align_method {name} aligns a {method.model}, not a {config['model']}")
    return method(config)


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


def start_from_checkpoint(model: nn.Module, path: str) -> None:
    """Load ``path``'s weights into ``model``, which must have exactly its shape.

    Raises:
        ConfigError: a parameter the checkpoint lacks, has in excess or holds in another shape.
    """
    checkpoint = compat.load_checkpoint(path, "cpu")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        reason = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ConfigError(f"from_checkpoint {path} does not fit this model: {reason}") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))


class AlignmentTrainer(Trainer):
    """This package's trainer for ``stage: align`` (module docstring).

    Epoch ``e`` belongs to iteration ``e // align_epochs``; the first epoch of each later iteration freezes a copy
    of the policy as it is then as the new reference. The resume snapshot also holds the reference and the
    iteration, so a killed stage continues as the uninterrupted one would.

    Constructor Args:
        config: the stage's config; model: the policy, built in ``from_checkpoint``'s shape (its weights are
        loaded here); dataset: the policy's data (its item ids are checked against the reward model's).
    """

    def __init__(self, config, model, dataset):
        if not config["single_spec"]:
            raise ConfigError("stage: align runs in one process: leave nproc and torchrun out")
        self.method = alignment_method(config)
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
        self.stats = PreferenceStats()

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        iteration = epoch_idx // self.align_epochs
        if iteration != self.iteration:
            self.begin_iteration(iteration)
        self.stats = PreferenceStats()
        losses = super()._train_epoch(train_data, epoch_idx, loss_func=self.aligned_loss, show_progress=show_progress)
        self.logger.info(
            f"alignment epoch {epoch_idx} (iteration {iteration + 1} of {self.align_iterations}, "
            f"{self.method.name}): {self.stats.describe()}"
        )
        return losses

    def begin_iteration(self, iteration: int) -> None:
        """Start IPA iteration ``iteration`` (0-based): the policy as it is now, frozen, becomes the reference."""
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
        parts = self.model.calculate_loss(interaction)
        parts = parts if isinstance(parts, tuple) else (parts,)
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
