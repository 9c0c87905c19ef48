"""Relative attention biases for HSTU: learned position and log-bucketed time biases.

Faithful to ``RelativeAttentionBiasModule``, ``RelativePositionalBias`` and
``RelativeBucketedTimeAndPositionBasedBias`` in facebookresearch/generative-recommenders (commit 2e81fab,
``generative_recommenders/research/modeling/sequential/hstu.py``), written without fbgemm and for any sequence
length up to ``max_seq_len``.

The bias of query ``i`` and key ``j`` (``N`` = the sequence length passed in, ``L`` = ``max_seq_len``) is::

    pos_w[j - i + L - 1] + ts_w[bucket(t[i + 1] - t[j])],   with t[N] taken as t[N - 1]
    bucket(d) = clamp(floor(log(max(|d|, 1)) / 0.301), 0, num_buckets)

The time bucket of query ``i`` uses the time of the event *after* ``i``: for the last real item that is the request
time, which right-padded callers store at position ``length`` (see ``HSTUStack``).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from .lookup import lookup

__all__ = [
    "DEFAULT_BUCKET_DIVISOR",
    "RelativeAttentionBias",
    "RelativeBucketedTimeAndPositionBias",
    "RelativePositionBias",
    "bucketize_time_deltas",
]

#: ``log(|dt|) / 0.301`` buckets time gaps by (roughly) powers of two, as the official ``bucketization_fn``.
DEFAULT_BUCKET_DIVISOR: float = 0.301


def bucketize_time_deltas(deltas: Tensor, num_buckets: int, divisor: float = DEFAULT_BUCKET_DIVISOR) -> Tensor:
    """Maps time differences to bucket ids ``clamp(floor(log(max(|d|, 1)) / divisor), 0, num_buckets)``.

    The logarithm is taken in float32, as the official code does (``torch.log`` of an int64 tensor), so bucket
    boundaries match it exactly.

    Args:
        deltas: time differences of any shape, integer or floating point.
        num_buckets: the largest bucket id.
        divisor: the divisor of the natural logarithm.

    Returns:
        int64 tensor of the shape of ``deltas``, values in ``[0, num_buckets]``.

    >>> bucketize_time_deltas(torch.tensor([0, 1, 2, -3, 10**9]), num_buckets=128).tolist()
    [0, 0, 2, 3, 68]
    """
    magnitude = deltas.abs().clamp(min=1).to(torch.float32)
    # log(.) >= 0 here, so the official ``.long()`` truncation is a floor.
    return torch.clamp((torch.log(magnitude) / divisor).long(), min=0, max=num_buckets)


class RelativeAttentionBias(nn.Module, abc.ABC):
    """Base class of the additive relative attention biases used by ``HSTUBlock``.

    Call Args:
        timestamps: ``(B, N)`` event times, or None when the data has no time.
        seq_len: ``N``, the (padded) sequence length of the attention.

    Returns:
        float tensor broadcastable to ``(B, N, N)``; entry ``[b, i, j]`` is added to the score of query ``i`` and
        key ``j``.
    """

    @abc.abstractmethod
    def forward(self, timestamps: Tensor | None, seq_len: int) -> Tensor:
        raise NotImplementedError


def _relative_position_bias(weights: Tensor, max_seq_len: int, seq_len: int) -> Tensor:
    """``(1, N, N)`` bias with ``[0, i, j] = weights[j - i + max_seq_len - 1]``."""
    if seq_len < 1 or seq_len > max_seq_len:
        raise ValueError(f"seq_len must be in [1, max_seq_len={max_seq_len}], got {seq_len}")
    positions = torch.arange(seq_len, device=weights.device)
    index = positions.unsqueeze(0) - positions.unsqueeze(1) + (max_seq_len - 1)  # [N, N], [i, j] -> j - i + L - 1
    return lookup(weights, index).unsqueeze(0)


class RelativePositionBias(RelativeAttentionBias):
    """Learned relative position bias only (the official ``RelativePositionalBias``); ignores timestamps.

    Args:
        max_seq_len: ``L``, the longest sequence the bias supports; the table has ``2L - 1`` entries.

    Call Args:
        timestamps: ignored (may be None).
        seq_len: ``N <= L``.

    Returns:
        ``(1, N, N)`` float tensor, ``[0, i, j] = pos_w[j - i + L - 1]``.

    >>> bias = RelativePositionBias(max_seq_len=8)
    >>> bias(None, 5).shape
    torch.Size([1, 5, 5])
    """

    def __init__(self, max_seq_len: int) -> None:
        super().__init__()
        self._max_seq_len: int = max_seq_len
        self.pos_w: nn.Parameter = nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(mean=0.0, std=0.02))

    def forward(self, timestamps: Tensor | None, seq_len: int) -> Tensor:
        del timestamps
        return _relative_position_bias(self.pos_w, self._max_seq_len, seq_len)

    def extra_repr(self) -> str:
        return f"max_seq_len={self._max_seq_len}"


class RelativeBucketedTimeAndPositionBias(RelativeAttentionBias):
    """Learned relative position bias plus a bias over log-spaced time-gap buckets, shared by all heads.

    Faithful to the official ``RelativeBucketedTimeAndPositionBasedBias``. Without timestamps it returns the
    position bias only (the official code instead skips the whole bias when there are no timestamps; use
    ``relative_bias="none"`` in ``HSTUConfig`` for that).

    Args:
        max_seq_len: ``L``, the longest sequence the bias supports; the position table has ``2L - 1`` entries.
        num_buckets: the largest time bucket id; the time table has ``num_buckets + 1`` entries.
        bucket_divisor: divisor of ``log(|dt|)`` in the bucket formula (0.301 as the official code).

    Call Args:
        timestamps: ``(B, N)`` event times (int64 or float), or None. Query ``i`` uses ``timestamps[:, i + 1]``
            and the last query uses ``timestamps[:, N - 1]``.
        seq_len: ``N <= L``; must equal ``timestamps.shape[1]`` when timestamps are given.

    Returns:
        ``(B, N, N)`` float tensor with timestamps, ``(1, N, N)`` without.

    >>> bias = RelativeBucketedTimeAndPositionBias(max_seq_len=8, num_buckets=128)
    >>> bias(torch.tensor([[0, 10, 100, 1000]]), 4).shape
    torch.Size([1, 4, 4])
    """

    def __init__(
        self, max_seq_len: int, num_buckets: int = 128, bucket_divisor: float = DEFAULT_BUCKET_DIVISOR
    ) -> None:
        super().__init__()
        self._max_seq_len: int = max_seq_len
        self._num_buckets: int = num_buckets
        self._bucket_divisor: float = bucket_divisor
        # Same creation order and init as the official module: ts_w, then pos_w, both N(0, 0.02).
        self.ts_w: nn.Parameter = nn.Parameter(torch.empty(num_buckets + 1).normal_(mean=0.0, std=0.02))
        self.pos_w: nn.Parameter = nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(mean=0.0, std=0.02))

    def forward(self, timestamps: Tensor | None, seq_len: int) -> Tensor:
        position_bias = _relative_position_bias(self.pos_w, self._max_seq_len, seq_len)  # [1, N, N]
        if timestamps is None:
            return position_bias
        if timestamps.dim() != 2 or timestamps.shape[1] != seq_len:
            raise ValueError(f"timestamps must have shape (B, {seq_len}), got {tuple(timestamps.shape)}")
        # [B, N + 1]: t[N] := t[N - 1], so the last query compares against its own time.
        extended = torch.cat([timestamps, timestamps[:, -1:]], dim=1)
        deltas = extended[:, 1:].unsqueeze(2) - extended[:, :-1].unsqueeze(1)  # [B, N, N], [b, i, j] = t[i+1] - t[j]
        buckets = bucketize_time_deltas(deltas, self._num_buckets, self._bucket_divisor)
        time_bias = lookup(self.ts_w, buckets)  # [B, N, N]
        return position_bias + time_bias

    def extra_repr(self) -> str:
        return f"max_seq_len={self._max_seq_len}, num_buckets={self._num_buckets}, divisor={self._bucket_divisor}"
