"""What a user has already done with each candidate: the ranker's user x item cross features.

An advertising ranker reads, besides the candidate itself, features of the user's past with it: whether the user saw
the ad before, how often, how recently, and how far down the funnel they went (viewed, clicked, carted). A generator
that retrieves candidates by id only sees them through its trunk's states. This layer computes three statistics of a
candidate over the history visible at a decoding position and embeds each:

* count: how many visible history entries hold the candidate (``0`` never, ``1`` ... ``max_count``, the last bucket
  for anything more);
* recency: how many entries ago it last occurred, in log2 buckets (``1`` = the position itself, ``2`` = one to two
  back, ``3`` = three to six, ...), the last bucket for anything older;
* deepest level: the highest feedback level among those entries (1 + the cascade stages the interaction reached).

Bucket 0 of each is "never seen" and embeds to zero, so a candidate the user never met gets nothing from this layer.
The statistics depend on item ids only through equality, so they mean the same for an item never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .item_features import value_embedding

__all__ = ["CandidateHistoryConfig", "CandidateHistoryFeatures", "candidate_history_buckets"]


@dataclass(frozen=True)
class CandidateHistoryConfig:
    """Sizes of a :class:`CandidateHistoryFeatures`.

    Attributes:
        hidden_size: ``D``.
        num_levels: feedback levels, 0 (padding / never) included: levels run from 1 to ``num_levels - 1``.
        max_count: occurrence counts at or above this share one bucket.
        recency_buckets: log2 recency buckets besides "never"; older occurrences share the last one.
    """

    hidden_size: int
    num_levels: int
    max_count: int = 4
    recency_buckets: int = 6

    def __post_init__(self) -> None:
        if self.num_levels < 2:
            raise ValueError(f"num_levels counts the padding level 0 and at least one more, got {self.num_levels}")
        if self.max_count < 1 or self.recency_buckets < 1:
            raise ValueError(
                f"max_count and recency_buckets must be positive, got {self.max_count}, {self.recency_buckets}"
            )


def candidate_history_buckets(
    history: Tensor, levels: Tensor, positions: Tensor, candidates: Tensor, max_count: int, recency_buckets: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Count, recency and deepest-level buckets of each candidate over the history up to its decoding position.

    Args:
        history: ``[B, N]`` item ids, 0 = padding.
        levels: ``[B, N]`` feedback level of each entry (0 = padding).
        positions: ``[B, R]`` decoding positions; entries ``0 ... position`` are visible there.
        candidates: ``[B, R, C]`` item ids (0 never matches).
        max_count: the count bucket cap; recency_buckets: the recency bucket cap.

    Returns:
        Three ``[B, R, C]`` long tensors, each 0 where the candidate does not occur in the visible history.

    >>> history, levels = torch.tensor([[5, 7, 5, 0]]), torch.tensor([[1, 3, 2, 0]])
    >>> count, recency, level = candidate_history_buckets(
    ...     history, levels, torch.tensor([[2, 0]]), torch.tensor([[[5, 7, 9], [5, 7, 9]]]), 4, 6
    ... )
    >>> count.tolist(), recency.tolist(), level.tolist()
    ([[[2, 1, 0], [1, 0, 0]]], [[[1, 2, 0], [1, 0, 0]]], [[[2, 3, 0], [1, 0, 0]]])
    """
    steps = torch.arange(history.shape[1], device=history.device)
    visible = steps <= positions.unsqueeze(-1)  # [B, R, N]
    match = (history.unsqueeze(1).unsqueeze(2) == candidates.unsqueeze(-1)) & visible.unsqueeze(2)  # [B, R, C, N]
    match = match & (candidates > 0).unsqueeze(-1)
    count = match.sum(-1)
    seen = count > 0  # an unseen candidate's distance counts from -1: its recency needs the mask
    last_seen = torch.where(match, steps, -1).amax(-1)  # [B, R, C]
    distance = (positions.unsqueeze(-1) - last_seen).clamp(min=0)
    recency = 1 + torch.floor(torch.log2(distance.float() + 1)).long()  # exact: log2 of powers of two is exact
    deepest = torch.where(match, levels.unsqueeze(1).unsqueeze(2), 0).amax(-1)  # 0 where nothing matches
    return count.clamp(max=max_count), torch.where(seen, recency.clamp(max=recency_buckets), 0), deepest


class CandidateHistoryFeatures(nn.Module):
    """``[B, R, C, D]``: the sum of the count, recency and deepest-level embeddings of each candidate (module
    docstring); zero for a candidate not in the visible history.

    Call Args: as :func:`candidate_history_buckets` (history, levels, positions, candidates).

    >>> features = CandidateHistoryFeatures(CandidateHistoryConfig(hidden_size=4, num_levels=3))
    >>> out = features(torch.tensor([[5, 7]]), torch.tensor([[1, 2]]), torch.tensor([[1]]), torch.tensor([[[5, 9]]]))
    >>> out.shape, bool(out[0, 0, 1].eq(0).all())
    (torch.Size([1, 1, 2, 4]), True)
    """

    def __init__(self, config: CandidateHistoryConfig) -> None:
        super().__init__()
        self.config = config
        self.count = value_embedding(config.max_count + 1, config.hidden_size)
        self.recency = value_embedding(config.recency_buckets + 1, config.hidden_size)
        self.level = value_embedding(config.num_levels, config.hidden_size)

    def forward(self, history: Tensor, levels: Tensor, positions: Tensor, candidates: Tensor) -> Tensor:
        count, recency, level = candidate_history_buckets(
            history, levels, positions, candidates, self.config.max_count, self.config.recency_buckets
        )
        return self.count(count) + self.recency(recency) + self.level(level)
