"""OneRec's encoder-decoder: a bidirectional encoder over the user's tokens and a causal decoder over a session.

The encoder is a pre-norm transformer (PyTorch's own layer) whose keys are masked to the tokens a request may read
(padding, and history entries filtered out). The decoder layer is :class:`~.decoders.QueryDecoderLayer` run
self-attention first (T5's order: causal self-attention over the session, then cross-attention to the encoder's
memory) followed by a feed-forward block that is a sparse mixture of experts (:mod:`.moe`) or its dense ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .decoders import QueryDecoderConfig, QueryDecoderLayer
from .moe import MoEConfig, feed_forward

__all__ = ["EncoderDecoderConfig", "HistoryEncoder", "SessionDecoder"]


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
        # No nested-tensor fast path: it returns zeros at masked tokens in eval but not in training.
        self.layers: nn.TransformerEncoder = nn.TransformerEncoder(
            layer, config.encoder_layers, enable_nested_tensor=False
        )
        self.norm: nn.LayerNorm = nn.LayerNorm(d)

    def forward(self, tokens: Tensor, visible: Tensor) -> Tensor:
        x = self.dropout(tokens + self.positions.weight[: tokens.shape[1]])
        return self.norm(self.layers(x, src_key_padding_mask=~visible))


class SessionDecoder(nn.Module):
    """Learned positions + decoder layers (causal self-attention, cross-attention, mixture of experts) + a norm.

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
        attention = QueryDecoderConfig(d, config.num_heads, 1, config.dropout, cross_attention_first=False)
        self.positions: nn.Embedding = nn.Embedding(config.max_session_len, d)
        self.dropout: nn.Dropout = nn.Dropout(config.dropout)
        self.attention_layers: nn.ModuleList = nn.ModuleList(
            QueryDecoderLayer(attention) for _ in range(config.decoder_layers)
        )
        self.ffn_norms: nn.ModuleList = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.decoder_layers))
        self.ffns: nn.ModuleList = nn.ModuleList(
            feed_forward(config.feed_forward) for _ in range(config.decoder_layers)
        )
        self.norm: nn.LayerNorm = nn.LayerNorm(d)

    def forward(self, tokens: Tensor, memory: Tensor, memory_visible: Tensor) -> Tensor:
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        x = self.dropout(tokens + self.positions.weight[:length]).unsqueeze(1)  # [B, 1, T, D]: one query set per row
        shared_mask = memory_visible.unsqueeze(1)  # [B, 1, M]
        for attend, norm, ffn in zip(self.attention_layers, self.ffn_norms, self.ffns, strict=True):
            x = attend(x, memory, shared_mask, causal)
            x = x + self.dropout(ffn(norm(x)))
        return self.norm(x.squeeze(1))
