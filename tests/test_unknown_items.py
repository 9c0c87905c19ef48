"""The unknown-item vector (``history_id_dropout``, ``candidate_id_dropout``): which items it replaces, how it learns,
that it draws nothing it should not, and what it changes in the history encoder and the models."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from recbole.data import data_preparation

from recbole_oneranker.bench.repeats import repeat_targets
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import (
    HSTUConfig,
    SequenceEncoder,
    SequenceEncoderConfig,
    UnknownItems,
    UnknownItemsConfig,
)
from recbole_oneranker.model.sequential_recommender import GPR, HSTU, OneRanker, OneRec
from recbole_oneranker.quick_start import run
from tests.conftest import items_in_batches

HSTU_TINY = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2, "num_negatives": 16}
ONERANKER_TINY = {**HSTU_TINY, "num_candidates": 5, "n_fake_items": 4}


@settings(deadline=None, max_examples=100)
@given(
    known=st.lists(st.booleans(), min_size=2, max_size=12),
    data=st.data(),
)
def test_in_evaluation_exactly_the_unknown_real_items_are_replaced(known, data) -> None:
    known_mask = torch.tensor(known)
    items = torch.tensor(data.draw(st.lists(st.integers(0, len(known) - 1), min_size=1, max_size=20)))
    layer = UnknownItems(UnknownItemsConfig(hidden_size=3, dropout=0.3), known_mask).eval()
    embedded = torch.randn(len(items), 3)
    out = layer(embedded, items)
    for position, item in enumerate(items.tolist()):
        expected = layer.vector if item != 0 and not known[item] else embedded[position]
        assert torch.equal(out[position], expected.detach())


def test_in_training_a_share_of_the_known_items_is_replaced_too_and_padding_never() -> None:
    known = torch.ones(5, dtype=torch.bool)
    layer = UnknownItems(UnknownItemsConfig(hidden_size=2, dropout=0.25), known).train()
    items = torch.randint(0, 5, (20000,))
    replaced = layer.unknown(items)
    assert not replaced[items == 0].any()
    assert abs(replaced[items != 0].float().mean().item() - 0.25) < 0.02


def test_the_vector_learns_and_replaced_embeddings_get_no_gradient() -> None:
    layer = UnknownItems(UnknownItemsConfig(hidden_size=4, dropout=0.5), torch.tensor([False, True, False])).eval()
    embedded = torch.randn(2, 4, requires_grad=True)
    layer(embedded, torch.tensor([1, 2])).sum().backward()
    assert layer.vector.grad is not None and layer.vector.grad.abs().sum() > 0
    assert embedded.grad[0].abs().sum() > 0 and embedded.grad[1].abs().sum() == 0  # item 2 is unknown


def test_a_zero_start_draws_no_random_number() -> None:
    torch.manual_seed(3)
    UnknownItems(UnknownItemsConfig(hidden_size=4, dropout=0.1, init_std=0.0), torch.ones(3, dtype=torch.bool))
    drawn_after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), drawn_after)


@pytest.mark.parametrize(
    "sizes",
    [
        {"hidden_size": 0, "dropout": 0.1},
        {"hidden_size": 2, "dropout": 0.0},
        {"hidden_size": 2, "dropout": 1.0},
        {"hidden_size": 2, "dropout": 0.1, "init_std": -1.0},
    ],
)
def test_config_errors(sizes) -> None:
    with pytest.raises(ValueError):
        UnknownItemsConfig(**sizes)


def test_known_must_be_a_bool_mask() -> None:
    with pytest.raises(ValueError, match="bool mask"):
        UnknownItems(UnknownItemsConfig(hidden_size=2, dropout=0.1), torch.tensor([0, 1, 1]))


TINY_STACK = HSTUConfig(embedding_dim=8, linear_hidden_dim=4, attention_dim=4, num_heads=2, num_blocks=1, max_seq_len=6)


def _encoders(known: torch.Tensor) -> tuple[SequenceEncoder, SequenceEncoder]:
    torch.manual_seed(0)
    plain = SequenceEncoder(SequenceEncoderConfig(num_items=len(known), hstu=TINY_STACK)).eval()
    torch.manual_seed(0)
    sizes = SequenceEncoderConfig(num_items=len(known), hstu=TINY_STACK, unknown_item_dropout=0.2)
    return plain, SequenceEncoder(sizes, known_items=known).eval()


def test_the_encoder_draws_its_weights_as_without_the_vector_and_reads_known_items_as_before() -> None:
    plain, with_unknown = _encoders(torch.tensor([False, True, True, True, True, True]))
    assert set(with_unknown.state_dict()) == set(plain.state_dict()) | {"unknown_items.vector"}
    for name, weights in plain.state_dict().items():
        assert torch.equal(with_unknown.state_dict()[name], weights), name
    items, lengths = torch.tensor([[3, 4, 5], [5, 1, 0]]), torch.tensor([3, 2])
    torch.testing.assert_close(with_unknown(items, lengths), plain(items, lengths), rtol=0, atol=0)


def test_an_unknown_items_table_row_changes_no_state() -> None:
    known = torch.tensor([False, True, True, True, False, True])  # item 4 is unknown
    _, encoder = _encoders(known)
    items, lengths = torch.tensor([[3, 4, 5], [4, 1, 0]]), torch.tensor([3, 2])
    with torch.no_grad():
        before = encoder(items, lengths)
        encoder.item_embedding.weight[4].normal_()
        encoder.unknown_items.vector.normal_()
        after = encoder(items, lengths)
    torch.testing.assert_close(after[0, :1], before[0, :1])  # causal: the position before item 4 is untouched
    assert not torch.allclose(after[0, 1:], before[0, 1:])  # the vector, not the row, moved the later states
    with torch.no_grad():
        encoder.item_embedding.weight[4].normal_()
    torch.testing.assert_close(encoder(items, lengths), after)  # item 4's own row is never read


def test_the_encoder_needs_the_known_items() -> None:
    with pytest.raises(ValueError, match="needs known_items"):
        SequenceEncoder(SequenceEncoderConfig(num_items=5, hstu=TINY_STACK, unknown_item_dropout=0.1))
    with pytest.raises(ValueError, match=r"known_items has shape \(4,\), not \(5,\)"):
        SequenceEncoder(
            SequenceEncoderConfig(num_items=5, hstu=TINY_STACK, unknown_item_dropout=0.1), torch.ones(4) > 0
        )
    with pytest.raises(ValueError, match="item table: this encoder has none"):
        SequenceEncoderConfig(num_items=0, hstu=TINY_STACK, unknown_item_dropout=0.1)


@pytest.fixture
def build_hstu(tiny_config):
    def build(**overrides):
        config = Config("HSTU", "ml-tiny", config_dict={**tiny_config, **HSTU_TINY, **overrides})
        train, _, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        return HSTU(config, train._dataset), train

    return build


def test_hstu_knows_the_items_its_training_rows_hold_and_draws_every_other_weight_as_before(build_hstu):
    plain, _ = build_hstu()
    model, train = build_hstu(history_id_dropout=0.1)
    assert model.encoder.unknown_items.known.nonzero().flatten().tolist() == items_in_batches(train)
    expected = copy.deepcopy(plain.state_dict())
    expected["encoder.unknown_items.vector"] = torch.zeros(HSTU_TINY["hidden_size"])
    assert model.state_dict().keys() == expected.keys()
    for name, weights in expected.items():
        assert torch.equal(model.state_dict()[name], weights), name


def test_without_history_unknown_items_every_item_keeps_its_row(build_hstu):
    model, train = build_hstu(history_id_dropout=0.1, history_unknown_items=False)
    assert model.encoder.unknown_items.known[1:].all()
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        before = model.encode(batch)
        model.encoder.unknown_items.vector.normal_()
        torch.testing.assert_close(model.encode(batch), before)  # in evaluation no item enters as the vector


def test_hstu_vector_learns_from_id_dropout(build_hstu):
    model, train = build_hstu(history_id_dropout=0.5)
    torch.manual_seed(0)
    model.calculate_loss(next(iter(train))).backward()
    assert model.encoder.unknown_items.vector.grad.abs().sum() > 0


@pytest.mark.parametrize("model_class", [GPR, OneRec])
def test_semantic_id_models_refuse_history_id_dropout(tiny_config, tiny_sid_file, model_class):
    settings = {**tiny_config, "sid_file": str(tiny_sid_file), "history_id_dropout": 0.1}
    config = Config(model_class.__name__, "ml-tiny", config_dict=settings)
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ConfigError, match="semantic IDs"):
        model_class(config, train._dataset)


def test_history_unknown_items_off_needs_the_vector(build_hstu):
    with pytest.raises(ConfigError, match="without history_id_dropout there is no vector"):
        build_hstu(history_unknown_items=False)


def test_oneranker_reads_unknown_history_items_after_its_user_tokens(tiny_config):
    overrides = {"history_id_dropout": 0.1, "user_token_fields": ["gender", "occupation"]}
    config = Config("OneRanker", "ml-tiny", config_dict={**tiny_config, **ONERANKER_TINY, **overrides})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = OneRanker(config, train._dataset).eval()
    batch = next(iter(train))
    unknown = batch["item_id_list"][0, 1]  # the first row's second history item, as if no training row held it
    with torch.no_grad():
        model.encoder.unknown_items.known[unknown] = False
        before = model.encode(batch)
        model.encoder.unknown_items.vector.normal_()
        after = model.encode(batch)
    first_after = (batch["item_id_list"][0] == unknown).nonzero()[0, 0]  # its first position in that row
    torch.testing.assert_close(after[0, :first_after], before[0, :first_after])  # causal, user tokens first
    assert not torch.allclose(after[0, first_after], before[0, first_after])


def test_ml_tiny_test_histories_end_with_unknown_items_so_the_end_to_end_run_replaces_some(tiny_config):
    assert repeat_targets("HSTU", "ml-tiny", {**tiny_config, **HSTU_TINY}).unknown_last


def test_hstu_end_to_end_with_unknown_history_items(tiny_config):
    settings = {**tiny_config, **HSTU_TINY, "epochs": 2, "history_id_dropout": 0.1}
    result = run("HSTU", "ml-tiny", config_dict=settings)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_the_candidate_vector_is_the_formula_it_replaced() -> None:
    """OneRanker's candidate_id_dropout rows were made with an inline vector (``randn(D) * 0.02``) and mask
    (``~known[c] | (rand(c.shape) < p)`` in training); the layer draws and computes the same for real candidates."""
    known = torch.tensor([False, True, False, True, True])
    candidates = torch.tensor([[1, 2, 3], [4, 2, 1]])
    embedded = torch.randn(2, 3, 6)
    torch.manual_seed(7)
    layer = UnknownItems(UnknownItemsConfig(hidden_size=6, dropout=0.3), known).train()
    out = layer(embedded, candidates)
    torch.manual_seed(7)
    vector = torch.randn(6) * 0.02
    unknown = ~known[candidates] | (torch.rand(candidates.shape) < 0.3)
    torch.testing.assert_close(out, torch.where(unknown.unsqueeze(-1), vector, embedded), rtol=0, atol=0)
