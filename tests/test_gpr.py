"""GPR: its layers (softmax attention, token-type FFN, SID generation, HTE) and the RecBole model on tiny data."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from recbole.data import data_preparation

from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import (
    TOKEN_TYPES,
    HSTUConfig,
    HSTUStack,
    RepeatExplore,
    RepeatExploreConfig,
    RepeatShift,
    SequenceEncoder,
    SequenceEncoderConfig,
    SIDGenerator,
    SIDGeneratorConfig,
    ValueEstimator,
    segment_logsumexp,
    sid_generation,
    sid_level_structure,
)
from recbole_oneranker.model.layers.sid_trie import SIDTrie, constrained_beam_search, exact_item_log_probs
from recbole_oneranker.model.sequential_recommender import GPR
from recbole_oneranker.quick_start import run

GPR_TINY = {
    "hidden_size": 16,
    "attention_dim": 8,
    "linear_hidden_dim": 8,
    "n_heads": 2,
    "mtp_heads": 2,
    "num_thinking_tokens": 2,
    "beam_size": 8,
}


def _codes_of(num_items: int) -> torch.Tensor:
    """``[N, 3]`` unique codes (4 x 4 x 8 paths), the last level telling items apart."""
    ids = torch.arange(num_items)
    return torch.stack([ids % 4, (ids // 4) % 4, ids // 16], dim=1)


@pytest.fixture
def sid_config(tiny_config, tiny_sid_file):
    """``tiny_config`` with a SID file for every ml-tiny item."""
    return {**tiny_config, **GPR_TINY, "sid_file": str(tiny_sid_file)}


@pytest.fixture
def build(build_sid_model):
    return lambda **overrides: build_sid_model(GPR, GPR_TINY, **overrides)


# -- layers -------------------------------------------------------------------------------------------------------


def _stack(**options) -> HSTUStack:
    torch.manual_seed(0)
    config = HSTUConfig(embedding_dim=8, linear_hidden_dim=4, attention_dim=4, num_heads=2, num_blocks=2,
                        max_seq_len=6, relative_bias="position", dropout=0.0, **options)  # fmt: skip
    return HSTUStack(config).eval()


def test_softmax_attention_is_causal_and_differs_from_silu() -> None:
    softmax, silu = _stack(attention="softmax"), _stack(attention="silu")
    silu.load_state_dict(softmax.state_dict())
    x, lengths = torch.randn(2, 6, 8), torch.tensor([6, 4])
    later = x.clone()
    later[:, 3:] = torch.randn(2, 3, 8)
    with torch.no_grad():
        y = softmax(x, lengths)
        torch.testing.assert_close(softmax(later, lengths)[:, :3], y[:, :3], rtol=0, atol=0)
        assert not torch.allclose(y, silu(x, lengths))


def test_token_type_ffn_uses_each_types_own_parameters() -> None:
    stack = _stack(num_token_types=2)
    x, lengths = torch.randn(1, 6, 8), torch.tensor([6])
    types = torch.tensor([[0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        before = stack(x, lengths, token_types=types)
        for ffn in stack.type_ffns:
            ffn.ffns[0][2].bias += 1.0  # only type 0's last layer
        after = stack(x, lengths, token_types=types)
    assert not torch.allclose(after[:, :2], before[:, :2])
    with pytest.raises(ValueError, match="token_types"):
        stack(x, lengths)


def test_the_encoder_types_its_prefix_and_history_tokens_apart() -> None:
    torch.manual_seed(0)
    hstu = HSTUConfig(embedding_dim=8, linear_hidden_dim=4, attention_dim=4, num_heads=2, num_blocks=2,
                      max_seq_len=7, relative_bias="position", dropout=0.0, num_token_types=TOKEN_TYPES)  # fmt: skip
    encoder = SequenceEncoder(SequenceEncoderConfig(num_items=0, hstu=hstu, bidirectional_prefix=True)).eval()
    x, prefix, lengths = torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.tensor([4, 2])

    def shifted_history(block: int, kind: int) -> torch.Tensor:
        """The history's states with one block's FFN of one token type shifted (not by a constant, which the next
        block's layer norm would take out)."""
        bias = encoder.stack.type_ffns[block].ffns[kind][2].bias
        original = bias.detach().clone()
        with torch.no_grad():
            bias += torch.linspace(-1.0, 1.0, 8)
            states = encoder.encode_tokens(x, lengths, prefix=prefix)
            bias.copy_(original)
        return states

    padded = torch.zeros(2, 2 + 4 + 1, 8)  # prefix, history, the request slot
    assert encoder.token_types(padded, num_prefix=2).tolist() == [[0, 0, 1, 1, 1, 1, 1]] * 2
    with torch.no_grad():
        history = encoder.encode_tokens(x, lengths, prefix=prefix)
    last, first = len(encoder.stack.type_ffns) - 1, 0
    # The last block's prefix FFN changes only the prefix's outputs, which nothing reads after it ...
    torch.testing.assert_close(shifted_history(last, 0), history, rtol=0, atol=0)
    # ... its history FFN changes the history's; the first block's prefix FFN reaches them through attention.
    assert not torch.allclose(shifted_history(last, 1), history)
    assert not torch.allclose(shifted_history(first, 0), history)
    with pytest.raises(ValueError, match="num_token_types"):
        SequenceEncoderConfig(num_items=0, hstu=dataclasses.replace(hstu, num_token_types=3))


def test_segment_logsumexp_matches_a_loop() -> None:
    values, segments = torch.randn(3, 7), torch.tensor([2, 0, 2, 1, 0, 2, 1])
    expected = torch.stack([torch.logsumexp(values[:, segments == s], dim=1) for s in range(3)], dim=1)
    torch.testing.assert_close(segment_logsumexp(values, segments, 3), expected)


def _generator(levels=(4, 4, 8), heads: int = 2, thinking: int = 2, scoring: str = "additive", tied: bool = False):
    torch.manual_seed(0)
    config = SIDGeneratorConfig(hidden_size=8, codebook_sizes=levels, num_heads=heads, num_thinking_tokens=thinking,
                                scoring=scoring)  # fmt: skip
    tables = torch.nn.ModuleList(torch.nn.Embedding(size, 8) for size in levels) if tied else None
    return SIDGenerator(config, code_tables=tables, code_scale=2.0).eval()


SCORERS = [("additive", False), ("gated", False), ("additive", True), ("gated", True)]


@pytest.mark.parametrize(("scoring", "tied"), SCORERS)
def test_catalogue_scores_in_chunks_of_rows_equal_one_pass(scoring, tied, monkeypatch) -> None:
    generator = _generator(scoring=scoring, tied=tied)
    codes, intents = _codes_of(40), torch.randn(5, 2, 8, requires_grad=True)
    one_pass = generator.catalogue_log_probs(intents, sid_level_structure(codes))
    monkeypatch.setattr(sid_generation, "CATALOGUE_CHUNK_ELEMENTS", 3 * len(codes))  # chunks of 3 of the 10 rows
    chunked = generator.catalogue_log_probs(intents, sid_level_structure(codes))
    torch.testing.assert_close(chunked, one_pass)  # a matrix product's rounding may depend on its row count
    (one_grad,) = torch.autograd.grad(one_pass[..., 7].sum(), intents)
    (chunked_grad,) = torch.autograd.grad(chunked[..., 7].sum(), intents)
    torch.testing.assert_close(chunked_grad, one_grad)


@pytest.mark.parametrize(("scoring", "tied"), SCORERS)
def test_exact_catalogue_scores_equal_the_generic_trie_scores_and_the_beam(scoring, tied) -> None:
    generator = _generator(scoring=scoring, tied=tied)
    codes = _codes_of(40)
    trie = SIDTrie(codes, [4, 4, 8])
    intents = torch.randn(3, 2, 8)  # [B, H, D]
    exact = generator.catalogue_log_probs(intents, sid_level_structure(codes))  # [B, H, N]

    def step(prefixes: torch.Tensor, level: int) -> torch.Tensor:  # one head: [B, P, level] -> [B, P, K]
        return generator.level_logits(intents[:, :1].expand(-1, prefixes.shape[1], -1), prefixes, level)

    with torch.no_grad():
        generic = exact_item_log_probs(step, trie, batch_size=3)  # [B, N]
        torch.testing.assert_close(exact[:, 0].detach(), generic, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exact.exp().sum(-1), torch.ones(3, 2))  # a distribution over the catalogue
        _, beam_scores, beam_items = constrained_beam_search(step, trie, batch_size=3, beam_size=5)
    torch.testing.assert_close(beam_scores, exact[:, 0].detach().gather(1, beam_items), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a beam as wide as the catalogue is exhaustive: it returns the exact order
        _, _, every_item = constrained_beam_search(step, trie, batch_size=3, beam_size=40)
    assert torch.equal(every_item, exact[:, 0].detach().argsort(dim=1, descending=True))


@pytest.mark.parametrize("scoring", ["additive", "gated"])
def test_teacher_forced_path_probabilities_read_only_the_prefix(scoring) -> None:
    generator = _generator(scoring=scoring)
    intents = torch.randn(2, 2, 8)
    codes = torch.tensor([[[1, 2, 3]], [[0, 1, 7]]])  # [P, 1, L] shared by both heads
    other_last, other_first = codes.clone(), codes.clone()
    other_last[..., 2] = 5
    other_first[..., 0] = 3
    with torch.no_grad():
        base = generator.path_log_probs(intents, codes)  # [P, H, L]
        by_last, by_first = (
            generator.path_log_probs(intents, other_last),
            generator.path_log_probs(intents, other_first),
        )
    torch.testing.assert_close(by_last[..., :2], base[..., :2], rtol=0, atol=0)  # later codes change nothing before
    assert not torch.allclose(by_first[..., 1], base[..., 1])  # level 1 reads level 0's code


def _preference(generator: SIDGenerator, intents: torch.Tensor, first_code: int) -> torch.Tensor:
    """``[P, H]`` the logit of level-1 code 1 minus that of code 0 after level-0 code ``first_code``."""
    logits = generator.level_logits(intents, torch.full((*intents.shape[:2], 1), first_code), 1)
    return logits[..., 1] - logits[..., 0]


def test_only_the_gated_scorer_changes_a_users_preference_with_the_prefix() -> None:
    intents = torch.randn(3, 2, 8)
    with torch.no_grad():
        for scoring in ("additive", "gated"):
            generator = _generator(scoring=scoring)
            bias_free = _preference(generator, intents, 0) - _preference(generator, torch.zeros_like(intents), 0)
            other_prefix = _preference(generator, intents, 2) - _preference(generator, torch.zeros_like(intents), 2)
            # The user's part of the preference (the prefix-only part removed) under prefixes 0 and 2.
            assert torch.allclose(bias_free, other_prefix, atol=1e-5) == (scoring == "additive"), scoring


def _fit_crossed_paths(scoring: str) -> float:
    """The mean probability two users give their own two items after fitting an intent per user and the generator:
    user 0 takes items (0, 1) and (1, 0), user 1 items (0, 0) and (1, 1), each half the time (an XOR on the codes)."""
    generator = _generator(levels=(2, 2), heads=1, thinking=0, scoring=scoring).train()
    intents = torch.nn.Parameter(torch.randn(2, 1, 8))
    optimizer = torch.optim.Adam([intents, *generator.parameters()], lr=0.05)
    users, paths = torch.tensor([0, 0, 1, 1]), torch.tensor([[[0, 1]], [[1, 0]], [[0, 0]], [[1, 1]]])
    for _ in range(300):
        optimizer.zero_grad()
        (-generator.path_log_probs(intents[users], paths).sum(-1).mean()).backward()
        optimizer.step()
    with torch.no_grad():
        codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
        probs = generator.catalogue_log_probs(intents, sid_level_structure(codes)).exp()[:, 0]  # [2 users, 4 items]
    return float((probs[0, 1] + probs[0, 2] + probs[1, 0] + probs[1, 3]) / 2)


def test_the_gated_scorer_fits_crossed_paths_the_additive_one_cannot() -> None:
    # Additive: a user's level-1 preference for code 1 over code 0 is the same under both prefixes up to a shift
    # shared by all users, so the two users cannot both be served: at most about 3/4 of the mass.
    assert _fit_crossed_paths("gated") > 0.95
    assert _fit_crossed_paths("additive") < 0.8


def test_value_estimator_sends_no_gradient_into_the_users() -> None:
    hte = ValueEstimator(SIDGeneratorConfig(hidden_size=8, codebook_sizes=[4, 3], num_heads=1))
    users = torch.randn(5, 8, requires_grad=True)
    hte(users, torch.zeros(5, 2, dtype=torch.long)).sum().backward()
    assert users.grad is None
    codes = torch.tensor([[1, 2], [3, 0]])
    torch.testing.assert_close(hte.catalogue_values(users, codes), hte(users.detach()[:, None].expand(-1, 2, -1)
                               .reshape(10, 8), codes.repeat(5, 1))[:, -1].view(5, 2))  # fmt: skip


# -- the model ----------------------------------------------------------------------------------------------------


def test_mtp_heads_learn_different_targets_and_receive_different_gradients(build) -> None:
    model, train, _ = build(use_hte=False)
    model.calculate_loss(next(iter(train))).backward()
    head_rows = model.generator.head_intents.weight.grad.view(2, 16, 16)  # [H, D, D]
    assert head_rows[0].abs().sum() > 0 and head_rows[1].abs().sum() > 0
    assert not torch.allclose(head_rows[0], head_rows[1])


def test_vaft_weights_the_loss_by_action_and_value(build) -> None:
    model, train, _ = build(use_hte=False, mtp_heads=1)
    model.eval()  # no dropout: only the weights differ
    batch = next(iter(train))
    plain = model.calculate_loss(batch)
    model.vaft = True
    model.action_weights = [3.0, 3.0, 3.0]  # every action alike: the value alone weighs
    with_value = model.calculate_loss(batch)
    model.value_field = None  # now only the constant action weight
    torch.testing.assert_close(model.calculate_loss(batch), 3.0 * plain)
    assert not torch.allclose(with_value, 3.0 * plain)


def test_hte_loss_trains_only_the_hte(build) -> None:
    model, train, _ = build()
    _, value_loss = model.calculate_loss(next(iter(train)))
    value_loss.backward()
    for name, parameter in model.named_parameters():
        reached = parameter.grad is not None and parameter.grad.abs().sum() > 0
        assert reached == name.startswith("hte."), name


MODEL_SCORERS = [{}, {"sid_scoring": "gated"}, {"sid_scoring": "gated", "tie_code_embeddings": True}]
MODEL_VARIANTS = [*MODEL_SCORERS, {"repeat_explore": True}, {"repeat_bias": True}]


@pytest.mark.parametrize("scorer", MODEL_VARIANTS)
def test_gradients_reach_every_parameter(build, scorer) -> None:
    model, train, _ = build(**scorer, user_token_fields=["gender", "occupation"], n_layers=2,
                            load_col={"inter": ["user_id", "item_id", "rating", "timestamp", "click", "conversion"],
                                      "user": ["user_id", "gender", "occupation"]})  # fmt: skip
    batch = next(iter(train))
    if scorer.get("repeat_explore"):  # ml-100k users never rate a movie twice: the copy attention needs a repeat
        batch["item_id"] = batch["item_id_list"][:, 0].clone()
    sum(model.calculate_loss(batch)).backward()
    # The last block's feed-forward of user tokens has no reader: no later block attends to its output.
    unread = ("encoder.stack.type_ffns.1.norms.0.", "encoder.stack.type_ffns.1.ffns.0.")
    for name, parameter in model.named_parameters():
        reached = parameter.grad is not None and parameter.grad.abs().sum() > 0
        assert reached != name.startswith(unread), name


@pytest.mark.parametrize("scorer", MODEL_VARIANTS)
def test_full_sort_scores_are_a_distribution_and_generate_returns_their_top(build, scorer) -> None:
    model, _, test = build(**scorer)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        items, item_scores = model.generate(batch, k=5)
    assert scores[:, 0].eq(float("-inf")).all()
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(len(scores)))
    torch.testing.assert_close(item_scores, scores.gather(1, items))  # a generated item's score is its served score
    assert (items > 0).all() and all(len(set(row)) == 5 for row in items.tolist())


def test_a_missing_sid_file_names_the_command_that_makes_it(sid_config, tmp_path) -> None:
    config = Config("GPR", "ml-tiny", config_dict={**sid_config, "sid_file": str(tmp_path / "none.sid")})
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ConfigError, match="python -m recbole_oneranker.tokenize"):
        GPR(config, train._dataset)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "attention": "silu",
            "token_type_ffn": False,
            "num_thinking_tokens": 0,
            "sid_scoring": "gated",
            "tie_code_embeddings": True,
            "repeat_bias": True,
        },
    ],
)
def test_gpr_end_to_end_on_ml_tiny(sid_config, overrides) -> None:
    result = run("GPR", "ml-tiny", config_dict={**sid_config, **overrides, "epochs": 2, "candidate_negatives": 9})
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10", "gmv@10"}


