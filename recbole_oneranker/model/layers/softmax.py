"""Next-item softmax losses shared by the generative models, and the learned repeat shift.

The loss is a cross-entropy of each position's target over all items (``full_softmax``) or over uniformly sampled
negatives (``sampled_softmax``, HSTU's: a negative equal to the target is masked), on logits a model's scorer makes
from L2-normalised item vectors (cosines over a temperature). ``history_negatives`` adds each position's earlier
history items to its negatives; the :class:`RepeatShift` adds one learned shift to the score of every item the user
has already seen, in training and in ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSS_TYPES", "NextItemSoftmax", "RepeatShift", "SoftmaxConfig", "distinct_items", "seen_before"]

LOSS_TYPES: tuple[str, ...] = ("sampled_softmax", "full_softmax")

Scorer = Callable[[Tensor], Tensor]
ItemVectors = Callable[..., Tensor]
ItemLogProbs = Callable[[Tensor, Tensor], Tensor]  # (rows [K], items [K]) -> [K] log-probabilities


@dataclass
class SoftmaxConfig:
    """Options of a :class:`NextItemSoftmax`.

    Attributes:
        num_items: catalogue size, padding item 0 included (never a candidate).
        embedding_dim: width ``D`` of the item vectors (decides how sampled logits are computed, never their value).
        loss_type: ``"sampled_softmax"`` or ``"full_softmax"``.
        num_negatives: uniform negatives per position (sampled softmax).
        history_negatives: each position's earlier history items are negatives too (sampled softmax; the full
            softmax has every item as a negative already).
        temperature: softmax temperature over cosine similarities.
    """

    num_items: int
    embedding_dim: int
    loss_type: str = "sampled_softmax"
    num_negatives: int = 128
    history_negatives: bool = False
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"Make sure 'loss_type' in {list(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.num_negatives < 1 or self.temperature <= 0:
            raise ValueError(f"num_negatives must be positive and temperature > 0: {self}")


def seen_before(history: Tensor) -> Tensor:
    """``[B, N, N]``: for each position t, the history items at positions <= t (what the user has seen when the
    item after t is predicted); 0 elsewhere. ``history``: ``[B, N]`` item ids, 0-padded.

    >>> seen_before(torch.tensor([[5, 6, 7]]))[0].tolist()
    [[5, 0, 0], [5, 6, 0], [5, 6, 7]]
    """
    positions = torch.arange(history.shape[1], device=history.device)
    return history.unsqueeze(1) * (positions.unsqueeze(0) <= positions.unsqueeze(1))


def distinct_items(items: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, items)``, ``[K]`` each: every distinct non-padding item of each row of ``items`` (``[P, L]``,
    0-padded), once, so that writing at these pairs never writes (or back-propagates through) an entry twice.

    >>> [t.tolist() for t in distinct_items(torch.tensor([[3, 3, 0], [5, 1, 0]]))]
    [[0, 1, 1], [3, 1, 5]]
    """
    ordered = items.sort(dim=1).values
    distinct = F.pad(ordered[:, 1:] != ordered[:, :-1], (1, 0), value=True) & (ordered > 0)
    rows = torch.arange(len(items), device=items.device).unsqueeze(1).expand_as(ordered)
    return rows[distinct], ordered[distinct]


class RepeatShift(nn.Module):
    """One learned shift of the score of every item the user has already interacted with: negative where users
    rarely repeat, positive where they often do. It starts at 0 (the scores of a model without it).

    Call Args:
        scores: ``[P, ..., n_items]`` over the whole catalogue (``items`` None), or ``[P, ..., S]`` / ``[P]`` of
            ``items`` (``[P, S]`` / ``[P]``); dimensions between the first and the items' share the shift (tasks).
        seen: ``[P, L]`` the items each row has seen, 0-padded.
        items: the scored item ids, or None for the whole catalogue.
        temperature: divides the shift when ``scores`` are logits over a temperature; None for cosines.

    Returns:
        ``scores`` with the shift added where the item is among the row's seen items.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shift: nn.Parameter = nn.Parameter(torch.zeros(()))

    def forward(
        self, scores: Tensor, seen: Tensor, items: Tensor | None = None, temperature: float | None = None
    ) -> Tensor:
        shift = self.shift if temperature is None else self.shift / temperature
        if items is None:
            # Write the few seen entries, not a [P, n_items] mask over the catalogue: ranking a Beauty batch (12k
            # items) spent a quarter of its time on the mask's arithmetic.
            rows, seen_items = distinct_items(seen)  # [K], [K]
            by_item = scores.movedim(-1, 1)  # [P, n_items, ...]
            return by_item.index_put((rows, seen_items), by_item[rows, seen_items] + shift).movedim(1, -1)
        is_seen = (items.unsqueeze(-1) == seen.view(len(seen), *[1] * (items.dim() - 1), -1)).any(-1)
        is_seen = is_seen.view(len(is_seen), *[1] * (scores.dim() - is_seen.dim()), *is_seen.shape[1:])
        return scores + shift * is_seen

    def log_normaliser(self, seen_mass: Tensor) -> Tensor:
        """``[P]`` log Z = log(1 - S + exp(shift) S) of a distribution whose seen items held the probability S
        (``seen_mass``, ``[P]``) before the shift: a model that scores its items by log-probabilities (a SID
        generator) keeps a distribution after the shift by subtracting it. ``seen_mass`` enters as a constant: the
        shift is what learns from it."""
        seen_mass = seen_mass.detach().clamp(0.0, 1.0)
        return torch.logaddexp(torch.log1p(-seen_mass), self.shift + seen_mass.log())

    def target_log_prob_change(self, seen: Tensor, targets: Tensor, log_probs_of: ItemLogProbs) -> Tensor:
        """``[P]`` what the shift adds to the log-probability of each row's target (``targets``: ``[P]``) under a
        distribution held fixed, each row having seen ``seen`` (``[P, L]``, 0-padded): ``shift`` where the target is
        seen, less :meth:`log_normaliser`. Its negative is the shift's loss. ``log_probs_of(rows, items)`` gives the
        distribution's log-probability of ``items[k]`` for row ``rows[k]`` (``[K]`` each); it is read without
        gradient, for each row's distinct seen items only."""
        with torch.no_grad():
            rows, items = distinct_items(seen)
            mass = seen.new_zeros(len(seen), dtype=torch.float).index_add(0, rows, log_probs_of(rows, items).exp())
        target_seen = (seen == targets.unsqueeze(1)).any(1) & (targets > 0)
        return self.shift * target_seen - self.log_normaliser(mass)

    def normalised(self, log_probs: Tensor, seen: Tensor) -> Tensor:
        """``[P, n_items]`` the distribution ``log_probs`` (``[P, n_items]``, log-probabilities over the
        catalogue) with the shift on each row's seen items (``seen``: ``[P, L]``, 0-padded), renormalised:
        ``log_softmax(log_probs + shift * seen)`` without a pass over the catalogue's normaliser."""
        rows, items = distinct_items(seen)
        mass = log_probs.new_zeros(len(log_probs)).index_add(0, rows, log_probs[rows, items].exp())
        return self(log_probs, seen) - self.log_normaliser(mass).unsqueeze(1)


