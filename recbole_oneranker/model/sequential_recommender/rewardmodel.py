"""RewardModel
################################################

A target-aware reward model trained on the dataset's own feedback: for a user (a history) and a candidate item, the
probability of each cascade stage (click, conversion, ...) and the value of the interaction. The preference-alignment
stages of the generative models query it as a simulator: OneRec's Iterative Preference Alignment ranks beam
candidates by a reward model's multi-tower sigmoid heads, and GPR's HEPO needs a simulated return.

Reference:
    Jiaxin Deng et al. "OneRec: Unifying Retrieve and Rank with Generative Recommender and Iterative Preference
    Alignment." arXiv 2502.18965, 2025 (the reward model of its IPA: target-aware item representations, one sigmoid
    head per task, binary cross-entropy).
    Xiao Ma et al. "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate."
    in SIGIR 2018 (chained stage probabilities supervised on every candidate).

``docs/reward-model.md`` lists every choice made where the papers are silent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.abstract_recommender import GenerativeRecommender, item_feature_embedding
from recbole_oneranker.model.layers import (
    QueryDecoderConfig,
    RankingDecoder,
    RankingDecoderConfig,
    visible_states,
)
from recbole_oneranker.model.serving import ServingResult

__all__ = [
    "EncodedUsers",
    "RewardEstimate",
    "RewardModel",
    "TrainingCandidates",
    "cascade_log_probs",
    "history_levels",
    "training_labels",
]

IMPLICIT_STAGE = "interaction"
VALUE_FLOOR = 1e-6  # values are compared in log space; a value of 0 counts as this


def cascade_log_probs(stage_logits: Tensor) -> tuple[Tensor, Tensor]:
    """``log P(stage s reached)`` and ``log P(stage s not reached)``, ``[..., S]`` each, from one logit per stage.

    Stage ``s``'s head is the probability of reaching it given stage ``s - 1`` (ESMM's chain), so
    ``P(s) = prod_{t <= s} sigmoid(l_t)`` never rises along the cascade. Its complement is computed without
    cancellation: ``1 - P(s) = sum_{t <= s} P(t - 1) * (1 - sigmoid(l_t))``, a log-sum-exp of log-sigmoids.

    >>> log_p, log_not_p = cascade_log_probs(torch.tensor([0.0, 0.0]))
    >>> log_p.exp().tolist(), log_not_p.exp().tolist()
    ([0.5, 0.25], [0.5, 0.75])
    """
    log_reached = F.logsigmoid(stage_logits).cumsum(dim=-1)  # [..., S]
    before = F.pad(log_reached[..., :-1], (1, 0))  # log P(t - 1), with P(0) = 1
    log_not_reached = torch.logcumsumexp(before + F.logsigmoid(-stage_logits), dim=-1)
    return log_reached, log_not_reached


def training_labels(targets: Tensor, negatives: Tensor, stage_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The candidates of the reward loss at each training position and their labels.

    Args:
        targets: ``[...]`` the next item after each position (0 = none: a padding position).
        negatives: ``[..., K]`` sampled items.
        stage_labels: ``[..., S]`` the cascade stages the target's interaction reached (0/1).

    Returns:
        ``candidates`` ``[..., 1 + K]`` (the target first), ``labels`` ``[..., 1 + K, S]`` (the target's stages, 0
        for every negative) and ``weights`` ``[..., 1 + K]``: 0 for a negative equal to the target (it would be
        labelled both ways) and for every candidate of a padding position, else 1.

    >>> targets, negatives, stages = torch.tensor([4]), torch.tensor([[4, 7]]), torch.tensor([[1.0, 0.0]])
    >>> candidates, labels, weights = training_labels(targets, negatives, stages)
    >>> candidates.tolist(), labels.tolist(), weights.tolist()
    ([[4, 4, 7]], [[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]], [[1.0, 0.0, 1.0]])
    """
    candidates = torch.cat([targets.unsqueeze(-1), negatives], dim=-1)
    labels = torch.zeros(*candidates.shape, stage_labels.shape[-1], device=stage_labels.device)
    labels[..., 0, :] = stage_labels.float()
    weights = torch.cat([torch.ones_like(targets.unsqueeze(-1)), negatives != targets.unsqueeze(-1)], dim=-1)
    weights = weights * (targets > 0).unsqueeze(-1)
    return candidates, labels, weights.float()