@pytest.mark.parametrize(("scoring", "tied"), SCORERS)
def test_generation_layers_gradients(scoring, tied) -> None:
    generator = _generator(scoring=scoring, tied=tied).train()
    intents = generator.intents(torch.randn(2, 5, 8), torch.ones(2, 3, 5, dtype=torch.bool))[:, 0]
    codes = torch.tensor([[[1, 2, 3]], [[0, 1, 7]]])
    loss = -generator.path_log_probs(intents, codes).sum()
    loss = loss - generator.catalogue_log_probs(intents, sid_level_structure(_codes_of(40)))[..., 3].sum()
    loss.backward()
    for name, parameter in generator.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# -- repeats: the copy mixture (not in the paper) ----------------------------------------------------------------


def _copy_parts(gate_bias: float = 0.0):
    torch.manual_seed(0)
    mixture = RepeatExplore(RepeatExploreConfig(hidden_size=4))
    torch.nn.init.constant_(mixture.gate.bias, gate_bias)
    history = torch.tensor([[3, 5, 3, 0], [2, 4, 0, 0]])
    visible = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()  # row 1 may copy item 2 only
    users = torch.randn(2, 4, requires_grad=True)
    return mixture(users, torch.randn(2, 4, 4), history, visible), users


def test_the_copy_mixture_is_a_distribution_whose_target_scores_are_the_catalogues() -> None:
    parts, _ = _copy_parts()
    generated = F.pad(torch.randn(2, 6).log_softmax(1), (1, 0), value=float("-inf"))  # items 1..6
    catalogue = parts.of_catalogue(generated)
    torch.testing.assert_close(catalogue.exp().sum(1), torch.ones(2))
    targets = torch.tensor([3, 4])  # item 4 is in row 1's history but past what it may copy
    torch.testing.assert_close(parts.of_targets(targets, generated.gather(1, targets[:, None])[:, 0]),
                               catalogue.gather(1, targets[:, None])[:, 0])  # fmt: skip
    copy = (catalogue.exp() - parts.log_explore.exp()[:, None] * generated.exp()) / parts.log_repeat.exp()[:, None]
    torch.testing.assert_close(copy[1], F.one_hot(torch.tensor(2), 7).float(), atol=1e-5, rtol=0)
    assert copy[0, [3, 5]].sum().item() == pytest.approx(1.0, abs=1e-5)  # item 3 sums its two positions


