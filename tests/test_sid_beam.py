"""Tests of the SID trie, the trie-constrained beam search and exact full-catalogue scoring: valid tuples only,
the beam against brute-force enumeration of every code tuple, and beam scores against exact scores. Small random
catalogues (seeded sweeps stand in for hypothesis, which the project's environment does not install)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from recbole_oneranker.model.layers import SIDTrie, constrained_beam_search, exact_item_log_probs


def _catalogue(seed: int, num_items: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """``(num_items, L)`` distinct random code tuples, level ``l`` in ``[0, sizes[l])``."""
    generator = torch.Generator().manual_seed(seed)
    every_tuple = torch.cartesian_prod(*[torch.arange(size) for size in sizes]).view(-1, len(sizes))
    return every_tuple[torch.randperm(len(every_tuple), generator=generator)[:num_items]]


class PrefixDecoder(nn.Module):
    """A small random decoder: a GRU over the prefix's code embeddings, then a per-level linear head, so the logits
    of a code depend on the whole prefix and on the request."""

    def __init__(self, sizes: tuple[int, ...], batch_size: int, seed: int, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embeddings = nn.ModuleList(nn.Embedding(size, dim) for size in sizes)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.heads = nn.ModuleList(nn.Linear(dim, size) for size in sizes)
        self.user_states = torch.randn(batch_size, dim) * 2

    @torch.no_grad()
    def forward(self, prefixes: torch.Tensor, level: int) -> torch.Tensor:  # [B, P, l] -> [B, P, K_l]
        batch, width = prefixes.shape[:2]
        state = self.user_states[:, None, :].expand(batch, width, -1).reshape(1, batch * width, -1).contiguous()
        if level > 0:
            embedded = torch.stack([self.embeddings[i](prefixes[..., i]) for i in range(level)], dim=2)
            _, state = self.gru(embedded.view(batch * width, level, -1), state)
        return self.heads[level](state[0]).view(batch, width, -1) * 3


def _brute_force(decoder: PrefixDecoder, trie: SIDTrie, sizes: tuple[int, ...], batch: int) -> torch.Tensor:
    """``(B, N)`` log-probabilities by enumerating every code tuple, one prefix at a time, with the softmax over the
    codes that some item continues with."""
    valid = {tuple(row) for row in trie.codes.tolist()}
    prefixes = {row[:level] for row in valid for level in range(len(sizes) + 1)}
    scores = torch.zeros(batch, len(trie.codes))
    index = {row: i for i, row in enumerate(map(tuple, trie.codes.tolist()))}
    for codes in itertools.product(*[range(size) for size in sizes]):
        if codes not in valid:
            continue
        for level in range(len(sizes)):
            prefix = torch.tensor(codes[:level], dtype=torch.int64).view(1, 1, level).expand(batch, 1, level)
            logits = decoder(prefix, level)[:, 0]  # [B, K]
            allowed = torch.tensor([codes[:level] + (c,) in prefixes for c in range(sizes[level])])
            log_probs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
            scores[:, index[codes]] += log_probs[:, codes[level]]
    return scores


@pytest.mark.parametrize("seed", range(4))
def test_exact_scores_match_brute_force_enumeration(seed):
    sizes, batch = (3, 4, 2), 3
    trie = SIDTrie(_catalogue(seed, 14, sizes), list(sizes))
    decoder = PrefixDecoder(sizes, batch, seed)
    exact = exact_item_log_probs(decoder, trie, batch)
    torch.testing.assert_close(exact, _brute_force(decoder, trie, sizes, batch), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(exact.exp().sum(dim=1), torch.ones(batch))  # a distribution over real items


@pytest.mark.parametrize("seed", range(4))
def test_a_beam_as_wide_as_the_catalogue_ranks_every_item_as_brute_force(seed):
    sizes, batch, num_items = (3, 4, 2), 3, 14
    trie = SIDTrie(_catalogue(seed, num_items, sizes), list(sizes))
    decoder = PrefixDecoder(sizes, batch, seed)
    codes, scores, items = constrained_beam_search(decoder, trie, batch, beam_size=num_items)
    reference = _brute_force(decoder, trie, sizes, batch)
    expected_scores, expected_items = reference.sort(dim=1, descending=True)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(items, expected_items)
    assert torch.equal(codes, trie.codes[items])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beam_size", [1, 4, 9])
def test_beam_emits_only_valid_tuples_with_their_exact_scores(seed, beam_size):
    sizes, batch = (4, 3, 5), 5
    trie = SIDTrie(_catalogue(seed, 25, sizes), list(sizes))
    decoder = PrefixDecoder(sizes, batch, seed)
    codes, scores, items = constrained_beam_search(decoder, trie, batch, beam_size)
    catalogue = {tuple(row) for row in trie.codes.tolist()}
    assert all(tuple(row) in catalogue for row in codes.view(-1, len(sizes)).tolist())
    assert torch.equal(codes, trie.codes[items])
    assert all(len(set(row)) == beam_size for row in items.tolist())  # no item twice in a beam
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    exact = exact_item_log_probs(decoder, trie, batch)
    torch.testing.assert_close(scores, exact.gather(1, items), rtol=1e-5, atol=1e-5)


def test_a_beam_wider_than_the_catalogue_pads_with_minus_infinity():
    sizes = (2, 2)
    trie = SIDTrie(torch.tensor([[0, 1], [1, 0], [1, 1]]), list(sizes))
    decoder = PrefixDecoder(sizes, batch_size=2, seed=0)
    _, scores, items = constrained_beam_search(decoder, trie, batch_size=2, beam_size=5)
    assert torch.isfinite(scores[:, :3]).all() and torch.isinf(scores[:, 3:]).all()
    assert sorted(items[0, :3].tolist()) == [0, 1, 2] and items[:, 3:].eq(-1).all()


@pytest.mark.parametrize("seed", range(5))
def test_trie_tables_hold_exactly_the_catalogue_prefixes(seed):
    sizes = (3, 3, 4)
    codes = _catalogue(seed, 20, sizes)
    trie = SIDTrie(codes, list(sizes))
    for level in range(len(sizes)):
        prefixes = {tuple(row[:level]) for row in codes.tolist()}
        assert {tuple(row) for row in trie.prefix_codes[level].tolist()} == prefixes
        for prefix_id, prefix in enumerate(trie.prefix_codes[level].tolist()):
            continuations = {row[level] for row in codes.tolist() if row[:level] == prefix}
            assert set((trie.children[level][prefix_id] >= 0).nonzero().view(-1).tolist()) == continuations
    for item, row in enumerate(codes.tolist()):  # walking an item's codes down the tables ends at its leaf
        node = 0
        for level, code in enumerate(row):
            assert node == trie.item_prefixes[item, level]
            node = int(trie.children[level][node, code])
        assert trie.leaf_items[node] == item


def test_duplicate_tuples_are_refused():
    with pytest.raises(ValueError, match="unique rows"):
        SIDTrie(torch.tensor([[0, 1], [0, 1]]))
