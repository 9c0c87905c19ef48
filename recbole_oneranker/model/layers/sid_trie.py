"""The trie of a catalogue's semantic IDs, trie-constrained beam search, and exact scores of every item.

A SID model predicts an item's ``L`` codes one after another: ``step(prefixes, level)`` returns the logits of the
next code for a batch of code prefixes. Both decoders here normalise those logits over the codes that continue a
prefix toward a real item (a softmax over the valid children only), so an item's log-probability is the sum over
levels of its codes' constrained log-probabilities, and the probabilities of all items sum to one. Under that one
definition the beam's scores and the exact scores agree, which the tests check.

The trie is dense per level: ``children[l]`` is a ``(P_l, K_l)`` table from a depth-``l`` prefix id and a code to the
child's prefix id at depth ``l + 1`` (``-1``: no item continues that way). Validity masks are then gathers, and the
only Python loop of both decoders is the one over the ``L`` levels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

StepFunction = Callable[[Tensor, int], Tensor]
"""``step(prefixes, level)``: ``prefixes`` ``(B, P, level)`` int64 codes -> ``(B, P, K_level)`` next-code logits."""


class SIDTrie:
    """Dense per-level trie of ``N`` unique code tuples.

    Constructor Args:
        codes: ``(N, L)`` int64, unique rows, codes of level ``l`` in ``[0, K_l)``.
        codebook_sizes: ``K_l`` per level; by default each level's largest code + 1.

    Attributes:
        codes: ``(N, L)``.
        codebook_sizes: ``[K_0, ..., K_{L-1}]``.
        children: per level ``l``, ``(P_l, K_l)`` int64: child prefix id at depth ``l + 1``, or -1.
        item_prefixes: ``(N, L)`` int64: the prefix id of each item's first ``l`` codes (column 0 is the root, 0).
        prefix_codes: per level ``l``, ``(P_l, l)`` int64: the codes of every depth-``l`` prefix.
        leaf_items: ``(N,)`` int64: the item of each depth-``L`` prefix id.

    >>> trie = SIDTrie(torch.tensor([[0, 1], [0, 2], [1, 0]]))
    >>> trie.children[1].tolist()  # prefix (0,) continues with codes 1 and 2, prefix (1,) with 0
    [[-1, 0, 1], [2, -1, -1]]
    """

    def __init__(self, codes: Tensor, codebook_sizes: list[int] | None = None) -> None:
        if codes.dim() != 2 or len(torch.unique(codes, dim=0)) != len(codes):
            raise ValueError(f"need (N, L) codes with unique rows, got shape {tuple(codes.shape)} or duplicates")
        self.codes = codes.long()
        num_items, levels = codes.shape
        self.codebook_sizes = codebook_sizes or [int(codes[:, level].max()) + 1 for level in range(levels)]
        self.item_prefixes = torch.zeros(num_items, levels, dtype=torch.int64)
        self.prefix_codes: list[Tensor] = [torch.zeros(1, 0, dtype=torch.int64)]
        self.children: list[Tensor] = []
        for level in range(levels):
            child_codes, child = torch.unique(self.codes[:, : level + 1], dim=0, return_inverse=True)
            table = torch.full((len(self.prefix_codes[level]), self.codebook_sizes[level]), -1, dtype=torch.int64)
            table[self.item_prefixes[:, level], self.codes[:, level]] = child
            self.children.append(table)
            if level + 1 < levels:
                self.item_prefixes[:, level + 1] = child
                self.prefix_codes.append(child_codes)
        self.leaf_items = torch.empty(num_items, dtype=torch.int64)
        self.leaf_items[child] = torch.arange(num_items)

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device: torch.device | str) -> SIDTrie:
        """This trie with every table on ``device`` (itself when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved.codes, moved.item_prefixes, moved.leaf_items = (
            t.to(device) for t in (self.codes, self.item_prefixes, self.leaf_items)
        )
        moved.children = [t.to(device) for t in self.children]
        moved.prefix_codes = [t.to(device) for t in self.prefix_codes]
        return moved

    def constrained_log_probs(self, logits: Tensor, level: int, prefix_ids: Tensor) -> Tensor:
        """Log-softmax of ``logits`` (``(B, P, K_level)``) over the valid children of the prefixes ``prefix_ids``
        (``(B, P)``, ``-1`` for a dead beam); ``-inf`` for codes no item continues with."""
        valid = self.children[level][prefix_ids.clamp(min=0)] >= 0  # [B, P, K]
        valid &= (prefix_ids >= 0).unsqueeze(-1)
        log_probs = torch.log_softmax(logits.float().masked_fill(~valid, float("-inf")), dim=-1)
        return log_probs.masked_fill(~valid, float("-inf"))  # rows without a valid code: NaN -> -inf


def constrained_beam_search(
    step: StepFunction, trie: SIDTrie, batch_size: int, beam_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``beam_size`` most likely valid code tuples for each of ``batch_size`` requests.

    Args:
        step: next-code logits for a batch of prefixes (:data:`StepFunction`); called once per level with
            ``P`` = 1 at level 0, then up to ``beam_size`` prefixes per request.
        trie: the catalogue.
        batch_size: ``B``.
        beam_size: prefixes kept per level and tuples returned.

    Returns:
        ``codes`` ``(B, beam_size, L)``, ``log_probs`` ``(B, beam_size)`` in decreasing order and ``items``
        ``(B, beam_size)`` (row of ``trie.codes``). When the catalogue holds fewer than ``beam_size`` items, the
        missing beams have log-probability ``-inf`` and item ``-1``.
    """
    device = trie.device
    prefixes = torch.zeros(batch_size, 1, 0, dtype=torch.int64, device=device)
    prefix_ids = torch.zeros(batch_size, 1, dtype=torch.int64, device=device)
    scores = torch.zeros(batch_size, 1, device=device)
    for level in range(trie.num_levels):
        log_probs = trie.constrained_log_probs(step(prefixes, level), level, prefix_ids)  # [B, P, K]
        num_codes = log_probs.shape[-1]
        candidates = (scores.unsqueeze(-1) + log_probs).flatten(1)  # [B, P * K]
        scores, flat = candidates.topk(min(beam_size, candidates.shape[1]), dim=1)
        parent, code = flat // num_codes, flat % num_codes
        children = trie.children[level][prefix_ids.clamp(min=0).gather(1, parent), code]  # [B, beam]
        prefix_ids = children.masked_fill(scores == float("-inf"), -1)
        prefixes = torch.cat([prefixes.gather(1, parent.unsqueeze(-1).expand(-1, -1, level)), code.unsqueeze(-1)], -1)
    items = trie.leaf_items[prefix_ids.clamp(min=0)].masked_fill(prefix_ids < 0, -1)
    if scores.shape[1] < beam_size:  # fewer candidates than beams in the whole trie
        missing = beam_size - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((batch_size, missing), float("-inf"))], dim=1)
        items = torch.cat([items, items.new_full((batch_size, missing), -1)], dim=1)
        prefixes = torch.cat([prefixes, prefixes.new_zeros(batch_size, missing, trie.num_levels)], dim=1)
    return prefixes, scores, items


def exact_item_log_probs(step: StepFunction, trie: SIDTrie, batch_size: int) -> Tensor:
    """The constrained log-probability of every item of the trie, ``(B, N)``, without a beam.

    Level ``l`` calls ``step`` once on all ``P_l`` prefixes of depth ``l`` (``(B, P_l, l)``); each item then gathers
    its code's log-probability at its own prefix, and the levels add up. Cost: ``sum_l P_l`` prefixes per request
    (at most one per item at each level), so large catalogues should call this on a few requests at a time.

    Returns:
        ``(B, N)`` float32, column ``n`` the item in row ``n`` of ``trie.codes``; each row's ``exp`` sums to 1.
    """
    total = torch.zeros(batch_size, len(trie.codes), device=trie.device)
    for level in range(trie.num_levels):
        prefixes = trie.prefix_codes[level].expand(batch_size, -1, -1)  # [B, P_l, l]
        all_prefix_ids = torch.arange(len(trie.prefix_codes[level]), device=trie.device).expand(batch_size, -1)
        log_probs = trie.constrained_log_probs(step(prefixes, level), level, all_prefix_ids)  # [B, P_l, K]
        flat = trie.item_prefixes[:, level] * log_probs.shape[-1] + trie.codes[:, level]  # [N]
        total += log_probs.flatten(1).index_select(1, flat)  # index_select: 7x faster than [:, flat] on a CPU
    return total