def test_the_copy_at_a_position_reads_the_history_up_to_it_and_no_further() -> None:
    torch.manual_seed(0)
    mixture = RepeatExplore(RepeatExploreConfig(hidden_size=4))
    states, history = torch.randn(2, 4, 4), torch.tensor([[3, 5, 3, 6], [2, 4, 0, 0]])
    rows, columns = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 1])
    parts = mixture.at_positions(states, history, rows, columns)
    visible = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]).bool()  # written out
    reference = mixture(states[rows, columns], states[rows], history[rows], visible)
    torch.testing.assert_close(parts.log_attention, reference.log_attention)
    torch.testing.assert_close(parts.log_repeat, reference.log_repeat)
    copy = parts.of_catalogue(torch.full((3, 7), -1e9)).exp() / parts.log_repeat.exp()[:, None]
    assert copy[0, 6] < 1e-30 and copy[0, [3, 5]].sum().item() == pytest.approx(1.0)  # item 6 comes later


def test_a_target_outside_the_history_has_finite_gradients() -> None:
    parts, users = _copy_parts()
    parts.of_targets(torch.tensor([6, 6]), torch.tensor([-2.0, -3.0])).sum().backward()
    assert torch.isfinite(users.grad).all() and users.grad.abs().sum() > 0  # the gate learns to explore