def history_levels(candidates: Tensor, positions: Tensor, items: Tensor, levels: Tensor) -> Tensor:
    """``[B, R, C]`` how far along the cascade each user went with each candidate before: the highest feedback level
    (1 + stages reached) among the history positions up to the scoring position that hold the candidate, 0 for a
    candidate not among them.

    Args:
        candidates: ``[B, R, C]`` item ids scored at ``positions`` (``[B, R]``).
        items: ``[B, N]`` the history's item ids (0-padded); levels: ``[B, N]`` their feedback levels (0 = padding).

    >>> history_levels(torch.tensor([[[5, 6, 7], [5, 6, 7]]]), torch.tensor([[0, 2]]),
    ...                torch.tensor([[5, 7, 5]]), torch.tensor([[1, 2, 3]])).tolist()
    [[[1, 0, 0], [3, 0, 2]]]
    """
    visible = torch.arange(items.shape[1], device=items.device) <= positions.unsqueeze(-1)  # [B, R, N]
    match = (candidates.unsqueeze(-1) == items[:, None, None, :]) & visible.unsqueeze(2)  # [B, R, C, N]
    return torch.where(match, levels[:, None, None, :], 0).amax(dim=-1)


def training_item_counts(dataset, item_seq: str, item_id: str) -> Tensor:
    """``[n_items]`` each item's training interactions (its occurrences in the training rows' histories and targets;
    whole-sequence windows do not overlap), at least 1 for every real item, 0 for the padding item."""
    histories, targets = dataset.inter_feat[item_seq], dataset.inter_feat[item_id]
    items = torch.cat([histories[histories > 0], targets[targets > 0]])
    counts = torch.bincount(items, minlength=dataset.item_num).float().clamp(min=1.0)
    counts[0] = 0.0
    return counts


@dataclass(frozen=True)
class EncodedUsers:
    """What ``B`` users' candidates are scored from: one pass of the history encoder.

    Attributes:
        states: ``[B, N, D]`` the states after each history position.
        lengths: ``[B]`` the histories' lengths.
        items: ``[B, N]`` the history's item ids (0-padded).
        levels: ``[B, N]`` their feedback levels (1 + stages reached; 0 = padding).
    """

    states: Tensor
    lengths: Tensor
    items: Tensor
    levels: Tensor

    def rows(self, index: Tensor) -> EncodedUsers:
        """The users at ``index`` (``[B']``), e.g. one per scored row of a batch of requests."""
        return EncodedUsers(self.states[index], self.lengths[index], self.items[index], self.levels[index])


@dataclass(frozen=True)
class RewardEstimate:
    """What the reward model says of ``C`` candidate items for each of ``B`` users.

    Attributes:
        stage_probs: ``[B, C, S]`` the probability that the interaction reaches each cascade stage (in
            ``RewardModel.stages`` order; non-increasing along it). Without a cascade, ``S = 1``: the probability of
            an interaction.
        value: ``[B, C]`` the predicted value of the interaction, in the units of the dataset's ``value_field``
            (the value given that the interaction happens); None for data without a value.
        reward: ``[B, C]`` the scalar reward, an expected value: ``stage_probs[..., -1] * value`` (the probability
            of the last stage times the value), or ``stage_probs[..., -1]`` without a value.
    """

    stage_probs: Tensor
    value: Tensor | None
    reward: Tensor


@dataclass
class TrainingCandidates:
    """The reward loss's candidates at the ``R`` training positions of each of ``B`` rows.

    Attributes:
        positions: ``[B, R]`` history positions (the candidates are scored from the state after each).
        candidates: ``[B, R, 1 + K]`` the next item, then ``K`` uniformly sampled items.
        labels: ``[B, R, 1 + K, S]`` the stages the next item's interaction reached; 0 for the sampled items.
        weights: ``[B, R, 1 + K]`` 1, or 0 for a sampled item equal to the next one and for padding positions.
        values: ``[B, R]`` the next interaction's value (0 at padding positions), or None without a value field.
    """

    positions: Tensor
    candidates: Tensor
    labels: Tensor
    weights: Tensor
    values: Tensor | None


