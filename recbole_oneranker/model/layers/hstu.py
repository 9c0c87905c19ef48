"""HSTU (Hierarchical Sequential Transduction Unit) block and stack, in plain PyTorch on dense padded tensors.

Faithful to ``SequentialTransductionUnitJagged`` / ``HSTUJagged`` of facebookresearch/generative-recommenders
(commit 2e81fab, ``generative_recommenders/research/modeling/sequential/hstu.py``, ``normalization="rel_bias"``,
``linear_config="uvqk"``, ``linear_activation="silu"``, ``concat_ua=False``) and to Zhai et al., "Actions Speak
Louder than Words: Trillion-Parameter Sequential Transducers for Generative Recommendations", ICML 2024.

One block, with ``L`` = ``max_seq_len``::

    u, v, q, k = split(silu(layer_norm(x) @ uvqk))                          # per head: dv, dv, dqk, dqk
    a[b, h, i, j] = silu(q_i . k_j + rab[b, i, j]) / L   if mask[b, i, j] else 0
    y = o(dropout(u * layer_norm(sum_j a[b, h, i, j] v_j))) + x

Layer norms have no affine parameters. The official jagged layout is replaced by right-padded ``(B, N, D)`` tensors
and ``lengths``; the stack zeroes padded rows after every block, which is exactly the official behaviour (padded
q/k/v are zeros there), and never lets a padded key contribute.

The official code divides by its padded length, which is always ``max_seq_len``; dividing by the configured
``max_seq_len`` instead gives the same numbers while letting a batch be padded only to its longest sequence:
outputs do not depend on how much padding a tensor carries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .relative_bias import (
    RelativeAttentionBias,
    RelativeBucketedTimeAndPositionBias,
    RelativePositionBias,
)

__all__ = [
    "HSTUBlock",
    "HSTUConfig",
    "HSTUStack",
    "ATTENTION_KINDS",
    "RELATIVE_BIAS_MODES",
    "TokenTypeFFN",
    "build_relative_bias",
    "causal_padding_mask",
    "load_official_hstu_weights",
    "prefix_causal_mask",
]

RELATIVE_BIAS_MODES: tuple[str, ...] = ("time_and_position", "position", "none")
ATTENTION_KINDS: tuple[str, ...] = ("silu", "softmax")


@dataclass
class HSTUConfig:
    """Sizes and options of an HSTU stack (the official ``hstu_encoder`` gin arguments).

    Args:
        embedding_dim: ``D``, width of the input and output.
        linear_hidden_dim: ``dv``, width of u and v per head.
        attention_dim: ``dqk``, width of q and k per head.
        num_heads: ``H``.
        num_blocks: number of stacked ``HSTUBlock``.
        max_seq_len: ``L``, the longest padded sequence; sizes the relative position table (``2L - 1``).
        dropout: dropout on ``u * layer_norm(attn)`` before the output linear (official ``dropout_ratio``).
        attn_dropout: dropout on the attention weights. The official rel_bias path stores but never applies it;
            the default 0.0 keeps the two identical.
        num_buckets: largest time bucket id; the time table has ``num_buckets + 1`` entries.
        relative_bias: ``"time_and_position"`` (official ``RelativeBucketedTimeAndPositionBasedBias``; position only
            when called without timestamps), ``"position"`` (position table only, timestamps ignored) or
            ``"none"`` (no bias, which is what the official code does when called without timestamps).
        epsilon: epsilon of both layer norms.
        attention: ``"silu"`` (HSTU's pointwise ``silu(qk + rab) / L``) or ``"softmax"`` (GPR's Eq. 1:
            ``softmax(qk / sqrt(dqk) + rab)`` over the visible keys), gated by ``u`` either way.
        num_token_types: 0, or the number of token types ``T`` that get their own affine layer norm and feed-forward
            block after every HSTU block (GPR's token-type-aware LayerNorm / FFN; the stack then takes
            ``token_types``).

    >>> HSTUConfig(embedding_dim=16, linear_hidden_dim=8, attention_dim=8, num_heads=2, num_blocks=2,
    ...            max_seq_len=8).relative_bias
    'time_and_position'
    """

    embedding_dim: int
    linear_hidden_dim: int
    attention_dim: int
    num_heads: int
    num_blocks: int
    max_seq_len: int
    dropout: float = 0.2
    attn_dropout: float = 0.0
    num_buckets: int = 128
    relative_bias: str = "time_and_position"
    epsilon: float = 1e-6
    attention: str = "silu"
    num_token_types: int = 0

    def __post_init__(self) -> None:
        for name in (
            "embedding_dim",
            "linear_hidden_dim",
            "attention_dim",
            "num_heads",
            "num_blocks",
            "max_seq_len",
            "num_buckets",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HSTUConfig.{name} must be a positive int, got {value!r}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"HSTUConfig.{name} must be a float in [0, 1), got {value!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"HSTUConfig.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if (
            isinstance(self.num_token_types, bool)
            or not isinstance(self.num_token_types, int)
            or self.num_token_types < 0
        ):
            raise ValueError(f"HSTUConfig.num_token_types must be an int >= 0, got {self.num_token_types!r}")
        if self.relative_bias not in RELATIVE_BIAS_MODES:
            raise ValueError(
                f"HSTUConfig.relative_bias must be one of {RELATIVE_BIAS_MODES}, got {self.relative_bias!r}"
            )
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) or not self.epsilon > 0:
            raise ValueError(f"HSTUConfig.epsilon must be a positive float, got {self.epsilon!r}")


def build_relative_bias(config: HSTUConfig) -> RelativeAttentionBias | None:
    """The relative bias module one block of ``config`` uses, or None for ``relative_bias="none"``."""
    if config.relative_bias == "time_and_position":
        return RelativeBucketedTimeAndPositionBias(config.max_seq_len, config.num_buckets)
    if config.relative_bias == "position":
        return RelativePositionBias(config.max_seq_len)
    return None


def causal_padding_mask(lengths: Tensor, seq_len: int) -> Tensor:
    """``(B, N, N)`` bool mask, True where query ``i`` may attend key ``j``: ``j <= i`` and ``j < lengths[b]``.

    >>> causal_padding_mask(torch.tensor([2]), 3)[0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 0]]
    """
    positions = torch.arange(seq_len, device=lengths.device)
    causal = positions.unsqueeze(1) >= positions.unsqueeze(0)  # [N, N], [i, j] -> j <= i
    real_key = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, N]
    return causal.unsqueeze(0) & real_key.unsqueeze(1)


def prefix_causal_mask(lengths: Tensor, seq_len: int, num_prefix: int) -> Tensor:
    """``(B, N, N)`` bool mask of a sequence whose first ``num_prefix`` tokens (user / context features) attend to
    each other bidirectionally, every later token causally (GPR's hybrid mask); padded keys never.

    >>> prefix_causal_mask(torch.tensor([4]), 4, 2)[0].int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    """
    in_prefix = torch.arange(seq_len, device=lengths.device) < num_prefix  # [N]
    within_prefix = in_prefix.unsqueeze(1) & in_prefix.unsqueeze(0)  # [N, N]
    real_key = torch.arange(seq_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, N]
    return causal_padding_mask(lengths, seq_len) | (within_prefix.unsqueeze(0) & real_key.unsqueeze(1))


class HSTUBlock(nn.Module):
    """One HSTU layer: fused uvqk projection, pointwise SiLU attention with relative bias, gated output, residual.

    Args:
        config: sizes and options; ``num_blocks`` is not used here.
        relative_attention_bias: the bias module to use; by default one is built from ``config.relative_bias``.

    Call Args:
        x: ``(B, N, D)`` float input, ``N <= max_seq_len`` when a relative bias is used.
        attn_mask: bool, broadcastable to ``(B, N, N)``: True where query ``i`` may attend key ``j``. Defaults to
            the causal mask ``j <= i``; pass ``causal_padding_mask(lengths, N)`` so padded keys never count.
        timestamps: ``(B, N)`` event times or None (see ``RelativeBucketedTimeAndPositionBias``).

    Returns:
        ``(B, N, D)``.

    >>> cfg = HSTUConfig(embedding_dim=16, linear_hidden_dim=8, attention_dim=8, num_heads=2, num_blocks=1,
    ...                  max_seq_len=8)
    >>> HSTUBlock(cfg)(torch.randn(2, 8, 16)).shape
    torch.Size([2, 8, 16])
    """

    def __init__(self, config: HSTUConfig, relative_attention_bias: RelativeAttentionBias | None = None) -> None:
        super().__init__()
        self._embedding_dim: int = config.embedding_dim
        self._linear_dim: int = config.linear_hidden_dim
        self._attention_dim: int = config.attention_dim
        self._num_heads: int = config.num_heads
        self._dropout: float = config.dropout
        self._attn_dropout: float = config.attn_dropout
        self._eps: float = config.epsilon
        self._max_seq_len: int = config.max_seq_len
        self._softmax: bool = config.attention == "softmax"
        hdv = config.linear_hidden_dim * config.num_heads
        hdqk = config.attention_dim * config.num_heads
        self._split_sizes: list[int] = [hdv, hdv, hdqk, hdqk]
        # Official init: uvqk ~ N(0, 0.02); o.weight Xavier-uniform, o.bias keeps nn.Linear's default init.
        self.uvqk: nn.Parameter = nn.Parameter(torch.empty(config.embedding_dim, 2 * hdv + 2 * hdqk).normal_(0.0, 0.02))
        self.o: nn.Linear = nn.Linear(hdv, config.embedding_dim)
        nn.init.xavier_uniform_(self.o.weight)
        self.rel_attn_bias: RelativeAttentionBias | None = (
            relative_attention_bias if relative_attention_bias is not None else build_relative_bias(config)
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, timestamps: Tensor | None = None) -> Tensor:
        batch_size, seq_len, _ = x.shape
        heads = self._num_heads
        normed = F.layer_norm(x, (self._embedding_dim,), eps=self._eps)
        u, v, q, k = torch.split(F.silu(normed @ self.uvqk), self._split_sizes, dim=-1)  # [B, N, H*d] each
        q = q.view(batch_size, seq_len, heads, self._attention_dim).transpose(1, 2)  # [B, H, N, dqk]
        k = k.view(batch_size, seq_len, heads, self._attention_dim).transpose(1, 2)  # [B, H, N, dqk]
        v = v.view(batch_size, seq_len, heads, self._linear_dim).transpose(1, 2)  # [B, H, N, dv]

        scores = q @ k.transpose(-1, -2)  # [B, H, N, N]
        if self._softmax:
            scores = scores / self._attention_dim**0.5
        if self.rel_attn_bias is not None:
            scores = scores + self.rel_attn_bias(timestamps, seq_len).unsqueeze(1)  # bias shared by heads
        if attn_mask is None:
            positions = torch.arange(seq_len, device=x.device)
            attn_mask = positions.unsqueeze(1) >= positions.unsqueeze(0)
        if self._softmax:
            # A query that sees no key (none in the stack's masks) would be all -inf: NaN -> 0.
            weights = torch.softmax(scores.masked_fill(~attn_mask.unsqueeze(-3), float("-inf")), -1).nan_to_num(0.0)
        else:
            scores = F.silu(scores) / self._max_seq_len  # the official code's always-padded N (module docstring)
            # where (not *) so that nothing from a masked pair, not even inf/nan, reaches the output.
            zero = torch.zeros((), dtype=scores.dtype, device=x.device)
            weights = torch.where(attn_mask.unsqueeze(-3), scores, zero)
        if self._attn_dropout > 0.0:
            weights = F.dropout(weights, p=self._attn_dropout, training=self.training)

        attn = (weights @ v).transpose(1, 2).reshape(batch_size, seq_len, heads * self._linear_dim)  # [B, N, H*dv]
        gated = u * F.layer_norm(attn, (heads * self._linear_dim,), eps=self._eps)
        return self.o(F.dropout(gated, p=self._dropout, training=self.training)) + x

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self._embedding_dim}, linear_hidden_dim={self._linear_dim}, "
            f"attention_dim={self._attention_dim}, num_heads={self._num_heads}, dropout={self._dropout}, "
            f"attn_dropout={self._attn_dropout}, epsilon={self._eps}"
        )


class TokenTypeFFN(nn.Module):
    """A residual feed-forward block with parameters per token type (GPR's token-type-aware LayerNorm and FFN):
    ``x + FFN_t(LayerNorm_t(x))`` for a token of type ``t``.

    Call Args:
        x: ``(B, N, D)``; token_types: ``(B, N)`` int64 in ``[0, T)``.

    Returns:
        ``(B, N, D)``.

    >>> ffn = TokenTypeFFN(8, num_types=2)
    >>> ffn(torch.randn(2, 3, 8), torch.tensor([[0, 1, 1], [1, 1, 1]])).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, num_types: int, expansion: int = 2) -> None:
        super().__init__()
        self.norms: nn.ModuleList = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_types))
        self.ffns: nn.ModuleList = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, expansion * dim), nn.GELU(), nn.Linear(expansion * dim, dim))
            for _ in range(num_types)
        )

    def forward(self, x: Tensor, token_types: Tensor) -> Tensor:
        out = x
        for kind, (norm, ffn) in enumerate(zip(self.norms, self.ffns, strict=True)):
            # Every type's block runs on every token (few types, small widths) and keeps its own tokens' outputs.
            out = out + (token_types == kind).unsqueeze(-1) * ffn(norm(x))
        return out


