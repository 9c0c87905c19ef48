"""OneRanker's step 2: task tokens and Fake Item Tokens decoded against the sequence, and dual-channel retrieval.

One task token per task (ordered from interest to value, causal among themselves) and ``F`` Fake Item Tokens
(k-means centroids of the normalised item vectors, recomputed on a schedule, never learned) are the queries of a
heterogeneous decoder: cross-attention to the step-1 states first, then self-attention with task->task causal,
task<->fake visible and fake<->fake blocked. Each task token retrieves items through two channels: its own vector,
and its preference over the fake tokens applied to the items' cosine similarities to the centroids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbole_oneranker.model.tokenizers import kmeans

from .decoders import QueryDecoder, QueryDecoderConfig

__all__ = ["TaskTokenDecoder", "TaskTokenConfig", "heterogeneous_mask"]


@dataclass
class TaskTokenConfig:
    """Sizes and switches of a :class:`TaskTokenDecoder`.

    Attributes:
        decoder: the heterogeneous decoder (width, heads, layers, dropout, cross-attention first).
        num_tasks: task tokens (1 = one shared token for every task: "w/o multi-task decoupling").
        num_fake_items: Fake Item Tokens (0 = "w/o Fake-Item target").
        heterogeneous_mask: task->task causal, task<->fake visible, fake<->fake blocked; False = full attention.
    """

    decoder: QueryDecoderConfig
    num_tasks: int
    num_fake_items: int = 32
    heterogeneous_mask: bool = True

    def __post_init__(self) -> None:
        if self.num_tasks < 1 or self.num_fake_items < 0:
            raise ValueError(f"need at least one task token and no negative count of fake items: {self}")


def heterogeneous_mask(num_tasks: int, num_fake_items: int, enabled: bool = True) -> Tensor:
    """``[T + F, T + F]`` self-attention mask, True = may attend: tasks causal, task<->fake, a fake token sees only
    itself; all True when not ``enabled``.

    >>> heterogeneous_mask(2, 2).int().tolist()
    [[1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 1]]
    """
    size = num_tasks + num_fake_items
    if not enabled:
        return torch.ones(size, size, dtype=torch.bool)
    mask = torch.eye(size, dtype=torch.bool)
    mask[:num_tasks, :num_tasks] = torch.ones(num_tasks, num_tasks, dtype=torch.bool).tril()
    mask[:num_tasks, num_tasks:] = True
    mask[num_tasks:, :num_tasks] = True
    return mask


class TaskTokenDecoder(nn.Module):
    """Step 2: decode task and Fake Item Tokens at positions of a sequence, and turn them into retrieval queries.

    Call Args:
        states: ``[B, N, D]`` step-1 states (the shared memory).
        visible: ``[B, R, N]`` bool, the states each of ``R`` decoding positions may read.

    Returns:
        ``[B, R, T + F, D]`` the task tokens' outputs, then the fake tokens'.

    >>> config = TaskTokenConfig(QueryDecoderConfig(hidden_size=8), num_tasks=2, num_fake_items=3)
    >>> step2 = TaskTokenDecoder(config).eval()
    >>> step2.refresh_fake_items(F.normalize(torch.randn(20, 8), dim=-1))
    >>> tokens = step2(torch.randn(1, 4, 8), torch.ones(1, 2, 4, dtype=torch.bool))
    >>> tokens.shape, step2.task_queries(tokens[:, 0]).shape
    (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 8]))
    """

    def __init__(self, config: TaskTokenConfig) -> None:
        super().__init__()
        self.config: TaskTokenConfig = config
        dim = config.decoder.hidden_size
        self.task_tokens: nn.Parameter = nn.Parameter(torch.randn(config.num_tasks, dim) * 0.02)
        # Tells the decoder a fake token from a task token (both start near the item space).
        self.fake_type: nn.Parameter = nn.Parameter(torch.zeros(dim))
        self.fake_centroids: Tensor
        self.register_buffer("fake_centroids", torch.zeros(config.num_fake_items, dim), persistent=True)
        self.decoder: QueryDecoder = QueryDecoder(config.decoder)
        self.self_mask: Tensor
        self.register_buffer(
            "self_mask",
            heterogeneous_mask(config.num_tasks, config.num_fake_items, config.heterogeneous_mask),
            persistent=False,
        )

    @property
    def num_fake_items(self) -> int:
        return self.config.num_fake_items

    @torch.no_grad()
    def refresh_fake_items(self, item_vectors: Tensor, seed: int = 0) -> None:
        """Recompute the Fake Item Tokens: k-means centroids of ``item_vectors`` (``[n, D]``, normalised, padding
        excluded). Seeded and on a private generator, so every process computes the same tokens."""
        if self.num_fake_items:
            self.fake_centroids.copy_(kmeans(item_vectors, self.num_fake_items, seed=seed))

    def forward(self, states: Tensor, visible: Tensor) -> Tensor:
        batch, ranked = visible.shape[:2]
        queries: Tensor = self.task_tokens
        if self.num_fake_items:
            fake = self.fake_centroids * math.sqrt(self.config.decoder.hidden_size) + self.fake_type
            queries = torch.cat([queries, fake], dim=0)
        queries = queries.expand(batch, ranked, -1, -1)
        return self.decoder(queries, states, visible, self.self_mask)

    def task_queries(self, tokens: Tensor) -> Tensor:
        """``[P, T, D]``: one query per task token that scores a normalised item as both retrieval channels.

        The task channel is ``<n(h_t), e>``; the centroid channel ``<softmax_f <h_t, g_f> / sqrt(D), cos(e, C_f)>``,
        where ``g_f`` are the fake tokens' outputs and ``C_f`` the centroids. For a normalised item,
        ``cos(e, C_f) = <e, n(C_f)>``, so the centroid channel is ``<sum_f pref_tf n(C_f), e>``: adding that mixture
        of centroid directions to the task vector gives both channels in one product with the items, instead of a
        second catalogue-sized product and a sum.

        Args:
            tokens: ``[P, T + F, D]`` outputs of :meth:`forward` at ``P`` positions.
        """
        num_tasks = tokens.shape[1] - self.num_fake_items
        task_vectors = tokens[:, :num_tasks]  # [P, T, D]
        queries = F.normalize(task_vectors, dim=-1)
        if self.num_fake_items:
            preference = torch.softmax(
                torch.einsum("ptd,pfd->ptf", task_vectors, tokens[:, num_tasks:]) / math.sqrt(tokens.shape[-1]),
                dim=-1,
            )  # [P, T, F]
            queries = queries + preference @ F.normalize(self.fake_centroids, dim=-1)  # [P, T, D]
        return queries