class RewardModel(GenerativeRecommender):
    r"""A reward model: per-stage probabilities and a value for (user, candidate item) pairs.

    - **History**: a :class:`~recbole_oneranker.model.layers.SequenceEncoder` (HSTU stack) over the history; each
      token is the item plus its feedback level (how far along the cascade the interaction went), as OneRanker's
      step 1 reads it.
    - **Candidates**: a :class:`~recbole_oneranker.model.layers.RankingDecoder` whose candidate tokens (the item
      embedding, shared with the history, plus with ``candidate_history`` an embedding of how far along the cascade
      the user already went with that item: :func:`history_levels`) cross-attend to the history states up to the
      scoring position; candidates
      never attend to each other, so an item's reward does not depend on the set it is scored in, and scoring the
      catalogue in chunks is exact. One sigmoid head per cascade stage (conditional on the stage before, chained as
      ESMM does: :func:`cascade_log_probs`) and a value head when the data has a ``value_field``.
    - **Training** (one row per user, ``whole_sequence``): at every history position (``reward_positions: 0``; or at
      that many positions per row, the last always among them), the candidates are the next item, labelled with the
      stages its interaction reached, and ``reward_negatives`` uniformly drawn items, labelled 0 (a draw equal to
      the next item is left out). Loss: the binary cross-entropy of each stage's probability over all candidates
      (mean over candidates and stages) plus ``value_loss_weight`` x the squared error of the predicted log value
      on the next items (data with a value field).

    Every position by default: the encoder's pass already covers every position, so labelling all of them costs
    only the decoder's share, and each epoch then learns from every interaction's labels once (a reward model is
    as good as the labelled pairs it sees; sampling positions would leave most of them out of each epoch).

    Public API: :meth:`reward` (a batch of users' rewards of given items), :meth:`encode_users` and
    :meth:`reward_of_users` (the same, the users encoded once for many item sets), ``predict`` /
    ``full_sort_predict`` (RecBole's evaluator ranks items by the reward; the catalogue is scored in chunks of
    ``score_chunk_size`` user-item pairs).

    NOTE: probabilities are those of the training mix, one next item among ``reward_negatives`` uniform draws: the
    first stage's rate is set by that ratio, not by any rate of the real world (docs/reward-model.md).
    """

    TRAINS_ITEM_SOFTMAX = False  # it scores candidates; repeat_bias shifts a next-item softmax it does not train

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.stages = list(self.cascade_fields) or [IMPLICIT_STAGE]
        self.reward_negatives = config["reward_negatives"]
        self.reward_positions = config["reward_positions"]
        self.value_loss_weight = config["value_loss_weight"]
        self.score_chunk_size = config["score_chunk_size"]
        self.candidate_history = config["candidate_history"]
        self.negative_sampling = config["reward_negative_sampling"]
        if self.repeat_shift is not None:
            raise ConfigError("repeat_bias is a shift of the next-item softmax, which RewardModel does not train")

        # define layers
        d = self.hidden_size
        self.encoder = self.item_sequence_encoder(config, dataset)
        self.level_embedding = nn.Embedding(len(self.cascade_fields) + 2, d, padding_idx=0)  # 0 = padding
        self.decoder = RankingDecoder(
            RankingDecoderConfig(
                QueryDecoderConfig(
                    hidden_size=d,
                    num_heads=config["decoder_heads"],
                    num_layers=config["rank_decoder_layers"],
                    dropout=self.dropout_prob,
                ),
                num_stages=len(self.stages),
                predicts_value=bool(self.value_field),
            )
        )
        features = item_feature_embedding(config, dataset) if config["candidate_item_features"] else None
        self.candidate_features = features
        # How far along the cascade the user already went with a candidate (0 = never: the zero vector)
        levels = len(self.cascade_fields) + 2
        self.seen_embedding = nn.Embedding(levels, d, padding_idx=0) if self.candidate_history else None

        # How often each item is a training interaction: the weights of popularity-sampled negatives
        if self.negative_sampling == "popularity":
            self.register_buffer("item_counts", training_item_counts(dataset, self.ITEM_SEQ, self.ITEM_ID), False)

        # parameters initialization (the encoder and the decoder initialised their own)
        nn.init.normal_(self.level_embedding.weight, std=0.02)
        if self.seen_embedding is not None:
            nn.init.normal_(self.seen_embedding.weight, std=0.02)
            self.seen_embedding.weight.data[0] = 0.0

    # -- the history ------------------------------------------------------------------------------------------

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        return self.encoder.item_vectors(item_ids)

    def encode(self, interaction) -> Tensor:
        """``[B, N, D]`` the states after each history position (items + feedback levels + side features)."""
        seq_len = int(interaction[self.ITEM_SEQ_LEN].max())
        item_seq = interaction[self.ITEM_SEQ][:, :seq_len]
        token_features = self.level_embedding(self.feedback_levels(interaction, seq_len))
        token_features = self.with_history_features(token_features, item_seq, math.sqrt(self.hidden_size))
        timestamps = self.request_timestamps(interaction, seq_len)
        return self.encoder(item_seq, interaction[self.ITEM_SEQ_LEN], timestamps, token_features)

    # -- scoring ----------------------------------------------------------------------------------------------

    def encode_users(self, interaction) -> EncodedUsers:
        """The batch's users (``B`` requests as RecBole's loaders give them), encoded by length bucket."""
        states = self.encode_by_length(interaction)
        seq_len = states.shape[1]
        items = interaction[self.ITEM_SEQ][:, :seq_len]
        return EncodedUsers(states, interaction[self.ITEM_SEQ_LEN], items, self.feedback_levels(interaction, seq_len))

    def score_candidates(self, users: EncodedUsers, positions: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """The heads' outputs for ``candidates`` (``[B, R, C]`` item ids) scored from the users' states up to
        ``positions`` (``[B, R]``).

        Returns:
            ``stage_logits`` ``[B, R, C, S]`` (stage ``s`` given stage ``s - 1``) and ``log_value`` ``[B, R, C]``
            (0 without a value head).
        """
        embedded = self.encoder.item_embedding(candidates)  # [B, R, C, D]
        if self.candidate_features is not None:
            embedded = embedded + self.candidate_features(candidates)
        if self.seen_embedding is not None:
            embedded = embedded + self.seen_embedding(history_levels(candidates, positions, users.items, users.levels))
        visible = visible_states(users.states.shape[1], positions, users.lengths)  # [B, R, N]
        return self.decoder(embedded * math.sqrt(self.hidden_size), users.states, visible)

    def estimate(self, stage_logits: Tensor, log_value: Tensor) -> RewardEstimate:
        """The :class:`RewardEstimate` of heads' outputs (``[..., C, S]`` and ``[..., C]``)."""
        stage_probs = cascade_log_probs(stage_logits)[0].exp()
        if self.decoder.value_head is None:
            return RewardEstimate(stage_probs=stage_probs, value=None, reward=stage_probs[..., -1])
        value = log_value.exp()
        return RewardEstimate(stage_probs=stage_probs, value=value, reward=stage_probs[..., -1] * value)

    def reward(self, interaction, items: Tensor) -> RewardEstimate:
        """The reward of ``items`` (``[B, C]`` item ids) for the batch's users at their last history position.

        Args:
            interaction: ``B`` requests as RecBole's loaders give them: the histories (``item_id_list``, their
                feedback and times), ``item_length`` and, for a model that reads time, the request's time (the
                ``timestamp`` column).
            items: ``[B, C]`` candidate item ids of each user (any count; scored ``score_chunk_size`` user-item pairs
                at a time, which changes no result).

        Returns:
            a :class:`RewardEstimate`: ``stage_probs`` ``[B, C, S]``, ``value`` ``[B, C]`` (or None), ``reward``
            ``[B, C]``.
        """
        return self.reward_of_users(self.encode_users(interaction), items)

    def reward_of_users(self, users: EncodedUsers, items: Tensor) -> RewardEstimate:
        """:meth:`reward` of users already encoded (:meth:`encode_users`): a caller that scores many item sets for
        the same users encodes them once."""
        chunks = list(self._estimates_by_chunk(users, items))
        value = None if chunks[0].value is None else torch.cat([chunk.value for chunk in chunks], dim=1)
        return RewardEstimate(
            stage_probs=torch.cat([chunk.stage_probs for chunk in chunks], dim=1),
            value=value,
            reward=torch.cat([chunk.reward for chunk in chunks], dim=1),
        )

    def _estimates_by_chunk(self, users: EncodedUsers, items: Tensor) -> Iterator[RewardEstimate]:
        """Estimates of ``items`` (``[B, C]``) chunk by chunk of at most ``score_chunk_size`` user-item pairs (at
        least one item per chunk), at each row's last position."""
        width = max(1, self.score_chunk_size // max(len(items), 1))
        positions = (users.lengths - 1).unsqueeze(1)  # [B, 1]
        for start in range(0, items.shape[1], width):
            chunk = items[:, start : start + width].unsqueeze(1)  # [B, 1, c]
            stage_logits, log_value = self.score_candidates(users, positions, chunk)
            yield self.estimate(stage_logits.squeeze(1), log_value.squeeze(1))

    def serve(self, interaction) -> ServingResult:
        """Every item ranked by the log of its reward (the reward's order, without float32 underflow ties); the
        catalogue scored in chunks of ``score_chunk_size`` user-item pairs."""
        users = self.encode_users(interaction)
        catalogue = torch.arange(self.n_items, device=users.states.device).expand(len(users.states), -1)
        scores = torch.cat([self._log_reward(chunk) for chunk in self._estimates_by_chunk(users, catalogue)], 1)
        return ServingResult(retrieval_scores=scores, final_scores=scores)

    @staticmethod
    def _log_reward(estimate: RewardEstimate) -> Tensor:
        return torch.log(estimate.reward.clamp(min=torch.finfo(estimate.reward.dtype).tiny))

    def predict(self, interaction):
        """``[B]`` the log reward of each row's item, each distinct request encoded once."""
        requests, request_of_row = self.distinct_requests(interaction)
        users = self.encode_users(requests).rows(request_of_row)
        estimate = self.reward_of_users(users, interaction[self.ITEM_ID][:, None])
        return self._log_reward(estimate).squeeze(1)

    # -- training ---------------------------------------------------------------------------------------------

    def sample_negatives(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """``shape`` items drawn from the catalogue (the padding item excluded): uniformly, or in proportion to how
        often each is a training interaction (``reward_negative_sampling``)."""
        if self.negative_sampling == "uniform":
            return torch.randint(1, self.n_items, shape, device=device)
        draws = torch.multinomial(self.item_counts, math.prod(shape), replacement=True)
        return draws.view(shape).to(device)

    def training_candidates(self, interaction, seq_len: int) -> TrainingCandidates:
        """The loss's candidates and labels at the training positions of a batch padded to ``seq_len``."""
        seq_lens = interaction[self.ITEM_SEQ_LEN]
        if self.reward_positions:
            positions = self.sample_positions(seq_lens, self.reward_positions)  # [B, R]
        else:
            positions = torch.arange(seq_len, device=seq_lens.device).expand(len(seq_lens), -1)  # [B, N]
        targets = self.next_items(interaction, seq_len).gather(1, positions)  # [B, R]
        stages = self.stage_labels(interaction, seq_len)  # [B, N, S]
        stages = stages.gather(1, positions.unsqueeze(-1).expand(-1, -1, stages.shape[-1]))
        negatives = self.sample_negatives((*positions.shape, self.reward_negatives), positions.device)
        candidates, labels, weights = training_labels(targets, negatives, stages)
        values = None
        if self.value_field:
            values = self.next_field(interaction, self.value_field, seq_len).float().gather(1, positions)
        return TrainingCandidates(positions, candidates, labels, weights, values)

    def calculate_loss(self, interaction):
        """The stage loss, and with a value field the weighted value loss (RecBole's trainer sums the parts)."""
        bce_sum = value_sum = self.level_embedding.weight.new_zeros(())
        bce_count = value_count = 0.0
        for rows in self.length_buckets(interaction[self.ITEM_SEQ_LEN]):
            bucket = interaction[rows]
            states = self.encode(bucket)  # [b, n, D]
            seq_len = states.shape[1]
            users = EncodedUsers(
                states,
                bucket[self.ITEM_SEQ_LEN],
                bucket[self.ITEM_SEQ][:, :seq_len],
                self.feedback_levels(bucket, seq_len),
            )
            sets = self.training_candidates(bucket, seq_len)
            stage_logits, log_value = self.score_candidates(users, sets.positions, sets.candidates)
            log_reached, log_not_reached = cascade_log_probs(stage_logits)  # [b, R, 1 + K, S]
            bce = -(sets.labels * log_reached + (1 - sets.labels) * log_not_reached).mean(-1)  # [b, R, 1 + K]
            bce_sum = bce_sum + (bce * sets.weights).sum()
            bce_count += float(sets.weights.sum())
            if sets.values is not None:
                real = sets.candidates[..., 0] > 0  # [b, R]
                error = log_value[..., 0] - torch.log(sets.values.clamp(min=VALUE_FLOOR))
                value_sum = value_sum + error[real].pow(2).sum()
                value_count += float(real.sum())
        stage_loss = bce_sum / max(bce_count, 1.0)
        if not self.value_field:
            return stage_loss
        return stage_loss, self.value_loss_weight * value_sum / max(value_count, 1.0)
