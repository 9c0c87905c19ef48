"""OneRec's encoder-decoder: a bidirectional encoder over the user's tokens and a causal decoder over a session.

The encoder is a pre-norm transformer (PyTorch's own layer) whose keys are masked to the tokens a request may read
(padding, and history entries filtered out). A decoder layer runs in T5's order: causal self-attention over the
session, cross-attention to the encoder's memory, then a feed-forward block that is a sparse mixture of experts
(:mod:`.moe`) or its dense ablation. The decoder runs a whole session at once (training) or a token at a time from
a key/value cache (beam search: the memory's keys and values are projected once per request, not per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .moe import MoEConfig, feed_forward

__all__ = ["DecoderCache", "EncoderDecoderConfig", "HistoryEncoder", "SessionDecoder", "SessionDecoderLayer"]


@dataclass
class EncoderDecoderConfig:
    """Sizes of a :class:`HistoryEncoder` and a :class:`SessionDecoder`.

    Attributes:
        hidden_size: ``D``.
        feed_forward: the decoder's feed-forward block (mixture of experts or dense; its ``hidden_size`` is ``D``).
        num_heads: attention heads of both.
        encoder_layers, decoder_layers: layer counts.
        encoder_inner_size: hidden width of the encoder's (dense) feed-forward blocks.
        max_memory_len: the most tokens the encoder reads (learned positions).
        max_session_len: the most tokens the decoder reads (learned positions).
        dropout: dropout of inputs, attention outputs and feed-forward outputs.
    """

    hidden_size: int
    feed_forward: MoEConfig
    num_heads: int = 1
    encoder_layers: int = 1
    decoder_layers: int = 1
    encoder_inner_size: int = 64
    max_memory_len: int = 64
    max_session_len: int = 5
    dropout: float = 0.1

    def __post_init__(self) -> None:
        sizes = (self.encoder_layers, self.decoder_layers, self.encoder_inner_size, self.max_memory_len)
        if min(sizes) < 1 or self.max_session_len < 1:
            raise ValueError(f"layer counts and sizes must be positive: {self}")
        if self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.feed_forward.hidden_size != self.hidden_size:
            raise ValueError(f"feed_forward.hidden_size must be hidden_size={self.hidden_size}")


class HistoryEncoder(nn.Module):
    """Learned positions + a pre-norm bidirectional transformer encoder + a final layer norm.

    Call Args:
        tokens: ``(B, M, D)`` embedded tokens.
        visible: ``(B, M)`` bool: the tokens every token may attend to (each row needs one).

    Returns:
        ``(B, M, D)``; the states of invisible tokens are never read by visible ones.

    >>> encoder = HistoryEncoder(EncoderDecoderConfig(8, MoEConfig(8, 4), max_memory_len=5)).eval()
    >>> encoder(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, config: EncoderDecoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.positions: nn.Embedding = nn.Embedding(config.max_memory_len, d)
        self.dropout: nn.Dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d, config.num_heads, config.encoder_inner_size, config.dropout, "gelu", batch_first=True, norm_first=True
        )
        # No nested tensors: PyTorch cannot use them with pre-norm layers and warns when asked to.
        self.layers: nn.TransformerEncoder = nn.TransformerEncoder(
            layer, config.encoder_layers, enable_nested_tensor=False
        )
        self.norm: nn.LayerNorm = nn.LayerNorm(d)

    def forward(self, tokens: Tensor, visible: Tensor) -> Tensor:
        x = self.dropout(tokens + self.positions.weight[: tokens.shape[1]])
        return self.norm(self.layers(x, src_key_padding_mask=~visible))


@dataclass
class DecoderCache:
    """What :meth:`SessionDecoder.extend` keeps between calls, per layer: the memory's keys and values (projected
    once per request) and the keys and values of every session token decoded so far.

    Attributes:
        memory_keys, memory_values: per layer ``(B, H, M, dh)``.
        memory_visible: ``(B, M)`` bool.
        self_keys, self_values: per layer ``(B, H, t, dh)`` for the ``t`` tokens decoded so far.
    """

    memory_keys: list[Tensor]
    memory_values: list[Tensor]
    memory_visible: Tensor
    self_keys: list[Tensor]
    self_values: list[Tensor]

    @property
    def length(self) -> int:
        return self.self_keys[0].shape[2]

    def select(self, rows: Tensor) -> DecoderCache:
        """The cache of rows ``rows`` (``(B',)`` indices, repeats allowed: a beam's surviving paths)."""
        return DecoderCache(
            [keys[rows] for keys in self.memory_keys],
            [values[rows] for values in self.memory_values],
            self.memory_visible[rows],
            [keys[rows] for keys in self.self_keys],
            [values[rows] for values in self.self_values],
        )


