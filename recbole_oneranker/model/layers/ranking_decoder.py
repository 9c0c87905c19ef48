"""OneRanker's step 3, the R-decoder: a ranking token and candidate items decoded against what steps 1 and 2 computed.

Queries are one ranking token and the candidates' item embeddings; keys and values are the step-1 states (shared per
row) and, when injected, step 2's task and fake tokens at the same position (the pass-through: nothing is
recomputed). Candidates see only the ranking token and themselves, and the ranking token only itself, so a
candidate's score never depends on the rest of its set. Per-stage heads give one logit per cascade stage and a value
head a predicted value: the ranker's own score is the log of an eCPM-like product, chained stage probabilities times
the value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decoders import QueryDecoder, QueryDecoderConfig

__all__ = ["RankingDecoder", "RankingDecoderConfig", "candidate_mask"]


@dataclass
class RankingDecoderConfig:
    """Sizes of a :class:`RankingDecoder`.

    Attributes:
        decoder: the query decoder (width, heads, layers, dropout).
        num_stages: cascade stages predicted per candidate (1 for implicit feedback).
        predicts_value: a value head (data with a value field).
    """

    decoder: QueryDecoderConfig
    num_stages: int = 1
    predicts_value: bool = False

    def __post_init__(self) -> None:
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be positive, got {self.num_stages}")


def candidate_mask(num_candidates: int) -> Tensor:
    """``[1 + N, 1 + N]`` step-3 self-attention mask: the ranking token sees itself; candidate i sees it and itself.

    >>> candidate_mask(2).int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    """
    mask = torch.eye(1 + num_candidates, dtype=torch.bool)
    mask[:, 0] = True
    return mask


class RankingDecoder(nn.Module):
    """Step 3: per-stage logits and a predicted value for each candidate.

    Call Args:
        candidates: ``[B, R, N, D]`` the candidates' input embeddings at ``R`` positions of each row.
        states: ``[B, M, D]`` step-1 states (shared memory).
        visible: ``[B, R, M]`` bool, the states each position may read.
        private: ``[B, R, K, D]`` step-2 tokens at each position (the pass-through), or None.

    Returns:
        ``stage_logits`` ``[B, R, N, S]`` and ``log_value`` ``[B, R, N]`` (0 without a value head).

    >>> step3 = RankingDecoder(RankingDecoderConfig(QueryDecoderConfig(hidden_size=8), num_stages=2)).eval()
    >>> logits, log_value = step3(torch.randn(1, 1, 5, 8), torch.randn(1, 3, 8), torch.ones(1, 1, 3, dtype=torch.bool))
    >>> logits.shape, step3.own_scores(logits, log_value).shape
    (torch.Size([1, 1, 5, 2]), torch.Size([1, 1, 5]))
    """

    def __init__(self, config: RankingDecoderConfig) -> None:
        super().__init__()
        self.config: RankingDecoderConfig = config
        dim = config.decoder.hidden_size
        self.rank_token: nn.Parameter = nn.Parameter(torch.randn(dim) * 0.02)
        self.decoder: QueryDecoder = QueryDecoder(config.decoder)
        self.stage_heads: nn.ModuleList = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1)) for _ in range(config.num_stages)
        )
        self.value_head: nn.Linear | None = nn.Linear(dim, 1) if config.predicts_value else None

    def forward(
        self, candidates: Tensor, states: Tensor, visible: Tensor, private: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        batch, ranked, num, _ = candidates.shape
        queries = torch.cat([self.rank_token.expand(batch, ranked, 1, -1), candidates], dim=2)  # [B, R, 1 + N, D]
        mask = candidate_mask(num).to(states.device)
        candidate_out = self.decoder(queries, states, visible, mask, private)[:, :, 1:]  # [B, R, N, D]
        stage_logits = torch.cat([head(candidate_out) for head in self.stage_heads], dim=-1)  # [B, R, N, S]
        log_value = (
            torch.log(F.softplus(self.value_head(candidate_out)).squeeze(-1) + 1e-6)
            if self.value_head is not None
            else torch.zeros_like(stage_logits[..., 0])
        )
        return stage_logits, log_value

    @staticmethod
    def own_scores(stage_logits: Tensor, log_value: Tensor) -> Tensor:
        """``[..., N]`` the ranker's own score of each candidate: log eCPM-like (the sum of the stages'
        log-sigmoids, i.e. chained stage probabilities, + log predicted value)."""
        return F.logsigmoid(stage_logits).sum(-1) + log_value
