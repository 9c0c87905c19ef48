"""Query decoders for OneRanker's steps 2 and 3: cross-attention to a sequence memory, then masked self-attention.

A *query set* (task and fake-item tokens in step 2; a ranking token and candidates in step 3) is decoded at many
positions of a user's sequence at once. Each position ``p`` attends to a *shared* memory (the user's sequence
states, computed once per row, masked so position ``p`` sees only states ``<= p``) and optionally to a *private*
memory of its own (step 2's outputs at that position, passed through to step 3). Nothing is recomputed per
position: keys and values of the shared memory are projected once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PositionwiseCrossAttention", "QueryDecoder", "QueryDecoderConfig", "QueryDecoderLayer", "visible_states"]


@dataclass
class QueryDecoderConfig:
    """Sizes and switches of a :class:`QueryDecoder`.

    Attributes:
        hidden_size: ``D``, width of queries and memories.
        num_heads: attention heads (``D`` must be divisible by it).
        num_layers: decoder layers.
        dropout: dropout on attention outputs.
        cross_attention_first: each layer runs cross-attention, then self-attention (OneRanker's "cross-attention
            prioritization"); False runs self-attention first.
    """

    hidden_size: int
    num_heads: int = 1
    num_layers: int = 1
    dropout: float = 0.1
    cross_attention_first: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size < 1 or self.num_heads < 1 or self.num_layers < 1:
            raise ValueError(f"hidden_size, num_heads and num_layers must be positive: {self}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class PositionwiseCrossAttention(nn.Module):
    """Multi-head softmax attention from per-position query sets to a shared and a private memory.

    Call Args:
        queries: ``(B, P, Q, D)``: Q query tokens at each of P positions.
        shared: ``(B, M, D)``: memory shared by all positions of a row (e.g. the sequence states).
        shared_mask: ``(B, P, M)`` bool: True where position p may attend shared slot m.
        private: ``(B, P, K, D)`` or None: memory of each position alone, fully visible.

    Returns:
        ``(B, P, Q, D)``. A query whose memory is entirely masked gets a zero output.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self._num_heads: int = num_heads
        self._head_dim: int = hidden_size // num_heads
        self.query: nn.Linear = nn.Linear(hidden_size, hidden_size)
        self.key_value: nn.Linear = nn.Linear(hidden_size, 2 * hidden_size)
        self.out: nn.Linear = nn.Linear(hidden_size, hidden_size)
        self.dropout: nn.Dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self._num_heads, self._head_dim))  # [..., H, dh]

    def forward(self, queries: Tensor, shared: Tensor, shared_mask: Tensor, private: Tensor | None = None) -> Tensor:
        q = self._heads(self.query(queries))  # [B, P, Q, H, dh]
        # Keys and values of the shared memory: projected once per row, not once per position.
        k_shared, v_shared = (self._heads(t) for t in self.key_value(shared).chunk(2, dim=-1))  # [B, M, H, dh]
        scores = torch.einsum("bpqhd,bmhd->bphqm", q, k_shared)  # [B, P, H, Q, M]
        scores = scores.masked_fill(~shared_mask[:, :, None, None, :], float("-inf"))
        if private is not None:
            k_private, v_private = (self._heads(t) for t in self.key_value(private).chunk(2, dim=-1))  # [B,P,K,H,dh]
            scores = torch.cat([scores, torch.einsum("bpqhd,bpkhd->bphqk", q, k_private)], dim=-1)
        weights = torch.softmax(scores / self._head_dim**0.5, dim=-1).nan_to_num(0.0)  # all-masked rows -> 0
        num_shared = shared.shape[1]
        out = torch.einsum("bphqm,bmhd->bpqhd", weights[..., :num_shared], v_shared)
        if private is not None:
            out = out + torch.einsum("bphqk,bpkhd->bpqhd", weights[..., num_shared:], v_private)
        return self.dropout(self.out(out.flatten(-2)))  # [B, P, Q, D]