class SessionDecoderLayer(nn.Module):
    """Pre-norm decoder layer in T5's order: causal self-attention, cross-attention to the memory, feed-forward
    (a mixture of experts, or dense). Its own attention (not :class:`~.decoders.QueryDecoderLayer`'s) because it
    decodes incrementally: new tokens attend to the cached keys and values of the earlier ones.

    Call Args:
        x: ``(B, T, D)`` the new tokens.
        memory_keys, memory_values: ``(B, H, M, dh)`` from :meth:`memory_keys_values`.
        memory_visible: ``(B, M)`` bool.
        past_keys, past_values: ``(B, H, t, dh)`` of the ``t`` tokens before ``x``.

    Returns:
        ``(B, T, D)`` and the keys and values ``(B, H, t + T, dh)`` of every token so far.
    """

    def __init__(self, config: EncoderDecoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self._num_heads: int = config.num_heads
        self._dropout: float = config.dropout
        self.self_norm: nn.LayerNorm = nn.LayerNorm(d)
        self.self_qkv: nn.Linear = nn.Linear(d, 3 * d)
        self.self_out: nn.Linear = nn.Linear(d, d)
        self.cross_norm: nn.LayerNorm = nn.LayerNorm(d)
        self.cross_query: nn.Linear = nn.Linear(d, d)
        self.cross_key_value: nn.Linear = nn.Linear(d, 2 * d)
        self.cross_out: nn.Linear = nn.Linear(d, d)
        self.ffn_norm: nn.LayerNorm = nn.LayerNorm(d)
        self.ffn: nn.Module = feed_forward(config.feed_forward)
        self.dropout: nn.Dropout = nn.Dropout(config.dropout)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self._num_heads, -1)).transpose(1, 2)  # [B, T, D] -> [B, H, T, dh]

    def _attend(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        dropout = self._dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=dropout)
        return out.transpose(1, 2).flatten(-2)  # [B, T, D]

    def memory_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.cross_key_value(memory).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(
        self,
        x: Tensor,
        memory_keys: Tensor,
        memory_values: Tensor,
        memory_visible: Tensor,
        past_keys: Tensor,
        past_values: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        query, keys, values = (self._heads(t) for t in self.self_qkv(self.self_norm(x)).chunk(3, dim=-1))
        keys, values = torch.cat([past_keys, keys], dim=2), torch.cat([past_values, values], dim=2)
        new, seen = x.shape[1], keys.shape[2]
        causal = torch.ones(new, seen, dtype=torch.bool, device=x.device).tril(diagonal=seen - new)
        x = x + self.dropout(self.self_out(self._attend(query, keys, values, causal)))
        query = self._heads(self.cross_query(self.cross_norm(x)))
        readable = memory_visible[:, None, None, :]  # [B, 1, 1, M]
        x = x + self.dropout(self.cross_out(self._attend(query, memory_keys, memory_values, readable)))
        return x + self.dropout(self.ffn(self.ffn_norm(x))), keys, values


class SessionDecoder(nn.Module):
    """Learned positions + :class:`SessionDecoderLayer` s + a final norm, run whole (:meth:`forward`) or
    incrementally with a key/value cache (:meth:`start`, then :meth:`extend` with the next tokens).

    Call Args:
        tokens: ``(B, T, D)`` the session's input tokens (BOS, then the items generated so far).
        memory: ``(B, M, D)`` the encoder's states.
        memory_visible: ``(B, M)`` bool: the memory each row may read (each row needs one).

    Returns:
        ``(B, T, D)``; position ``t`` depends on tokens ``<= t`` only.

    >>> decoder = SessionDecoder(EncoderDecoderConfig(8, MoEConfig(8, 4), max_session_len=3)).eval()
    >>> decoder(torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, config: EncoderDecoderConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.positions: nn.Embedding = nn.Embedding(config.max_session_len, d)
        self.dropout: nn.Dropout = nn.Dropout(config.dropout)
        self.layers: nn.ModuleList = nn.ModuleList(SessionDecoderLayer(config) for _ in range(config.decoder_layers))
        self.norm: nn.LayerNorm = nn.LayerNorm(d)

    def _layers(self) -> list[SessionDecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, SessionDecoderLayer)]

    def start(self, memory: Tensor, memory_visible: Tensor) -> DecoderCache:
        """An empty cache for requests with this memory: its keys and values projected once, for every step."""
        projected = [layer.memory_keys_values(memory) for layer in self._layers()]
        nothing = memory.new_zeros(len(memory), projected[0][0].shape[1], 0, projected[0][0].shape[-1])
        return DecoderCache(
            [keys for keys, _ in projected],
            [values for _, values in projected],
            memory_visible,
            [nothing] * len(projected),
            [nothing] * len(projected),
        )

    def extend(self, cache: DecoderCache, tokens: Tensor) -> tuple[Tensor, DecoderCache]:
        """``(B, T, D)`` the states of ``tokens`` (``(B, T, D)``) following the cache's tokens, and the cache with
        them added."""
        offset = cache.length
        x = self.dropout(tokens + self.positions.weight[offset : offset + tokens.shape[1]])
        self_keys, self_values = [], []
        for index, layer in enumerate(self._layers()):
            x, keys, values = layer(
                x,
                cache.memory_keys[index],
                cache.memory_values[index],
                cache.memory_visible,
                cache.self_keys[index],
                cache.self_values[index],
            )
            self_keys.append(keys)
            self_values.append(values)
        extended = DecoderCache(cache.memory_keys, cache.memory_values, cache.memory_visible, self_keys, self_values)
        return self.norm(x), extended

    def forward(self, tokens: Tensor, memory: Tensor, memory_visible: Tensor) -> Tensor:
        return self.extend(self.start(memory, memory_visible), tokens)[0]