class NextItemSoftmax:
    """Cross-entropy of each position's target item, over all items or over uniformly sampled negatives.

    Args:
        config: the loss options.
        item_vectors: ``item_vectors()`` -> ``[n_items, D]`` normalised table; ``item_vectors(ids)`` -> the rows of
            ``ids`` (``[*ids.shape, D]``).
        repeat_shift: the model's :class:`RepeatShift`, or None.

    Call Args:
        scorer: maps normalised item vectors, ``[n_items, D]`` (all items) or ``[P, C, D]`` (per position), to
            logits ``[P, ..., n_items]`` or ``[P, ..., C]`` (extra dims share the negatives, e.g. tasks).
        targets: ``[P]`` item ids.
        seen: ``[P, L]`` items each position has already seen (0 = none), for ``history_negatives`` and the repeat
            shift; or None.

    Returns:
        ``[P, ...]`` negative log-likelihoods.
    """

    def __init__(self, config: SoftmaxConfig, item_vectors: ItemVectors, repeat_shift: RepeatShift | None) -> None:
        self.config = config
        self.item_vectors = item_vectors
        self.repeat_shift = repeat_shift

    def __call__(self, scorer: Scorer, targets: Tensor, seen: Tensor | None = None) -> Tensor:
        if self.config.loss_type == "full_softmax":
            logits = self._shift_seen(scorer(self.item_vectors()), seen)  # [P, ..., n_items]
            logits[..., 0] = float("-inf")  # the padding item is never a candidate
            index = targets.view(-1, *[1] * (logits.dim() - 1)).expand(*logits.shape[:-1], 1)
            return -F.log_softmax(logits, dim=-1).gather(-1, index).squeeze(-1)
        negatives = torch.randint(
            1, self.config.num_items, (len(targets), self.config.num_negatives), device=targets.device
        )
        if self.config.history_negatives and seen is not None:
            negatives = torch.cat([negatives, seen], dim=1)  # [P, K + L]
        sampled = torch.cat([targets.unsqueeze(1), negatives], dim=1)  # [P, 1 + K (+ L)]
        logits = self._shift_seen(self.sampled_logits(scorer, sampled), seen, sampled)
        # A negative equal to the target (or a padding slot of seen) is no negative.
        excluded = F.pad((negatives == targets.unsqueeze(1)) | (negatives == 0), (1, 0))  # [P, 1 + K (+ L)]
        logits = logits.masked_fill(excluded.view(len(targets), *[1] * (logits.dim() - 2), -1), float("-inf"))
        return -F.log_softmax(logits, dim=-1)[..., 0]

    def _shift_seen(self, logits: Tensor, seen: Tensor | None, items: Tensor | None = None) -> Tensor:
        if self.repeat_shift is None or seen is None:
            return logits
        return self.repeat_shift(logits, seen, items, temperature=self.config.temperature)

    def sampled_logits(self, scorer: Scorer, sampled: Tensor) -> Tensor:
        """Logits ``[P, ..., S]`` of the ``sampled`` item ids (``[P, S]``) of each position.

        Two ways to the same numbers: score the gathered ``[P, S, D]`` vectors (the reference path), or score the
        whole catalogue with one matrix product and gather ``[P, S]`` from it. The second is chosen when the
        catalogue's logits are no bigger than the gathered vectors (``n_items <= S * D``, e.g. ml-100k): it skips
        the gather and its scatter-add backward, which dominate an HSTU epoch on CPU.
        """
        if not self.scores_whole_catalogue(sampled.shape[1]):
            return scorer(self.item_vectors(sampled))
        logits = scorer(self.item_vectors())  # [P, ..., n_items]
        index = sampled.view(len(sampled), *[1] * (logits.dim() - 2), -1).expand(*logits.shape[:-1], -1)
        return logits.gather(-1, index)

    def scores_whole_catalogue(self, num_sampled: int) -> bool:
        """Whether :meth:`sampled_logits` scores every item (see there)."""
        return self.config.num_items <= num_sampled * self.config.embedding_dim
