"""A repeat-explore mixture (RepeatNet, Ren et al., AAAI 2019) over a generator's distribution.

A generator of semantic IDs has no direct way to point back at an item the user has already interacted with: it
must generate that item's code path like any other. On data where users return to items (58.5% of the Taobao
funnel's test targets repeat a history item, results/diagnosis/repeats-taobao.md) that costs most of its accuracy.
This layer mixes the generator's distribution with a copy distribution over the history:

    p(item) = P(repeat) * p_copy(item) + P(explore) * p_generate(item)

``P(repeat) = sigmoid(<w, s> + b)`` from the user state ``s``; ``p_copy(item)`` is the attention of ``s`` over the
states of the visible history positions, summed over the positions that hold ``item``. Everything is computed in
log space. Id 0 is padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["RepeatExplore", "RepeatExploreConfig", "RepeatExploreLogProbs"]


@dataclass(frozen=True)
class RepeatExploreConfig:
    """Sizes of a :class:`RepeatExplore`.

    Attributes:
        hidden_size: ``D``.
    """

    hidden_size: int


@dataclass
class RepeatExploreLogProbs:
    """The mixture's parts for ``P`` users.

    Attributes:
        log_repeat: ``[P]`` log P(repeat).
        log_explore: ``[P]`` log P(explore).
        log_attention: ``[P, N]`` log of the copy attention over history positions (``-inf`` where not visible).
        history: ``[P, N]`` the item ids at those positions (0 = padding).
    """

    log_repeat: Tensor
    log_explore: Tensor
    log_attention: Tensor
    history: Tensor

    def of_targets(self, targets: Tensor, log_generated: Tensor) -> Tensor:
        """``[P]`` log p(target) under the mixture.

        Args:
            targets: ``[P]`` item ids.
            log_generated: ``[P]`` the generator's log-probability of each target.
        """
        at_target = (self.history == targets.unsqueeze(1)) & (targets.unsqueeze(1) > 0)
        copy = (self.log_attention.exp() * at_target).sum(dim=1)  # [P]; 0 when the target is not in the history
        return torch.logaddexp(self.log_repeat + _safe_log(copy), self.log_explore + log_generated)

    def of_catalogue(self, log_generated: Tensor) -> Tensor:
        """``[P, n_items]`` log p(item) of every item under the mixture (``-inf`` for the padding item 0), from the
        generator's log-probabilities ``log_generated`` (``[P, n_items]``; column 0 any value)."""
        copy = torch.zeros_like(log_generated).scatter_add(1, self.history, self.log_attention.exp())
        mixed = torch.logaddexp(
            self.log_repeat.unsqueeze(1) + _safe_log(copy), self.log_explore.unsqueeze(1) + log_generated
        )
        padding = torch.arange(mixed.shape[1], device=mixed.device) == 0
        return mixed.masked_fill(padding, float("-inf"))  # never the padding item


class RepeatExplore(nn.Module):
    """The repeat gate and the copy attention (module docstring).

    Call Args:
        users: ``[P, D]`` user states.
        history_states: ``[B, N, D]`` states of the history positions (keys of the copy attention).
        history: ``[B, N]`` the item ids at those positions.
        visible: ``[P, N]`` bool, the positions each user may copy from (at least one per user).
        rows: ``[P]`` the row of ``history_states`` each user copies from; None = user ``p`` from row ``p``. (Keys
            are projected once per row, however many users read it.)

    Returns:
        :class:`RepeatExploreLogProbs`.

    >>> mixture = RepeatExplore(RepeatExploreConfig(hidden_size=4))
    >>> history, visible = torch.tensor([[5, 2, 0]]), torch.tensor([[1, 0, 0], [1, 1, 0]]).bool()
    >>> parts = mixture(torch.randn(2, 4), torch.randn(1, 3, 4), history, visible, rows=torch.tensor([0, 0]))
    >>> parts.log_attention.exp().sum(1), (parts.log_repeat.exp() + parts.log_explore.exp()).tolist()
    (tensor([1., 1.], grad_fn=<SumBackward1>), [1.0, 1.0])
    """

    def __init__(self, config: RepeatExploreConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 1)

    def forward(
        self, users: Tensor, history_states: Tensor, history: Tensor, visible: Tensor, rows: Tensor | None = None
    ) -> RepeatExploreLogProbs:
        keys = self.key(history_states)
        if rows is not None:
            keys, history = keys[rows], history[rows]  # [P, N, D], [P, N]
        logits = torch.einsum("pd,pnd->pn", self.query(users), keys) / math.sqrt(users.shape[-1])
        log_attention = logits.masked_fill(~visible, float("-inf")).log_softmax(dim=1)
        gate = self.gate(users).squeeze(-1)  # [P]
        return RepeatExploreLogProbs(
            log_repeat=nn.functional.logsigmoid(gate),
            log_explore=nn.functional.logsigmoid(-gate),
            log_attention=log_attention.masked_fill(~visible, float("-inf")),
            history=history,
        )

    def at_positions(self, states: Tensor, history: Tensor, rows: Tensor, columns: Tensor) -> RepeatExploreLogProbs:
        """The parts for the users at positions ``(rows[p], columns[p])`` of a causal encoder's ``states``
        (``[B, N, D]``), each copying from the history items at its own position and before (``history``:
        ``[B, N]`` item ids, 0-padded, the first of each row real)."""
        before = torch.arange(states.shape[1], device=states.device) <= columns.unsqueeze(1)  # [P, N]
        return self(states[rows, columns], states, history, before & (history[rows] > 0), rows)


def _safe_log(probabilities: Tensor) -> Tensor:
    """``log`` that stays finite, and so has finite gradients, at 0: an item outside the history gets a copy
    log-probability of ``log(tiny)`` (about -87 in float32), which the mixture's other part outweighs."""
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()