@settings(max_examples=50, deadline=None)
@given(
    shift=st.floats(-6.0, 6.0),
    seen=st.lists(st.lists(st.integers(0, 6), min_size=3, max_size=3), min_size=2, max_size=2),
)
def test_the_shifted_distribution_is_the_softmax_of_the_shifted_log_probs(shift, seen) -> None:
    repeat_shift = RepeatShift()
    torch.nn.init.constant_(repeat_shift.shift, shift)
    log_probs = F.pad(torch.linspace(-2.0, 1.0, 12).view(2, 6).log_softmax(1), (1, 0), value=float("-inf"))
    seen = torch.tensor(seen)  # duplicates and 0-padding included
    is_seen = F.one_hot(seen, 7).amax(1).bool() & (torch.arange(7) > 0)  # [2, 7], written out
    reference = (log_probs + shift * is_seen).log_softmax(1)
    torch.testing.assert_close(repeat_shift.normalised(log_probs, seen), reference)
    targets = torch.tensor([1, 4])
    change = reference.gather(1, targets[:, None]) - log_probs.gather(1, targets[:, None])
    gain = repeat_shift.target_log_prob_change(seen, targets, lambda rows, items: log_probs[rows, items])
    torch.testing.assert_close(gain, change[:, 0].detach())


def test_the_repeat_shifts_loss_is_the_served_targets_log_prob_change_and_trains_only_the_shift(build) -> None:
    model, train, _ = build(repeat_bias=True, use_hte=False)
    model.eval()  # no dropout: training and serving read the same intents
    batch = next(iter(train))
    rows = torch.arange(len(batch))
    targets = batch["item_id"][:, None]
    with torch.no_grad():
        torch.nn.init.constant_(model.repeat_shift.shift, -1.5)
        batch["item_id"][::2] = batch["item_id_list"][::2, 0]  # half the targets repeat a seen item
        shifted = model.full_sort_predict(batch).gather(1, targets)[:, 0]
        torch.nn.init.constant_(model.repeat_shift.shift, 0.0)
        plain = model.full_sort_predict(batch).gather(1, targets)[:, 0]
        torch.nn.init.constant_(model.repeat_shift.shift, -1.5)
    _, shift_loss = model.calculate_loss(batch)
    torch.testing.assert_close(shift_loss, -(shifted - plain)[rows].mean(), rtol=1e-4, atol=1e-5)
    shift_loss.backward()
    for name, parameter in model.named_parameters():
        reached = parameter.grad is not None and parameter.grad.abs().sum() > 0
        assert reached == (name == "repeat_shift.shift"), name