class QueryDecoderLayer(nn.Module):
    """Pre-norm layer: cross-attention to memory and masked self-attention, in the configured order.

    As in the paper's description of both decoders, a layer is the two attentions with residuals and nothing
    else (no feed-forward block): queries are many (tasks x fake items x positions), so it also keeps them cheap.

    Call Args:
        x: ``(B, P, Q, D)`` query tokens.
        shared, shared_mask, private: the memory (see :class:`PositionwiseCrossAttention`).
        self_mask: ``(Q, Q)`` bool, True where query i may attend query j (each row must allow something).

    Returns:
        ``(B, P, Q, D)``.
    """

    def __init__(self, config: QueryDecoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self._cross_first: bool = config.cross_attention_first
        self._num_heads: int = config.num_heads
        self._dropout: float = config.dropout
        self.cross_norm: nn.LayerNorm = nn.LayerNorm(d)
        self.cross_attention: PositionwiseCrossAttention = PositionwiseCrossAttention(
            d, config.num_heads, config.dropout
        )
        self.self_norm: nn.LayerNorm = nn.LayerNorm(d)
        self.self_qkv: nn.Linear = nn.Linear(d, 3 * d)
        self.self_out: nn.Linear = nn.Linear(d, d)

    def _self_attention(self, x: Tensor, self_mask: Tensor) -> Tensor:
        q, k, v = (t.unflatten(-1, (self._num_heads, -1)).transpose(-2, -3) for t in self.self_qkv(x).chunk(3, -1))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self_mask, dropout_p=self._dropout if self.training else 0.0
        )  # [B, P, H, Q, dh]
        return self.self_out(out.transpose(-2, -3).flatten(-2))

    def forward(
        self, x: Tensor, shared: Tensor, shared_mask: Tensor, self_mask: Tensor, private: Tensor | None = None
    ) -> Tensor:
        def cross(h: Tensor) -> Tensor:
            return h + self.cross_attention(self.cross_norm(h), shared, shared_mask, private)

        def attend(h: Tensor) -> Tensor:
            return h + self._self_attention(self.self_norm(h), self_mask)

        return attend(cross(x)) if self._cross_first else cross(attend(x))


class QueryDecoder(nn.Module):
    """A stack of :class:`QueryDecoderLayer` with a final layer norm.

    >>> decoder = QueryDecoder(QueryDecoderConfig(hidden_size=8, num_heads=2, num_layers=2)).eval()
    >>> x, memory = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 8)
    >>> visible = torch.ones(2, 3, 3, dtype=torch.bool).tril()  # position p sees states <= p
    >>> decoder(x, memory, visible, torch.eye(4, dtype=torch.bool)).shape
    torch.Size([2, 3, 4, 8])
    """

    def __init__(self, config: QueryDecoderConfig) -> None:
        super().__init__()
        self.config: QueryDecoderConfig = config
        self.layers: nn.ModuleList = nn.ModuleList(QueryDecoderLayer(config) for _ in range(config.num_layers))
        self.norm: nn.LayerNorm = nn.LayerNorm(config.hidden_size)

    def forward(
        self, x: Tensor, shared: Tensor, shared_mask: Tensor, self_mask: Tensor, private: Tensor | None = None
    ) -> Tensor:
        for layer in self.layers:
            x = layer(x, shared, shared_mask, self_mask, private)
        return self.norm(x)


def visible_states(num_states: int, positions: Tensor, seq_lens: Tensor) -> Tensor:
    """``[B, R, N]``: the states each decoding position ``p`` (``positions``, ``[B, R]``) may read: ``j <= p`` and
    never padding (``j < seq_lens[b]``).

    >>> visible_states(3, torch.tensor([[0, 2]]), torch.tensor([2])).int().tolist()
    [[[1, 0, 0], [1, 1, 0]]]
    """
    keys = torch.arange(num_states, device=positions.device)
    return (keys <= positions.unsqueeze(-1)) & (keys < seq_lens[:, None, None])
