"""HSTU
################################################

Reference:
    Jiaqi Zhai et al. "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for Generative
    Recommendations." in ICML 2024.

Reference code:
    https://github.com/facebookresearch/generative-recommenders (research/modeling/sequential/hstu.py)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import Tensor, nn

from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import HSTUConfig, HSTUStack, lookup

_LOSS_TYPES = ("sampled_softmax", "full_softmax")


class HSTU(SequentialRecommender):
    r"""HSTU: a stack of hierarchical sequential transduction units over the item history, trained to predict the
    next item at every position.

    Inputs are ``item_emb * sqrt(D)`` plus learned absolute positions (dropout, padding zeroed); the HSTU stack
    (:class:`~recbole_oneranker.model.layers.HSTUStack`) applies pointwise SiLU attention with a relative
    position + log-bucketed time bias; outputs and item embeddings are L2-normalised and compared by dot product.

    Training uses the whole-sequence mode (``whole_sequence: True``): one row per user (per window of
    ``MAX_ITEM_LIST_LENGTH`` for longer histories, ``whole_sequence_windows``), a loss at every position,
    sampled softmax with uniform negatives (a negative equal to the positive is masked) or full softmax.

    NOTE (differences from the reference code):
        - The attention scale ``1/N`` uses the configured maximum length (history + the request slot), which is
          what the reference's always-padded ``N`` equals; batches here are padded only to their longest sequence
          (bucketed by length), which the constant keeps from changing any output.
        - RecBole holds out two items per user (valid + test) where the reference holds out one, and evaluation
          may keep seen items (RecBole) or mask them (``mask_seen_items: True``, the reference's protocol).
        - The time bias of the last history position uses the target interaction's timestamp as the request time,
          as the reference does with the next event's time.
    """

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.dropout_prob = config["dropout_prob"]
        self.loss_type = config["loss_type"]
        self.num_negatives = config["num_negatives"]
        self.history_negatives = config["history_negatives"]
        self.temperature = config["temperature"]
        self.length_bucket_size = config["length_bucket_size"]
        self.length_buckets_on_gpu = config["length_buckets_on_gpu"]
        self.use_time = config["relative_bias"] == "time_and_position"
        # What sampled evaluation changes between the copies of a request: the scored item and its 0/1 label.
        self._candidate_fields = frozenset({self.ITEM_ID, config["LABEL_FIELD"]})
        self.LIST_SUFFIX = config["LIST_SUFFIX"]
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.TIME = config["TIME_FIELD"]
        if self.loss_type not in _LOSS_TYPES:
            raise ConfigError(f"Make sure 'loss_type' in {list(_LOSS_TYPES)}, got {self.loss_type!r}")
        if config["repeat_bias"] and self.loss_type == "sampled_softmax" and not self.history_negatives:
            raise ConfigError(
                "repeat_bias learns from the seen items among the softmax's candidates: with sampled_softmax set "
                "history_negatives: True (or use full_softmax)"
            )

        # define layers and loss
        self.hstu_config = HSTUConfig(
            embedding_dim=self.hidden_size,
            linear_hidden_dim=config["linear_hidden_dim"],
            attention_dim=config["attention_dim"],
            num_heads=config["n_heads"],
            num_blocks=config["n_layers"],
            # prefix tokens + history + the slot that carries the request time
            max_seq_len=self.num_prefix_tokens(config) + self.max_seq_length + 1,
            dropout=self.dropout_prob,
            attn_dropout=config["attn_dropout_prob"],
            num_buckets=config["num_time_buckets"],
            relative_bias=config["relative_bias"],
        )
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = (
            nn.Embedding(self.hstu_config.max_seq_len, self.hidden_size) if config["use_position_embedding"] else None
        )
        self.input_dropout = nn.Dropout(self.dropout_prob)
        self.stack = HSTUStack(self.hstu_config)
        # A learned shift of the cosine of every item the user has already interacted with (repeat_bias): negative
        # where users rarely repeat, positive where they often do; from 0, the reference model's scores.
        self.repeat_shift = nn.Parameter(torch.zeros(())) if config["repeat_bias"] else None

        # parameters initialization (as the reference: truncated normal items, 1/sqrt(D) positions)
        nn.init.trunc_normal_(self.item_embedding.weight, std=0.02)
        if self.position_embedding is not None:
            nn.init.trunc_normal_(self.position_embedding.weight, std=math.sqrt(1.0 / self.hidden_size))

    @classmethod
    def num_prefix_tokens(cls, config) -> int:
        """Tokens a subclass puts before the history (e.g. user features); sizes the position tables."""
        return 0

    # -- encoder ----------------------------------------------------------------------------------------------

    def forward(
        self,
        item_seq: Tensor,
        item_seq_len: Tensor,
        timestamps: Tensor | None = None,
        token_features: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """Encode right-padded histories: the HSTU stack's state after each position.

        Args:
            item_seq: ``[B, N]`` item ids, right-padded with 0 (N may be shorter than MAX_ITEM_LIST_LENGTH).
            item_seq_len: ``[B]`` number of real items per row.
            timestamps: ``[B, N + 1]`` event times (``timestamps[b, len_b]`` = the request time) or None.
            token_features: ``[B, N, D]`` added to each token's input embedding (e.g. feedback levels), or None.
            prefix: ``[B, P, D]`` embedded tokens read before the history (e.g. user features), or None; they
                carry the time of the first event.

        Returns:
            ``[B, N, D]`` states of the history positions, not normalised (0 past each length);
            :meth:`user_vectors` normalises them.
        """
        x = self.item_embedding(item_seq) * math.sqrt(self.hidden_size)  # [B, N, D]
        if token_features is not None:
            x = x + token_features
        num_prefix = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # [B, P + N, D]
            if timestamps is not None:
                timestamps = torch.cat([timestamps[:, :1].expand(-1, num_prefix), timestamps], dim=1)
        if self.position_embedding is not None:
            x = x + self.position_embedding.weight[: x.shape[1]].unsqueeze(0)
        x = self.input_dropout(x)
        # One extra slot so the last real position can read the request time from timestamps[:, len].
        x = F.pad(x, (0, 0, 0, 1))  # [B, P + N + 1, D]
        out = self.stack(x, item_seq_len + num_prefix, timestamps.long() if timestamps is not None else None)
        return out[:, num_prefix : num_prefix + item_seq.shape[1]]

    @staticmethod
    def user_vectors(states: Tensor) -> Tensor:
        """L2-normalised states, compared with :meth:`item_vectors` by dot product."""
        return F.normalize(states, dim=-1)

    def _request_timestamps(self, interaction, seq_len: int) -> Tensor | None:
        """``[B, N + 1]``: the history's times, with the target's time (the request) at each row's length."""
        if not self.use_time:
            return None
        history = interaction[self.TIME_SEQ][:, :seq_len]
        timestamps = F.pad(history, (0, 1))
        rows = torch.arange(len(history), device=history.device)
        timestamps[rows, interaction[self.ITEM_SEQ_LEN]] = interaction[self.TIME].to(timestamps.dtype)
        return timestamps

    def encode(self, interaction) -> Tensor:
        """``[B, N, D]`` states of a batch, padded only to its longest history (N)."""
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_len = int(item_seq_len.max())
        return self.forward(
            interaction[self.ITEM_SEQ][:, :seq_len], item_seq_len, self._request_timestamps(interaction, seq_len)
        )

    def encode_by_length(self, interaction) -> Tensor:
        """``[B, N, D]``: :meth:`encode`'s states, computed by length bucket so that short histories are not padded
        to the batch's longest (padding never changes a real position's state). Evaluation batches are thousands
        of users; on Beauty, whose histories fill 9 of 50 slots on average, this cuts the encoding several-fold."""
        buckets = self._length_buckets(interaction[self.ITEM_SEQ_LEN])
        return self._in_row_order([self.encode(interaction[rows]) for rows in buckets], buckets)

    @staticmethod
    def _in_row_order(bucket_states: list[Tensor], buckets: list[Tensor]) -> Tensor:
        """``[B, N, D]``: the states of each bucket (rows ``buckets[i]``, ``[b_i, n_i, D]``), padded to the longest
        ``n_i`` and put back in the batch's row order."""
        longest = max(states.shape[1] for states in bucket_states)
        states = torch.cat([F.pad(states, (0, 0, 0, longest - states.shape[1])) for states in bucket_states])
        return states[torch.argsort(torch.cat(buckets))]

    def encode_last(self, interaction) -> Tensor:
        """``[B, D]``: the L2-normalised state after each row's last history item."""
        states = self.encode_by_length(interaction)
        return self.user_vectors(self.gather_indexes(states, interaction[self.ITEM_SEQ_LEN] - 1))

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        """L2-normalised item embeddings: ``[n_items, D]``, or ``[*item_ids.shape, D]``.

        The table is normalised first and then indexed: the same vectors as normalising the looked-up rows, at the
        cost of the table instead of the (much larger) positions x negatives lookup, whose gradient
        :func:`~recbole_oneranker.model.layers.lookup` keeps the same on every run.
        """
        table = F.normalize(self.item_embedding.weight, dim=-1)
        return table if item_ids is None else lookup(table, item_ids)

    # -- training ---------------------------------------------------------------------------------------------

    def _next(self, interaction, field: str, seq_len: int) -> Tensor:
        """``[B, N]``: ``field`` of the interaction after each position (the next history entry, then the
        target's); 0 past each length. ``field`` is a target column, its history is ``<field>_list``."""
        history = interaction[field + self.LIST_SUFFIX][:, :seq_len]
        following = F.pad(history[:, 1:], (0, 1))
        rows = torch.arange(len(history), device=history.device)
        following[rows, interaction[self.ITEM_SEQ_LEN] - 1] = interaction[field].to(following.dtype)
        return following

    def _next_items(self, interaction, seq_len: int) -> Tensor:
        """``[B, N]`` the item to predict after each position: the next history item, then the target; 0 = none."""
        return self._next(interaction, self.ITEM_ID, seq_len)

    def _length_buckets(self, item_seq_len: Tensor) -> list[Tensor]:
        """Row indices grouped by length, so each group is padded only to its own longest sequence.

        Off the CPU, one group unless ``length_buckets_on_gpu``: a GPU pays per kernel launch more than per
        padded position, and each bucket launches the whole stack's kernels again."""
        order = torch.argsort(item_seq_len)
        on_cpu = item_seq_len.device.type == "cpu"
        if self.length_bucket_size <= 0 or not (on_cpu or self.length_buckets_on_gpu):
            return [order]
        return list(torch.split(order, self.length_bucket_size))

    def calculate_loss(self, interaction):
        total_loss = torch.zeros((), device=self.item_embedding.weight.device)
        total_positions = 0
        for rows in self._length_buckets(interaction[self.ITEM_SEQ_LEN]):
            bucket = interaction[rows]
            states = self.encode(bucket)  # [b, n, D]
            targets = self._next_items(bucket, states.shape[1])  # [b, n]
            valid = targets > 0
            scorer = self._dot_scorer(self.user_vectors(states[valid]))
            total_loss = total_loss + self._softmax_loss(scorer, targets[valid], self._seen_at(bucket, valid)).sum()
            total_positions += int(valid.sum())
        return total_loss / max(total_positions, 1)

    def _softmax_loss(self, scorer: Callable[[Tensor], Tensor], targets: Tensor, seen: Tensor | None = None) -> Tensor:
        """Cross-entropy of each position's target, over all items or over uniformly sampled negatives.

        Args:
            scorer: maps normalised item vectors, ``[n_items, D]`` (all items) or ``[P, C, D]`` (per position), to
                logits ``[P, ..., n_items]`` or ``[P, ..., C]`` (extra dims share the negatives, e.g. tasks).
            targets: ``[P]`` item ids.
            seen: ``[P, L]`` items each position has already seen (0 = none), added to its sampled negatives with
                ``history_negatives`` (full softmax has every item as a negative already).

        Returns:
            ``[P, ...]`` negative log-likelihoods.
        """
        if self.loss_type == "full_softmax":
            logits = self._shift_seen(scorer(self.item_vectors()), seen, in_logits=True)  # [P, ..., n_items]
            logits[..., 0] = float("-inf")  # the padding item is never a candidate
            index = targets.view(-1, *[1] * (logits.dim() - 1)).expand(*logits.shape[:-1], 1)
            return -F.log_softmax(logits, dim=-1).gather(-1, index).squeeze(-1)
        negatives = torch.randint(1, self.n_items, (len(targets), self.num_negatives), device=targets.device)
        if self.history_negatives and seen is not None:
            negatives = torch.cat([negatives, seen], dim=1)  # [P, K + L]
        sampled = torch.cat([targets.unsqueeze(1), negatives], dim=1)  # [P, 1 + K (+ L)]
        logits = self._shift_seen(self._sampled_logits(scorer, sampled), seen, sampled, in_logits=True)
        # A negative equal to the target (or a padding slot of seen) is no negative.
        excluded = F.pad((negatives == targets.unsqueeze(1)) | (negatives == 0), (1, 0))  # [P, 1 + K (+ L)]
        logits = logits.masked_fill(excluded.view(len(targets), *[1] * (logits.dim() - 2), -1), float("-inf"))
        return -F.log_softmax(logits, dim=-1)[..., 0]

    def _seen_at(self, bucket, valid: Tensor) -> Tensor | None:
        """``[P, N]`` the items seen at each ``valid`` position (``[b, n]``) of ``bucket``, as ``_softmax_loss``
        takes them; None when neither ``history_negatives`` nor ``repeat_bias`` needs them."""
        if not self.history_negatives and self.repeat_shift is None:
            return None
        return self._seen_before(bucket[self.ITEM_SEQ][:, : valid.shape[1]])[valid]

    @staticmethod
    def _seen_before(history: Tensor) -> Tensor:
        """``[B, N, N]``: for each position t, the history items at positions <= t (what the user has seen when the
        item after t is predicted); 0 elsewhere. ``history``: ``[B, N]`` item ids, 0-padded."""
        positions = torch.arange(history.shape[1], device=history.device)
        return history.unsqueeze(1) * (positions.unsqueeze(0) <= positions.unsqueeze(1))

    def _sampled_logits(self, scorer: Callable[[Tensor], Tensor], sampled: Tensor) -> Tensor:
        """Logits ``[P, ..., S]`` of the ``sampled`` item ids (``[P, S]``) of each position.

        Two ways to the same numbers: score the gathered ``[P, S, D]`` vectors (the reference path), or score the
        whole catalogue with one matrix product and gather ``[P, S]`` from it. The second is chosen when the
        catalogue's logits are no bigger than the gathered vectors (``n_items <= S * D``, e.g. ml-100k): it skips
        the gather and its scatter-add backward, which dominate an HSTU epoch on CPU.
        """
        if not self._scores_whole_catalogue(sampled.shape[1]):
            return scorer(self.item_vectors(sampled))
        logits = scorer(self.item_vectors())  # [P, ..., n_items]
        index = sampled.view(len(sampled), *[1] * (logits.dim() - 2), -1).expand(*logits.shape[:-1], -1)
        return logits.gather(-1, index)

    def _scores_whole_catalogue(self, num_sampled: int) -> bool:
        """Whether :meth:`_sampled_logits` scores every item (see there)."""
        return self.n_items <= num_sampled * self.hidden_size

    def _dot_scorer(self, users: Tensor) -> Callable[[Tensor], Tensor]:
        """Scorer of normalised ``users`` (``[P, D]``): cosine similarity over the temperature."""
        users = users / self.temperature  # scale the users, not the (catalogue-sized) logits

        def score(items: Tensor) -> Tensor:
            return users @ items.t() if items.dim() == 2 else torch.einsum("pd,pcd->pc", users, items)

        return score

    # -- inference --------------------------------------------------------------------------------------------

    def predict(self, interaction):
        requests, request_of_row = self._distinct_requests(interaction)
        user = self.encode_last(requests)[request_of_row]  # [B, D]
        scores = (user * self.item_vectors(interaction[self.ITEM_ID])).sum(-1)  # [B]
        return self._shift_seen(scores, interaction[self.ITEM_SEQ], interaction[self.ITEM_ID])

    def _distinct_requests(self, interaction):
        """``(requests, request_of_row)``: the batch's distinct rows when the scored item (and its label) are left
        out, and ``[B]`` each row's index among them.

        RecBole's sampled evaluation (the ``uniN`` / ``popN`` modes, so the candidate-set protocol) scores a user's
        candidates as copies of the user's row, one per item; encoding each history once instead of once per copy
        gives the same scores, (1 + N) times cheaper. Rows differing in any other field stay apart.
        """
        columns = [
            interaction[field].reshape(len(interaction), -1).to(torch.float64)  # exact for ids and float32 times
            for field in interaction.columns
            if field not in self._candidate_fields
        ]
        distinct, request_of_row = torch.unique(torch.cat(columns, dim=1), dim=0, return_inverse=True)
        rows = torch.arange(len(request_of_row), device=request_of_row.device)
        first_row = rows.new_full((len(distinct),), len(rows)).scatter_reduce(0, request_of_row, rows, reduce="amin")
        return interaction[first_row], request_of_row

    def full_sort_predict(self, interaction):
        scores = self.encode_last(interaction) @ self.item_vectors().t()  # [B, n_items]
        return self._shift_seen(scores, interaction[self.ITEM_SEQ])

    def _shift_seen(
        self, scores: Tensor, seen: Tensor | None, items: Tensor | None = None, in_logits: bool = False
    ) -> Tensor:
        """``scores`` with the repeat shift added where the item is among the row's ``seen`` items (``[P, L]``,
        0-padded); unchanged without ``repeat_bias`` or without ``seen``.

        ``scores``: ``[P, ..., n_items]`` over the whole catalogue (``items`` None), or ``[P, ..., S]`` / ``[P]``
        of ``items`` (``[P, S]`` / ``[P]``); dimensions between the first and the items' share the shift (e.g.
        tasks). ``in_logits``: the scores are over the temperature (training), not cosines (ranking).
        """
        if self.repeat_shift is None or seen is None:
            return scores
        shift = self.repeat_shift / self.temperature if in_logits else self.repeat_shift
        if items is None:
            # Write the few seen entries, not a [P, n_items] mask over the catalogue: ranking a Beauty batch (12k
            # items) spent a quarter of its time on the mask's arithmetic.
            rows, seen_items = _distinct_items(seen)  # [K], [K]
            by_item = scores.movedim(-1, 1)  # [P, n_items, ...]
            return by_item.index_put((rows, seen_items), by_item[rows, seen_items] + shift).movedim(1, -1)
        is_seen = (items.unsqueeze(-1) == seen.view(len(seen), *[1] * (items.dim() - 1), -1)).any(-1)
        is_seen = is_seen.view(len(is_seen), *[1] * (scores.dim() - is_seen.dim()), *is_seen.shape[1:])
        return scores + shift * is_seen


def _distinct_items(items: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, items)``, ``[K]`` each: every distinct non-padding item of each row of ``items`` (``[P, L]``,
    0-padded), once, so that writing at these pairs never writes (or back-propagates through) an entry twice."""
    ordered = items.sort(dim=1).values
    distinct = F.pad(ordered[:, 1:] != ordered[:, :-1], (1, 0), value=True) & (ordered > 0)
    rows = torch.arange(len(items), device=items.device).unsqueeze(1).expand_as(ordered)
    return rows[distinct], ordered[distinct]
