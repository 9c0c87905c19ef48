"""The one result every model of this package returns for a batch of requests (``serve``).

``predict``, ``full_sort_predict``, the diagnostics and the tests read it, so no caller needs a model's internals to
see what each stage of a multi-stage model did.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["ServingResult"]


@dataclass(frozen=True)
class ServingResult:
    """What a model serves for ``B`` requests over a catalogue of ``n_items`` (padding item 0 included).

    Attributes:
        retrieval_scores: ``[B, n_items]`` the generator's (retrieval) score of every item.
        final_scores: ``[B, n_items]`` the order served, what ``full_sort_predict`` returns (for a one-stage model,
            the retrieval scores).
        candidates: ``[B, N]`` item ids a ranking stage ordered, or None for a model without one.
        ranker_scores: ``[B, N]`` the ranking stage's own score of each candidate, or None.
        candidate_scores: ``[B, N]`` the score each candidate is served with (the ranker's, or its correction of the
            retrieval score), or None. Their order is the order of the candidates in ``final_scores``.
    """

    retrieval_scores: Tensor
    final_scores: Tensor
    candidates: Tensor | None = None
    ranker_scores: Tensor | None = None
    candidate_scores: Tensor | None = None