class HSTUStack(nn.Module):
    """``num_blocks`` HSTU blocks over right-padded sequences, each block with its own relative bias module.

    Padded rows (positions ``>= lengths[b]``) of the input are ignored, are zeroed after every block (the official
    jagged code never computes them) and are 0 in the output. ``N`` in the ``1 / N`` attention scaling is the
    configured ``max_seq_len`` (the official code's padded length), so any ``N <= max_seq_len`` gives the same outputs.

    Args:
        config: sizes and options.

    Call Args:
        x: ``(B, N, D)`` float, right-padded, ``N <= max_seq_len``.
        lengths: ``(B,)`` int64 number of real positions per sequence.
        timestamps: ``(B, N)`` int64 event times or None. ``timestamps[b, lengths[b]]`` (when ``< N``) should hold
            the time of the next event (the request): the last real query's time bucket uses it. Later padding is
            never read.
        attn_mask: ``(B, N, N)`` bool, True where query ``i`` may attend key ``j``: the caller's choice of mask
            (:func:`causal_padding_mask`, the default, or :func:`prefix_causal_mask` for a prefix that attends
            bidirectionally). Padded keys are masked whatever it says.
        token_types: ``(B, N)`` int64 type of each token in ``[0, num_token_types)``, with ``num_token_types > 0``.

    Returns:
        ``(B, N, D)``.

    >>> cfg = HSTUConfig(embedding_dim=16, linear_hidden_dim=8, attention_dim=8, num_heads=2, num_blocks=2,
    ...                  max_seq_len=8)
    >>> stack = HSTUStack(cfg).eval()
    >>> y = stack(torch.randn(3, 8, 16), torch.tensor([8, 5, 2]), torch.arange(24).view(3, 8) * 1000)
    >>> y.shape, bool((y[2, 2:] == 0).all())
    (torch.Size([3, 8, 16]), True)
    """

    def __init__(self, config: HSTUConfig) -> None:
        super().__init__()
        self.config: HSTUConfig = config
        self.blocks: nn.ModuleList = nn.ModuleList(HSTUBlock(config) for _ in range(config.num_blocks))
        self.type_ffns: nn.ModuleList | None = (
            nn.ModuleList(TokenTypeFFN(config.embedding_dim, config.num_token_types) for _ in range(config.num_blocks))
            if config.num_token_types
            else None
        )

    def forward(
        self,
        x: Tensor,
        lengths: Tensor,
        timestamps: Tensor | None = None,
        attn_mask: Tensor | None = None,
        token_types: Tensor | None = None,
    ) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.embedding_dim:
            raise ValueError(f"x must have shape (B, N, {self.config.embedding_dim}), got {tuple(x.shape)}")
        batch_size, seq_len, _ = x.shape
        if seq_len > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.config.max_seq_len}")
        if lengths.shape != (batch_size,):
            raise ValueError(f"lengths must have shape ({batch_size},), got {tuple(lengths.shape)}")
        if timestamps is not None and timestamps.shape != (batch_size, seq_len):
            raise ValueError(f"timestamps must have shape ({batch_size}, {seq_len}), got {tuple(timestamps.shape)}")

        if attn_mask is not None and attn_mask.shape != (batch_size, seq_len, seq_len):
            raise ValueError(
                f"attn_mask must have shape ({batch_size}, {seq_len}, {seq_len}), got {tuple(attn_mask.shape)}"
            )

        lengths = lengths.to(x.device)
        real_keys = torch.arange(seq_len, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, N]
        if attn_mask is None:
            attn_mask = causal_padding_mask(lengths, seq_len)  # [B, N, N]
        else:
            attn_mask = attn_mask.to(x.device) & real_keys.unsqueeze(1)
        real = real_keys.unsqueeze(-1)  # [B, N, 1]
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x = torch.where(real, x, zero)
        if (self.type_ffns is None) != (token_types is None):
            raise ValueError("token_types are needed exactly when the config has num_token_types > 0")
        for index, block in enumerate(self.blocks):
            x = torch.where(real, block(x, attn_mask, timestamps), zero)
            if self.type_ffns is not None:
                x = torch.where(real, self.type_ffns[index](x, token_types), zero)
        return x


