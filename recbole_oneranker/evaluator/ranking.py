"""Where each target lands in a ranking, and what that rank scores: the one rank computation, the one ranks ->
metrics function and the one seen-item mask of the package (evaluation, benchmarks and diagnostics share them).

NDCG and MRR follow RecBole's definitions with one positive per user, the leave-one-out case: a target at rank
r <= K scores 1 / log2(r + 1) and 1 / r, a miss 0. No library computes them from ranks by that definition
(``sklearn.metrics.ndcg_score`` takes score matrices and averages over ties), so they are written here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def target_ranks(scores: Tensor, is_target: Tensor) -> Tensor:
    """``[B]`` 1-based rank, among the ``[B, N]`` ``scores``, of each row's best-scored target (``is_target``).

    Ties count in the target's favour: an item scoring exactly as the target does not push it down. A target at
    -inf (masked) comes after every finite score.
    """
    best_target = scores.masked_fill(~is_target, -math.inf).amax(1, keepdim=True)
    return (scores > best_target).sum(1) + 1


def rank_metrics(ranks: np.ndarray, k: int | None = None) -> dict[str, np.ndarray]:
    """Per user, ``hit``, ``ndcg`` and ``mrr`` at cut-off ``k`` (None: no cut-off) of one target at the 1-based
    ``ranks``; a rank of 0 (not ranked) is a miss."""
    ranks = np.asarray(ranks)
    hit = (ranks > 0) & (ranks <= (k if k is not None else np.inf))
    rank = np.maximum(ranks, 1)
    return {
        "hit": hit.astype(float),
        "ndcg": np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0),
        "mrr": np.where(hit, 1.0 / rank, 0.0),
    }


def seen_items(history: Tensor, n_items: int) -> Tensor:
    """``[B, n_items]`` whether each item is in the row's 0-padded ``history`` (``[B, L]``); the padding item 0
    never is."""
    seen = torch.zeros(len(history), n_items, dtype=torch.bool, device=history.device).scatter_(1, history, True)
    seen[:, 0] = False
    return seen


def mask_seen_items(scores: Tensor, history: Tensor) -> Tensor:
    """HSTU's protocol: the ``[B, n_items]`` ``scores`` of every item in the row's history set to -inf, in place
    (a target the user has seen before too: the protocol does not reward repeat consumption); returns ``scores``."""
    return scores.masked_fill_(seen_items(history.to(scores.device), scores.shape[1]), -math.inf)
