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
from torch import Tensor

from recbole_oneranker.model.abstract_recommender import GenerativeRecommender
from recbole_oneranker.model.serving import ServingResult


class HSTU(GenerativeRecommender):
    r"""HSTU: a stack of hierarchical sequential transduction units over the item history, trained to predict the
    next item at every position.

    Inputs are ``item_emb * sqrt(D)`` plus learned absolute positions (dropout, padding zeroed); the HSTU stack
    (:class:`~recbole_oneranker.model.layers.SequenceEncoder`) applies pointwise SiLU attention with a relative
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

    LEGACY_KEYS = (
        ("item_embedding.", "encoder.item_embedding."),
        ("position_embedding.", "encoder.position_embedding."),
        ("stack.", "encoder.stack."),
        ("repeat_shift", "repeat_shift.shift"),
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # define layers (the encoder initialises them as the reference does)
        self.encoder = self.item_sequence_encoder(config, dataset)

    def forward(self, item_seq: Tensor, item_seq_len: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """``[B, N, D]`` states of right-padded histories (see :class:`SequenceEncoder`), the items' side features
        (``item_feature_fields``) added to their tokens."""
        features = self.with_history_features(None, item_seq, math.sqrt(self.hidden_size))  # the items' scale
        return self.encoder(item_seq, item_seq_len, timestamps, features)

    def encode(self, interaction) -> Tensor:
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_len = int(item_seq_len.max())
        return self.forward(
            interaction[self.ITEM_SEQ][:, :seq_len], item_seq_len, self.request_timestamps(interaction, seq_len)
        )

    def encode_last(self, interaction) -> Tensor:
        """``[B, D]``: the L2-normalised state after each row's last history item."""
        states = self.encode_by_length(interaction)
        return self.user_vectors(self.gather_indexes(states, interaction[self.ITEM_SEQ_LEN] - 1))

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        return self.encoder.item_vectors(item_ids)

    # -- training ---------------------------------------------------------------------------------------------

    def calculate_loss(self, interaction):
        total_loss = torch.zeros((), device=self.encoder.item_embedding.weight.device)
        total_positions = 0
        for rows in self.length_buckets(interaction[self.ITEM_SEQ_LEN]):
            bucket = interaction[rows]
            states = self.encode(bucket)  # [b, n, D]
            targets = self.next_items(bucket, states.shape[1])  # [b, n]
            valid = targets > 0
            scorer = self.dot_scorer(self.user_vectors(states[valid]))
            total_loss = total_loss + self.softmax(scorer, targets[valid], self.seen_at(bucket, valid)).sum()
            total_positions += int(valid.sum())
        return total_loss / max(total_positions, 1)

    def dot_scorer(self, users: Tensor) -> Callable[[Tensor], Tensor]:
        """Scorer of normalised ``users`` (``[P, D]``): cosine similarity over the temperature."""
        users = users / self.temperature  # scale the users, not the (catalogue-sized) logits

        def score(items: Tensor) -> Tensor:
            return users @ items.t() if items.dim() == 2 else torch.einsum("pd,pcd->pc", users, items)

        return score

    # -- inference --------------------------------------------------------------------------------------------

    def predict(self, interaction):
        requests, request_of_row = self.distinct_requests(interaction)
        user = self.encode_last(requests)[request_of_row]  # [B, D]
        scores = (user * self.item_vectors(interaction[self.ITEM_ID])).sum(-1)  # [B]
        return self.shift_seen(scores, interaction[self.ITEM_SEQ], interaction[self.ITEM_ID])

    def serve(self, interaction) -> ServingResult:
        scores = self.encode_last(interaction) @ self.item_vectors().t()  # [B, n_items]
        scores = self.shift_seen(scores, interaction[self.ITEM_SEQ])
        return ServingResult(retrieval_scores=scores, final_scores=scores)