def test_gpr_with_repeats_serves_and_generates_seen_items_when_the_gate_says_repeat(build) -> None:
    model, _, test = build(repeat_explore=True)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        torch.nn.init.constant_(model.repeat_explore.gate.bias, 30.0)  # P(repeat) = 1
        scores = model.full_sort_predict(batch)
        items, _ = model.generate(batch, k=3)
    lengths = batch["item_length"]
    for row, item in enumerate(scores.argmax(1).tolist()):
        history = batch["item_id_list"][row, : lengths[row]].tolist()
        assert item in history and set(items[row].tolist()) <= set(history) | {0}


def test_gpr_with_a_repeat_shift_serves_seen_items_first_when_it_is_large(build) -> None:
    model, _, test = build(repeat_bias=True)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        torch.nn.init.constant_(model.repeat_shift.shift, 50.0)
        scores = model.full_sort_predict(batch)
        items, _ = model.generate(batch, k=2)
    lengths = batch["item_length"]
    for row, item in enumerate(scores.argmax(1).tolist()):
        history = set(batch["item_id_list"][row, : lengths[row]].tolist())
        assert item in history and set(items[row].tolist()) <= history | {0}


def test_the_alignment_apis_refuse_a_repeat_shift(build) -> None:
    model, _, test = build(repeat_bias=True)
    requests = model.encode_requests(next(iter(test))[0])
    with pytest.raises(ConfigError, match="repeat_bias"):
        model.catalogue_log_probs(requests)
    with pytest.raises(ConfigError, match="repeat_explore and repeat_bias both"):
        build(repeat_bias=True, repeat_explore=True)