_OFFICIAL_KEY = re.compile(r"(?:^|[.:/])_attention_layers\.(\d+)\.(.+)$")
_OFFICIAL_TO_OURS: dict[str, str] = {
    "_uvqk": "uvqk",
    "_o.weight": "o.weight",
    "_o.bias": "o.bias",
    "_rel_attn_bias._pos_w": "rel_attn_bias.pos_w",
    "_rel_attn_bias._ts_w": "rel_attn_bias.ts_w",
    "_rel_attn_bias._w": "rel_attn_bias.pos_w",  # official RelativePositionalBias
}


def load_official_hstu_weights(stack: HSTUStack, state: Mapping[str, np.ndarray | Tensor]) -> None:
    """Copies official generative-recommenders HSTU weights into ``stack`` (in place).

    Keys are matched on their ``_attention_layers.{i}.<name>`` suffix, so ``HSTUJagged`` state dicts,
    ``HSTU`` model state dicts (``_hstu._attention_layers...``) and ``param:``-prefixed dumps all work; other keys
    are ignored. ``<name>`` is ``_uvqk``, ``_o.weight``, ``_o.bias``, ``_rel_attn_bias._pos_w``/``._ts_w`` (or
    ``._w`` of the official position-only bias). Bias tables the stack does not have are skipped: a
    ``relative_bias="none"`` stack loaded from a checkpoint with biases is the official model called without
    timestamps, and a ``"position"`` stack keeps only ``pos_w``.

    Args:
        stack: the stack to fill; its config must have the official sizes.
        state: name -> array (numpy or torch).

    Raises:
        KeyError: a parameter of ``stack`` has no counterpart in ``state``, or ``state`` has more blocks.
        ValueError: shapes differ.
    """
    ours = dict(stack.named_parameters())
    loaded: set[str] = set()
    with torch.no_grad():
        for key, value in state.items():
            match = _OFFICIAL_KEY.search(key)
            if match is None or match.group(2) not in _OFFICIAL_TO_OURS:
                continue
            name = f"blocks.{match.group(1)}.{_OFFICIAL_TO_OURS[match.group(2)]}"
            if int(match.group(1)) >= len(stack.blocks):
                raise KeyError(f"{key!r}: the stack has only {len(stack.blocks)} blocks")
            if name not in ours:
                # A relative-bias table the stack has no use for: "none" drops both, "position" drops ts_w.
                continue
            param = ours[name]
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"{key!r} has shape {tuple(tensor.shape)}, {name!r} needs {tuple(param.shape)}")
            param.copy_(tensor.to(dtype=param.dtype, device=param.device))
            loaded.add(name)
    missing = sorted(set(ours) - loaded)
    if missing:
        raise KeyError(f"no official weights for {missing}")
