"""OneRec: its layers (mixture of experts, encoder, session decoder) and the RecBole model on tiny data."""

from __future__ import annotations

import logging

import pytest
import torch

from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import (
    EncoderDecoderConfig,
    FeedForward,
    HistoryEncoder,
    MixtureOfExperts,
    MoEConfig,
    SessionDecoder,
    feed_forward,
)
from recbole_oneranker.model.layers.sid_trie import exact_item_log_probs
from recbole_oneranker.model.sequential_recommender import OneRec
from recbole_oneranker.quick_start import run
from recbole_oneranker.tuning import spaces

ONEREC_TINY = {
    "hidden_size": 16,
    "n_heads": 2,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_inner_size": 16,
    "num_experts": 4,
    "expert_inner_size": 8,
    "session_length": 3,
    "decoder_positions": 3,
    "beam_size": 8,
}


@pytest.fixture
def sid_config(tiny_config, tiny_sid_file):
    """``tiny_config`` with a SID file for every ml-tiny item, and OneRec's tiny sizes."""
    return {**tiny_config, **ONEREC_TINY, "sid_file": str(tiny_sid_file)}


@pytest.fixture
def build(build_sid_model):
    return lambda **overrides: build_sid_model(OneRec, ONEREC_TINY, **overrides)


# -- mixture of experts -------------------------------------------------------------------------------------------


def _mixture(**options) -> MixtureOfExperts:
    torch.manual_seed(0)
    return MixtureOfExperts(MoEConfig(hidden_size=8, expert_inner_size=4, num_experts=6, **options))


def test_each_token_is_served_by_exactly_its_top_two_experts() -> None:
    moe = _mixture()
    x = torch.randn(10, 8)
    experts, gates = moe.route(x)
    assert experts.shape == (10, 2) and (experts[:, 0] != experts[:, 1]).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(10))
    by_hand = torch.stack(
        [sum(gate * moe.expert(int(e), token[None])[0] for e, gate in zip(row, g, strict=True))
         for token, row, g in zip(x, experts, gates, strict=True)]
    )  # fmt: skip
    torch.testing.assert_close(moe(x), by_hand)
    assert int(moe.expert_load().sum()) == 20  # two assignments per token


