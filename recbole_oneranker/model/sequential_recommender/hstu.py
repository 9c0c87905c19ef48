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

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import Tensor, nn

from recbole_oneranker.model.layers import HSTUConfig, HSTUStack

_LOSS_TYPES = ("sampled_softmax", "full_softmax")


class HSTU(SequentialRecommender):
    r"""HSTU: a stack of hierarchical sequential transduction units over the item history, trained to predict the
    next item at every position.

    Inputs are ``item_emb * sqrt(D)`` plus learned absolute positions (dropout, padding zeroed); the HSTU stack
    (:class:`~recbole_oneranker.model.layers.HSTUStack`) applies pointwise SiLU attention with a relative
    position + log-bucketed time bias; outputs and item embeddings are L2-normalised and compared by dot product.

    Training uses the whole-sequence mode (``whole_sequence: True``): one row per user, a loss at every position,
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
        self.temperature = config["temperature"]
        self.length_bucket_size = config["length_bucket_size"]
        self.use_time = config["relative_bias"] == "time_and_position"
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.TIME = config["TIME_FIELD"]
        if self.loss_type not in _LOSS_TYPES:
            raise NotImplementedError(f"Make sure 'loss_type' in {list(_LOSS_TYPES)}, got {self.loss_type!r}")

        # define layers and loss
        self.hstu_config = HSTUConfig(
            embedding_dim=self.hidden_size,
            linear_hidden_dim=config["linear_hidden_dim"],
            attention_dim=config["attention_dim"],
            num_heads=config["n_heads"],
            num_blocks=config["n_layers"],
            max_seq_len=self.max_seq_length + 1,  # history + the slot that carries the request time
            dropout=self.dropout_prob,
            attn_dropout=config["attn_dropout_prob"],
            num_buckets=config["num_time_buckets"],
            relative_bias=config["relative_bias"],
        )
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = (
            nn.Embedding(self.max_seq_length + 1, self.hidden_size) if config["use_position_embedding"] else None
        )
        self.input_dropout = nn.Dropout(self.dropout_prob)
        self.stack = HSTUStack(self.hstu_config)

        # parameters initialization (as the reference: truncated normal items, 1/sqrt(D) positions)
        nn.init.trunc_normal_(self.item_embedding.weight, std=0.02)
        if self.position_embedding is not None:
            nn.init.trunc_normal_(self.position_embedding.weight, std=math.sqrt(1.0 / self.hidden_size))

    # -- encoder ----------------------------------------------------------------------------------------------

    def forward(self, item_seq: Tensor, item_seq_len: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """Encode right-padded histories into L2-normalised states, one per position.

        Args:
            item_seq: ``[B, N]`` item ids, right-padded with 0 (N may be shorter than MAX_ITEM_LIST_LENGTH).
            item_seq_len: ``[B]`` number of real items per row.
            timestamps: ``[B, N + 1]`` event times (``timestamps[b, len_b]`` = the request time) or None.

        Returns:
            ``[B, N, D]``: the state after each position (0 past each length).
        """
        batch_size, seq_len = item_seq.shape
        x = self.item_embedding(item_seq) * math.sqrt(self.hidden_size)  # [B, N, D]
        if self.position_embedding is not None:
            x = x + self.position_embedding.weight[:seq_len].unsqueeze(0)
        x = self.input_dropout(x)
        # One extra slot so the last real position can read the request time from timestamps[:, len].
        x = F.pad(x, (0, 0, 0, 1))  # [B, N + 1, D]
        out = self.stack(x, item_seq_len, timestamps.long() if timestamps is not None else None)
        return F.normalize(out[:, :seq_len], dim=-1)  # [B, N, D]

    def _request_timestamps(self, interaction, seq_len: int) -> Tensor | None:
        """``[B, N + 1]``: the history's times, with the target's time (the request) at each row's length."""
        if not self.use_time:
            return None
        history = interaction[self.TIME_SEQ][:, :seq_len]
        timestamps = F.pad(history, (0, 1))
        rows = torch.arange(len(history), device=history.device)
        timestamps[rows, interaction[self.ITEM_SEQ_LEN]] = interaction[self.TIME].to(timestamps.dtype)
        return timestamps

    def encode_last(self, interaction) -> Tensor:
        """``[B, D]``: the L2-normalised state after each row's last history item."""
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_len = int(item_seq_len.max())
        item_seq = interaction[self.ITEM_SEQ][:, :seq_len]
        states = self.forward(item_seq, item_seq_len, self._request_timestamps(interaction, seq_len))
        return self.gather_indexes(states, item_seq_len - 1)

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        """L2-normalised item embeddings: ``[n_items, D]``, or ``[*item_ids.shape, D]``."""
        weight = self.item_embedding.weight if item_ids is None else self.item_embedding(item_ids)
        return F.normalize(weight, dim=-1)

    # -- training ---------------------------------------------------------------------------------------------

    def _next_items(self, interaction, seq_len: int) -> Tensor:
        """``[B, N]`` the item to predict after each position: the next history item, then the target; 0 = none."""
        item_seq = interaction[self.ITEM_SEQ][:, :seq_len]
        targets = F.pad(item_seq[:, 1:], (0, 1))
        rows = torch.arange(len(item_seq), device=item_seq.device)
        targets[rows, interaction[self.ITEM_SEQ_LEN] - 1] = interaction[self.ITEM_ID]
        return targets

    def _length_buckets(self, item_seq_len: Tensor) -> list[Tensor]:
        """Row indices grouped by length, so each group is padded only to its own longest sequence."""
        order = torch.argsort(item_seq_len)
        if self.length_bucket_size <= 0:
            return [order]
        return list(torch.split(order, self.length_bucket_size))

    def calculate_loss(self, interaction):
        total_loss = torch.zeros((), device=self.item_embedding.weight.device)
        total_positions = 0
        for rows in self._length_buckets(interaction[self.ITEM_SEQ_LEN]):
            bucket = interaction[rows]
            seq_len = int(bucket[self.ITEM_SEQ_LEN].max())
            states = self.forward(
                bucket[self.ITEM_SEQ][:, :seq_len],
                bucket[self.ITEM_SEQ_LEN],
                self._request_timestamps(bucket, seq_len),
            )  # [b, n, D]
            targets = self._next_items(bucket, seq_len)  # [b, n]
            valid = targets > 0
            total_loss = total_loss + self._softmax_loss(states[valid], targets[valid]).sum()
            total_positions += int(valid.sum())
        return total_loss / max(total_positions, 1)

    def _softmax_loss(self, states: Tensor, targets: Tensor) -> Tensor:
        """``[P]`` cross-entropy of each position's target, over all items or over sampled negatives."""
        if self.loss_type == "full_softmax":
            logits = states @ self.item_vectors().t() / self.temperature  # [P, n_items]
            logits[:, 0] = float("-inf")  # the padding item is never a candidate
            return F.cross_entropy(logits, targets, reduction="none")
        negatives = torch.randint(1, self.n_items, (len(targets), self.num_negatives), device=targets.device)
        positive_logits = (states * self.item_vectors(targets)).sum(-1, keepdim=True)  # [P, 1]
        negative_logits = torch.einsum("pd,pkd->pk", states, self.item_vectors(negatives))  # [P, K]
        negative_logits = negative_logits.masked_fill(negatives == targets.unsqueeze(1), float("-inf"))
        logits = torch.cat([positive_logits, negative_logits], dim=1) / self.temperature
        return -F.log_softmax(logits, dim=1)[:, 0]

    # -- inference --------------------------------------------------------------------------------------------

    def predict(self, interaction):
        user = self.encode_last(interaction)  # [B, D]
        return (user * self.item_vectors(interaction[self.ITEM_ID])).sum(-1)  # [B]

    def full_sort_predict(self, interaction):
        return self.encode_last(interaction) @ self.item_vectors().t()  # [B, n_items]
