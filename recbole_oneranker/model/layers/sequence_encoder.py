"""The item-sequence encoder every HSTU-based generative model composes: item table, input embedding, HSTU stack.

Inputs are ``item_emb * sqrt(D)`` (plus any per-token features the model adds, e.g. feedback levels) after an
optional prefix of embedded tokens (user features), plus learned absolute positions, then dropout; the HSTU stack
runs under the mask the caller chooses (causal by default, or a bidirectional prefix). One extra slot at the end
carries the request time, so the last real position's time bias reads the time of the request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hstu import HSTUConfig, HSTUStack, prefix_causal_mask
from .lookup import lookup
from .unknown_items import UnknownItems, UnknownItemsConfig

__all__ = ["TOKEN_TYPES", "SequenceEncoder", "SequenceEncoderConfig"]

# The token types of a stack with ``num_token_types`` (GPR's token-type-aware LayerNorm and FFN): the tokens read
# before the history (user features), then the history's items and the request slot.
PREFIX_TOKEN, HISTORY_TOKEN = 0, 1
TOKEN_TYPES = 2


@dataclass
class SequenceEncoderConfig:
    """Sizes and switches of a :class:`SequenceEncoder`.

    Attributes:
        num_items: rows of the item table, padding item 0 included; 0 for a model that embeds its tokens itself
            (e.g. from semantic IDs) and calls :meth:`SequenceEncoder.encode_tokens`.
        hstu: the stack's config; its ``max_seq_len`` must hold prefix + history + the request slot. With
            ``num_token_types`` (0 or :data:`TOKEN_TYPES`) the encoder types its tokens: prefix, or history.
        use_position_embedding: add learned absolute positions to the inputs.
        bidirectional_prefix: the prefix tokens attend to each other both ways (GPR's hybrid mask); False keeps the
            whole sequence causal.
        unknown_item_dropout: 0 embeds every history item by its row of the item table; in ``(0, 1)``, the items
            outside the encoder's ``known_items`` enter as one learned vector instead, and in training this share of
            the known ones too (:class:`~.unknown_items.UnknownItems`; it starts at zero, so the other weights are
            drawn as without it).
    """

    num_items: int
    hstu: HSTUConfig
    use_position_embedding: bool = True
    bidirectional_prefix: bool = False
    unknown_item_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_items == 1 or self.num_items < 0:
            raise ValueError(
                f"num_items must count the padding item and at least one item (or be 0), got {self.num_items}"
            )
        if self.unknown_item_dropout and not self.num_items:
            raise ValueError("unknown_item_dropout replaces rows of the item table: this encoder has none")
        if self.hstu.num_token_types not in (0, TOKEN_TYPES):
            raise ValueError(
                f"the encoder's tokens are of {TOKEN_TYPES} types (prefix, history): hstu.num_token_types must be 0 "
                f"or {TOKEN_TYPES}, got {self.hstu.num_token_types}"
            )


class SequenceEncoder(nn.Module):
    """Item table + input embedding + HSTU stack over right-padded histories.

    Initialisation follows the official HSTU: item rows truncated normal (std 0.02), positions truncated normal
    (std ``1/sqrt(D)``).

    Args:
        config: sizes and switches.
        known_items: ``[num_items]`` bool, the items the model trains on; required with ``unknown_item_dropout``.

    >>> from recbole_oneranker.model.layers import HSTUConfig
    >>> hstu = HSTUConfig(embedding_dim=8, linear_hidden_dim=4, attention_dim=4, num_heads=2, num_blocks=1,
    ...                   max_seq_len=6)
    >>> encoder = SequenceEncoder(SequenceEncoderConfig(num_items=10, hstu=hstu)).eval()
    >>> encoder(torch.tensor([[3, 4, 0], [5, 0, 0]]), torch.tensor([2, 1])).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, config: SequenceEncoderConfig, known_items: Tensor | None = None) -> None:
        super().__init__()
        self.config: SequenceEncoderConfig = config
        dim = config.hstu.embedding_dim
        self.item_embedding: nn.Embedding | None = (
            nn.Embedding(config.num_items, dim, padding_idx=0) if config.num_items else None
        )
        self.unknown_items: UnknownItems | None = None
        if config.unknown_item_dropout:
            if known_items is None:
                raise ValueError("unknown_item_dropout needs known_items, the mask of the items the model trains on")
            if known_items.shape != (config.num_items,):
                raise ValueError(f"known_items has shape {tuple(known_items.shape)}, not ({config.num_items},)")
            sizes = UnknownItemsConfig(hidden_size=dim, dropout=config.unknown_item_dropout, init_std=0.0)
            self.unknown_items = UnknownItems(sizes, known_items)
        self.position_embedding: nn.Embedding | None = (
            nn.Embedding(config.hstu.max_seq_len, dim) if config.use_position_embedding else None
        )
        self.input_dropout: nn.Dropout = nn.Dropout(config.hstu.dropout)
        self.stack: HSTUStack = HSTUStack(config.hstu)
        if self.item_embedding is not None:
            nn.init.trunc_normal_(self.item_embedding.weight, std=0.02)
        if self.position_embedding is not None:
            nn.init.trunc_normal_(self.position_embedding.weight, std=math.sqrt(1.0 / dim))

    @property
    def hidden_size(self) -> int:
        return self.config.hstu.embedding_dim

    def forward(
        self,
        item_seq: Tensor,
        item_seq_len: Tensor,
        timestamps: Tensor | None = None,
        token_features: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """Encode right-padded histories: the stack's state after each history position.

        Args:
            item_seq: ``[B, N]`` item ids, right-padded with 0.
            item_seq_len: ``[B]`` number of real items per row.
            timestamps: ``[B, N + 1]`` event times (``timestamps[b, len_b]`` = the request time) or None.
            token_features: ``[B, N, D]`` added to each history token's input embedding, or None.
            prefix: ``[B, P, D]`` embedded tokens read before the history, or None; they carry the time of the
                first event.

        Returns:
            ``[B, N, D]`` states of the history positions, not normalised (0 past each length).
        """
        if self.item_embedding is None:
            raise ValueError("this encoder has no item table (num_items=0): call encode_tokens with embedded tokens")
        x = self.item_embedding(item_seq)  # [B, N, D]
        if self.unknown_items is not None:
            x = self.unknown_items(x, item_seq)
        x = x * math.sqrt(self.hidden_size)
        if token_features is not None:
            x = x + token_features
        return self.encode_tokens(x, item_seq_len, timestamps, prefix)

    def encode_tokens(
        self,
        x: Tensor,
        item_seq_len: Tensor,
        timestamps: Tensor | None = None,
        prefix: Tensor | None = None,
    ) -> Tensor:
        """:meth:`forward` from embedded history tokens ``x`` (``[B, N, D]``, e.g. sums of semantic-ID code
        embeddings). Returns ``[B, N, D]``."""
        num_history = x.shape[1]
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
        lengths = item_seq_len + num_prefix
        attn_mask = (
            prefix_causal_mask(lengths, x.shape[1], num_prefix)
            if self.config.bidirectional_prefix and num_prefix
            else None  # the stack's causal mask
        )
        timestamps = timestamps.long() if timestamps is not None else None
        out = self.stack(x, lengths, timestamps, attn_mask, self.token_types(x, num_prefix))
        return out[:, num_prefix : num_prefix + num_history]

    def token_types(self, x: Tensor, num_prefix: int) -> Tensor | None:
        """``[B, P + N + 1]`` the type of each token of ``x`` (prefix, then history and request slot) for a stack
        with ``num_token_types``; None for one without."""
        if not self.config.hstu.num_token_types:
            return None
        types = torch.full(x.shape[:2], HISTORY_TOKEN, dtype=torch.long, device=x.device)
        types[:, :num_prefix] = PREFIX_TOKEN
        return types

    def item_vectors(self, item_ids: Tensor | None = None) -> Tensor:
        """L2-normalised item embeddings: ``[num_items, D]``, or ``[*item_ids.shape, D]``.

        The table is normalised first and then indexed: the same vectors as normalising the looked-up rows, at the
        cost of the table instead of the (much larger) positions x negatives lookup, whose gradient
        :func:`~recbole_oneranker.model.layers.lookup` keeps the same on every run.
        """
        if self.item_embedding is None:
            raise ValueError("this encoder has no item table (num_items=0): its model embeds its own tokens")
        table = F.normalize(self.item_embedding.weight, dim=-1)
        return table if item_ids is None else lookup(table, item_ids)