def _skewed_load(moe: MixtureOfExperts, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The share of each expert on ``x`` after ``steps`` training calls (measured in eval: no update)."""
    moe.train()
    for _ in range(steps):
        moe(x)
    moe.eval()
    moe.reset_load()
    moe(x)
    return moe.expert_load() / moe.expert_load().sum()


def test_bias_balancing_moves_a_skewed_router_toward_an_even_load() -> None:
    x = torch.randn(300, 8) + torch.tensor([3.0] + [0.0] * 7)  # every token shares a large first feature
    balanced, frozen = _mixture(bias_update_rate=0.02), _mixture(bias_update_rate=0.0)
    for moe in (balanced, frozen):
        with torch.no_grad():
            moe.router.weight[:2, 0] = 2.0  # experts 0 and 1 win almost every token
    before = _skewed_load(frozen, x, steps=0)
    assert before[:2].sum() > 0.9
    torch.testing.assert_close(_skewed_load(frozen, x, steps=100), before)  # no balancing: the skew stays
    after = _skewed_load(balanced, x, steps=100)
    uniform = torch.full((6,), 1 / 6)
    assert (after - uniform).abs().max() < 0.5 * (before - uniform).abs().max()
    assert balanced.balancing_bias[:2].max() < 0 < balanced.balancing_bias[2:].min()


def test_dense_switch_is_one_block_of_the_mixtures_active_width() -> None:
    sparse = MoEConfig(hidden_size=8, expert_inner_size=4, num_experts=6)
    dense = feed_forward(MoEConfig(hidden_size=8, expert_inner_size=4, num_experts=6, sparse=False))
    mixture = feed_forward(sparse)
    assert isinstance(dense, FeedForward) and dense.inner.out_features == 8  # top_k x expert_inner_size
    active = sum(p[0].numel() for p in (mixture.inner_weight, mixture.inner_bias, mixture.outer_weight)) * 2
    assert sum(p.numel() for p in dense.parameters()) == active + 8  # two experts' weights, one output bias
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(hidden_size=8, expert_inner_size=4, num_experts=1)


# -- encoder and decoder ------------------------------------------------------------------------------------------


def _sizes() -> EncoderDecoderConfig:
    torch.manual_seed(0)
    return EncoderDecoderConfig(8, MoEConfig(8, 4, num_experts=4), num_heads=2, encoder_layers=2, decoder_layers=2,
                                max_memory_len=6, max_session_len=4, dropout=0.0)  # fmt: skip


def test_encoder_never_reads_unreadable_tokens() -> None:
    encoder = HistoryEncoder(_sizes()).eval()
    tokens, visible = torch.randn(2, 6, 8), torch.tensor([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    changed = tokens.clone()
    changed[0, ~visible[0]] = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(encoder(changed, visible)[visible], encoder(tokens, visible)[visible])
        assert not torch.allclose(encoder(tokens, torch.ones_like(visible))[0, 0], encoder(tokens, visible)[0, 0])


def test_decoder_is_causal_and_reads_only_visible_memory() -> None:
    decoder = SessionDecoder(_sizes()).eval()
    tokens, memory = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    visible = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    later, hidden_memory = tokens.clone(), memory.clone()
    later[:, 2:] = torch.randn(2, 2, 8)
    hidden_memory[0, 3:] = torch.randn(2, 8)
    with torch.no_grad():
        states = decoder(tokens, memory, visible)
        torch.testing.assert_close(decoder(later, memory, visible)[:, :2], states[:, :2], rtol=0, atol=0)
        torch.testing.assert_close(decoder(tokens, hidden_memory, visible), states)
        assert not torch.allclose(decoder(tokens, hidden_memory, torch.ones_like(visible))[0], states[0])


def test_decoding_from_the_cache_equals_a_full_run() -> None:
    decoder = SessionDecoder(_sizes()).eval()
    tokens, memory = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    visible = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]]).bool()
    with torch.no_grad():
        whole = decoder(tokens, memory, visible)
        cache, steps = decoder.start(memory, visible), []
        for t in range(4):
            state, cache = decoder.extend(cache, tokens[:, t : t + 1])
            steps.append(state)
        torch.testing.assert_close(torch.cat(steps, dim=1), whole)
        reordered = decoder.start(memory, visible)
        _, reordered = decoder.extend(reordered, tokens[:, :2])
        rows = torch.tensor([2, 0, 2])  # a beam keeps row 2 twice and drops row 1
        state, _ = decoder.extend(reordered.select(rows), tokens[rows, 2:3])
        torch.testing.assert_close(state[:, 0], whole[rows, 2])


# -- the model ----------------------------------------------------------------------------------------------------


def test_session_targets_are_the_next_items_after_each_position(build) -> None:
    model, train, _ = build()
    batch = next(iter(train))
    seq_lens = batch["item_length"]
    n = int(seq_lens.max())
    sessions = model.session_targets(batch, n)  # [B, N, m]
    history, target = batch["item_id_list"], batch["item_id"]
    for row in range(0, len(seq_lens), 7):  # a slow reference on every 7th row
        length = int(seq_lens[row])
        following = history[row, :length].tolist()[1:] + [int(target[row])]  # what comes after each position
        for position in range(n):
            expected = (following[position : position + 3] if position < length else []) + [0, 0, 0]
            assert sessions[row, position].tolist() == expected[:3], (row, position)


def test_training_positions_are_the_last_and_draws_inside_the_history(build) -> None:
    model, _, _ = build()
    seq_lens = torch.tensor([1, 4, 20])
    positions = model.sample_positions(seq_lens, model.decoder_positions)
    assert positions.shape == (3, 3) and positions[:, 0].tolist() == [0, 3, 19]
    assert (positions >= 0).all() and (positions < seq_lens.unsqueeze(1)).all()


def test_the_encoder_reads_only_positive_feedback(build) -> None:
    model, _, test = build(positive_stages=2)  # conversions only (rated >= 4)
    model.eval()
    batch = next(iter(test))[0]
    readable = model.readable_history(batch, batch["item_id_list"].shape[1])
    assert torch.equal(readable, (batch["item_id_list"] > 0) & (batch["conversion_list"] > 0))
    swapped = batch["item_id_list"].clone()
    unread = ~readable & (swapped > 0)
    assert unread.any()
    swapped[unread] = 1  # another item wherever the entry is not a conversion
    with torch.no_grad():
        before = model.full_sort_predict(batch)
        batch["item_id_list"] = swapped
        torch.testing.assert_close(model.full_sort_predict(batch), before)
    with pytest.raises(ConfigError, match="positive_stages"):
        build(positive_stages=3)


def test_a_later_session_item_changes_no_earlier_log_probability(build) -> None:
    model, train, _ = build()
    model.eval()
    batch = next(iter(train))
    rows, positions = torch.arange(4), batch["item_length"][:4] - 1
    sessions = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13], [14, 15, 16]])
    changed = sessions.clone()
    changed[:, 1] = 30
    with torch.no_grad():
        before = model.session_log_probs(batch, rows, positions, sessions)
        after = model.session_log_probs(batch, rows, positions, changed)
    torch.testing.assert_close(after[:, 0], before[:, 0], rtol=0, atol=0)
    assert not torch.allclose(after[:, 2], before[:, 2])  # the third item reads the second


def test_exact_scores_equal_the_generic_trie_scores_and_the_beam(build) -> None:
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0][:6]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)  # [B, n_items]
        intents = model.first_item_intents(batch)  # [B, 1, D]

        def step(prefixes: torch.Tensor, level: int) -> torch.Tensor:
            return model.generator.level_logits(intents.expand(-1, prefixes.shape[1], -1), prefixes, level)

        generic = exact_item_log_probs(step, model.trie, batch_size=6)
        items, item_scores = model.generate(batch, k=5)
    assert scores[:, 0].eq(float("-inf")).all()
    torch.testing.assert_close(scores[:, 1:], generic, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(6))
    torch.testing.assert_close(item_scores, scores.gather(1, items), rtol=1e-5, atol=1e-5)
    assert torch.equal(items, scores.topk(5, dim=1).indices)  # the beam finds the exact top here


def test_session_beam_emits_real_items_scored_as_a_full_rerun_scores_them(build) -> None:
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0][:4]
    with torch.no_grad():
        sessions, scores = model.generate_sessions(batch, beam_size=6)  # [B, 6, m], [B, 6]
        assert sessions.shape == (4, 6, 3) and (sessions > 0).all() and (scores.diff(dim=1) <= 0).all()
        memory, visible = model.encode(batch)
        paths = sessions.flatten(0, 1)  # [B * 6, m]
        rows = torch.arange(4).repeat_interleave(6)
        intents = model.intents(memory[rows], visible[rows], paths[:, :-1])  # [B * 6, m, D]: no cache
        per_item = model.generator.catalogue_log_probs(intents, model.structure)  # [B * 6, m, N]
        rescored = per_item.gather(2, (paths - 1).unsqueeze(-1)).sum(dim=(1, 2))
    torch.testing.assert_close(scores.flatten(), rescored, rtol=1e-5, atol=1e-5)


def test_session_beam_without_the_cache_finds_the_same_sessions(build) -> None:
    model, _, test = build()
    model.eval()
    batch = next(iter(test))[0][:4]
    cached_sessions, cached_scores = model.generate_sessions(batch, beam_size=6)
    sessions, scores = model.generate_sessions(batch, beam_size=6, use_kv_cache=False)
    assert torch.equal(sessions, cached_sessions)
    torch.testing.assert_close(scores, cached_scores)


@pytest.mark.parametrize("repeats", [False, True], ids=["", "repeat_explore"])
def test_gradients_reach_every_parameter(build, repeats) -> None:
    model, train, _ = build(user_token_fields=["gender", "occupation"], repeat_explore=repeats,
                            load_col={"inter": ["user_id", "item_id", "rating", "timestamp", "click", "conversion"],
                                      "user": ["user_id", "gender", "occupation"]})  # fmt: skip
    batch = next(iter(train))
    if repeats:  # ml-100k users never rate a movie twice: the copy attention needs sessions that repeat
        history = batch["item_id_list"]
        batch["item_id_list"] = torch.where(history > 0, history[:, :1], 0)  # one item, over and over
        batch["item_id"] = history[:, 0].clone()
    model.calculate_loss(batch).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    load = model.routing_load()  # [layers, E]
    assert load.shape == (1, 4) and torch.allclose(load.sum(1), torch.ones(1))


def test_routing_load_is_logged_and_reset_every_epoch(build, caplog) -> None:
    model, train, _ = build()
    model.calculate_loss(next(iter(train)))
    with caplog.at_level(logging.INFO):
        model.on_train_epoch_start(1)
    assert "expert load over epoch 0, per decoder layer (uniform 0.250):" in caplog.text
    assert model.routing_load().sum() == 0  # counting afresh
    with pytest.raises(ConfigError, match="experts_per_token must not exceed num_experts"):
        build(experts_per_token=5)


def test_dense_switch_replaces_every_mixture(build) -> None:
    model, train, _ = build(moe=False)
    assert model.routing_load() is None
    ffns = [layer.ffn for layer in model.decoder.layers]
    assert all(isinstance(ffn, FeedForward) and ffn.inner.out_features == 16 for ffn in ffns)  # 2 x expert width
    assert torch.isfinite(model.calculate_loss(next(iter(train))))


def test_search_space_names_only_known_keys() -> None:
    space = spaces.load_space("OneRec", spaces.SPACES_DIR)  # raises on a key no yaml defines
    assert {"num_experts", "positive_stages", "session_length"} <= set(space)


@pytest.mark.parametrize(
    "overrides", [{}, {"moe": False, "cascade_fields": [], "session_length": 1, "repeat_bias": True}]
)
def test_onerec_end_to_end_on_ml_tiny(sid_config, overrides) -> None:
    result = run("OneRec", "ml-tiny", config_dict={**sid_config, **overrides, "epochs": 2, "candidate_negatives": 9})
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10", "gmv@10"}


@pytest.mark.parametrize("key", ["repeat_explore", "repeat_bias"])
def test_with_repeats_scores_stay_a_distribution_and_generate_ranks_the_history_in(build, key) -> None:
    model, _, test = build(**{key: True})
    model.eval()
    batch = next(iter(test))[0][:6]
    with torch.no_grad():
        if key == "repeat_bias":
            torch.nn.init.constant_(model.repeat_shift.shift, -3.0)  # a distribution under any shift
        torch.testing.assert_close(model.full_sort_predict(batch).exp().sum(1), torch.ones(6))
        if key == "repeat_bias":
            torch.nn.init.constant_(model.repeat_shift.shift, 50.0)
        else:
            torch.nn.init.constant_(model.repeat_explore.gate.bias, 30.0)  # P(repeat) = 1
        repeating = model.full_sort_predict(batch)
        items, item_scores = model.generate(batch, k=3)
    torch.testing.assert_close(item_scores, repeating.gather(1, items))
    for row in range(6):
        history = set(batch["item_id_list"][row, : batch["item_length"][row]].tolist())
        assert int(repeating[row].argmax()) in history and set(items[row].tolist()) <= history


def test_the_repeat_shifts_loss_is_the_served_targets_log_prob_change_and_trains_only_the_shift(build) -> None:
    model, train, _ = build(repeat_bias=True)
    model.eval()  # no dropout: training and serving read the same intents
    batch = next(iter(train))
    targets = batch["item_id"][:, None]
    with torch.no_grad():
        batch["item_id"][::2] = batch["item_id_list"][::2, 0]  # half the targets repeat a seen item
        plain = model.full_sort_predict(batch).gather(1, targets)[:, 0]
        torch.nn.init.constant_(model.repeat_shift.shift, 2.0)
        shifted = model.full_sort_predict(batch).gather(1, targets)[:, 0]
    _, shift_loss = model.calculate_loss(batch)
    torch.testing.assert_close(shift_loss, -(shifted - plain).mean(), rtol=1e-4, atol=1e-5)
    shift_loss.backward()
    for name, parameter in model.named_parameters():
        reached = parameter.grad is not None and parameter.grad.abs().sum() > 0
        assert reached == (name == "repeat_shift.shift"), name
    with pytest.raises(ConfigError, match="repeat_explore and repeat_bias both"):
        build(repeat_bias=True, repeat_explore=True)
