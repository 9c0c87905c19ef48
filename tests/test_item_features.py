"""Item side features: the pure layer (means over padded value lists), the tables read from a dataset, and each
model reading them (history tokens for every model, candidate tokens for OneRanker's ranker)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from recbole.data import data_preparation

from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.layers import ItemFeatureConfig, ItemFeatureEmbedding
from recbole_oneranker.model.sequential_recommender import GPR, HSTU, OneRanker, OneRec
from recbole_oneranker.quick_start import run
from tests.conftest import EMBEDDED_ML100K, write_tiny_sid_file

TINY_SIZES = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2, "num_negatives": 16}
MODEL_SIZES = {
    HSTU: {},
    OneRanker: {"n_fake_items": 4, "num_candidates": 6, "decoder_positions": 2},
    GPR: {"mtp_heads": 2, "num_thinking_tokens": 2},
    OneRec: {
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_inner_size": 16,
        "num_experts": 4,
        "expert_inner_size": 8,
        "session_length": 2,
    },  # fmt: skip
}
FEATURES = ["class", "release_year"]


def layer(tables: dict[str, torch.Tensor], num_values: dict[str, int], hidden_size: int = 4) -> ItemFeatureEmbedding:
    torch.manual_seed(0)
    return ItemFeatureEmbedding(ItemFeatureConfig(hidden_size, num_values), tables)


def test_an_item_vector_is_the_sum_over_features_of_the_mean_of_its_values():
    genres = torch.tensor([[0, 0], [1, 2], [3, 0], [0, 0]])  # item 0 padding, item 3 without genres
    years = torch.tensor([0, 1, 1, 2])
    features = layer({"genre": genres, "year": years}, {"genre": 4, "year": 3})
    genre, year = (embedding.weight for embedding in features.embeddings)
    out = features(torch.tensor([[1, 2], [3, 0]]))  # [2, 2, D]
    assert torch.allclose(out[0, 0], (genre[1] + genre[2]) / 2 + year[1])
    assert torch.allclose(out[0, 1], genre[3] + year[1])
    assert torch.allclose(out[1, 0], year[2])  # no genre: only its year
    assert torch.equal(out[1, 1], torch.zeros(4))  # the padding item has no features


def test_gradients_reach_the_values_used_and_no_padding_row():
    features = layer({"genre": torch.tensor([[0, 0], [1, 2], [3, 0]])}, {"genre": 5})
    features(torch.tensor([1, 2])).sum().backward()
    touched = features.embeddings[0].weight.grad.abs().sum(1) > 0
    assert touched.tolist() == [False, True, True, True, False]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 3), st.randoms(use_true_random=False))
def test_a_value_list_reads_the_same_in_any_order_and_with_any_padding(values, padding, rng):
    shuffled = values.copy()
    rng.shuffle(shuffled)
    width = len(values) + padding
    tables = torch.tensor([[0] * width, values + [0] * padding, shuffled + [0] * padding])
    features = layer({"tags": tables}, {"tags": 10})
    out = features(torch.tensor([1, 2]))
    assert torch.allclose(out[0], out[1], atol=1e-6)


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="tables for"):
        layer({"genre": torch.tensor([0, 1])}, {"year": 2})
    with pytest.raises(ValueError, match="value id 5 >= its 5"):
        layer({"genre": torch.tensor([0, 5])}, {"genre": 5})
    with pytest.raises(ValueError, match="needs the padding id 0"):
        ItemFeatureConfig(4, {"genre": 1})


# -- the tables of a dataset, and the models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def item_data_path(tiny_data_path, tmp_path_factory) -> Path:
    """ml-tiny with a ``.item`` file (its items' titles, release years and genres from ml-100k) and a token column
    of the ``.inter`` file that describes the item (``lead_genre``, its first genre), as Taobao's category does."""
    root = tmp_path_factory.mktemp("data-with-items")
    shutil.copytree(tiny_data_path / "ml-tiny", root / "ml-tiny")
    inter = pd.read_csv(root / "ml-tiny" / "ml-tiny.inter", sep="\t")
    items = pd.read_csv(EMBEDDED_ML100K.with_suffix(".item"), sep="\t")
    items = items[items["item_id:token"].isin(inter["item_id:token"])]
    items.to_csv(root / "ml-tiny" / "ml-tiny.item", sep="\t", index=False)
    lead_genre = items.set_index("item_id:token")["class:token_seq"].str.split(" ").str[0]
    inter["lead_genre:token"] = inter["item_id:token"].map(lead_genre)
    inter.to_csv(root / "ml-tiny" / "ml-tiny.inter", sep="\t", index=False)
    return root


@pytest.fixture
def build(tiny_config, item_data_path, tmp_path):
    """``build(model_class, **overrides) -> (model, train loader)`` on ml-tiny with its ``.item`` file."""

    def make(model_class, **overrides):
        settings = {**tiny_config, **TINY_SIZES, **MODEL_SIZES[model_class], "data_path": str(item_data_path)}
        if model_class in (GPR, OneRec):
            settings["sid_file"] = str(write_tiny_sid_file(item_data_path, tmp_path / "ml-tiny.sid"))
        config = Config(model_class.__name__, "ml-tiny", config_dict={**settings, **overrides})
        train, _, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        return model_class(config, train._dataset), train

    return make


def test_tables_come_from_the_item_file_and_from_item_columns_of_the_inter_file(build):
    model, train = build(HSTU, item_feature_fields=["class", "release_year", "lead_genre"])
    dataset = train._dataset
    genres, years, lead_genres = model.history_item_features.tables()
    toy_story = dataset.token2id(dataset.iid_field, "1")
    names = [dataset.id2token("class", int(value)) for value in genres[toy_story] if value > 0]
    assert names == ["Animation", "Children's", "Comedy"]
    assert dataset.id2token("release_year", int(years[toy_story, 0])) == "1995"
    assert genres[0].eq(0).all() and years[0, 0] == 0  # the padding item
    assert dataset.id2token("lead_genre", int(lead_genres[toy_story, 0])) == "Animation"  # from its .inter rows
    seen = torch.zeros(dataset.item_num, dtype=torch.bool)
    seen[dataset.inter_feat[dataset.iid_field]] = True
    assert lead_genres[seen].gt(0).all() and lead_genres[~seen].eq(0).all()  # unseen in training: no value


def test_a_field_that_is_not_an_item_token_column_is_refused_in_one_line(build):
    with pytest.raises(ConfigError, match="'rating' is not a token or token_seq column of ml-tiny.item"):
        build(HSTU, item_feature_fields=["rating"])  # a float column
    with pytest.raises(ConfigError, match="'gender' is not a token or token_seq column"):
        build(HSTU, item_feature_fields=["gender"])  # a user column


@pytest.mark.parametrize("model_class", [HSTU, OneRanker, GPR, OneRec], ids=lambda c: c.__name__)
def test_every_model_reads_the_history_features_and_trains_their_tables(build, model_class):
    model, train = build(model_class, item_feature_fields=FEATURES)
    batch = next(iter(train))
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    sum(loss).backward() if isinstance(loss, tuple) else loss.backward()
    for embedding in model.history_item_features.embeddings:
        assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0
    plain, _ = build(model_class)
    assert plain.history_item_features is None
    off, _ = build(model_class, item_feature_fields=FEATURES, history_item_features=False)
    assert off.history_item_features is None


def test_without_features_no_parameter_is_added(build):
    """Reproducibility of existing rows: an empty ``item_feature_fields`` adds no parameter and draws no number."""
    plain, _ = build(OneRanker)
    assert not any("feature" in name for name, _ in plain.named_parameters())


def test_the_ranker_reads_the_candidates_features_through_its_own_tables(build):
    model, train = build(OneRanker, item_feature_fields=FEATURES, history_item_features=False)
    assert model.history_item_features is None and model.candidate_features is not None
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        before = model.serve(batch)
        model.candidate_features.embeddings[0].weight.normal_()
        after = model.serve(batch)
    assert torch.equal(before.retrieval_scores, after.retrieval_scores)  # the generator does not read them
    assert not torch.allclose(before.ranker_scores, after.ranker_scores)
    ranker_only, _ = build(OneRanker, item_feature_fields=FEATURES, candidate_item_features=False)
    assert ranker_only.candidate_features is None


def test_a_run_with_item_features_trains_and_evaluates(tiny_config, item_data_path):
    settings = {**tiny_config, **TINY_SIZES, **MODEL_SIZES[OneRanker], "data_path": str(item_data_path)}
    result = run("OneRanker", "ml-tiny", config_dict={**settings, "item_feature_fields": FEATURES, "epochs": 1})
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
