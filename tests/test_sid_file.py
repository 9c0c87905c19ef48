"""Tests of the SID file, its loader and the tokenize command: round trips, one-line errors, alignment to a RecBole
dataset's item ids, the item vector sources, and the command end to end on the embedded ml-100k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.data.item_vectors import checkpoint_item_table, file_vectors, item_feature_table
from recbole_oneranker.data.sid import (
    PAD_CODE,
    SIDFileError,
    default_sid_file,
    load_dataset_sids,
    manifest_path,
    read_sid_file,
    write_sid_file,
)
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.model.tokenizers import TokenizerConfig, fit_semantic_ids
from recbole_oneranker.tokenize import main as tokenize_main


def _random_sid(seed: int, num_items: int, levels: int) -> tuple[list[str], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 50, (num_items, levels), generator=generator)
    codes = torch.unique(codes, dim=0)[torch.randperm(len(torch.unique(codes, dim=0)), generator=generator)]
    tokens = [f"item-{i}" if i % 3 else str(1000 + i) for i in range(len(codes))]  # mixed token shapes
    return tokens, codes


@pytest.mark.parametrize("seed", range(5))
def test_a_written_file_reads_back_the_same(tmp_path, seed):
    tokens, codes = _random_sid(seed, num_items=40 + seed * 17, levels=1 + seed % 4)
    write_sid_file(tmp_path / "x.sid", tokens, codes)
    read_tokens, read_codes = read_sid_file(tmp_path / "x.sid")
    assert read_tokens == tokens and torch.equal(read_codes, codes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("item\tcode_1\n1\t2\n", r"x.sid:1: the header"),
        ("item_id\n", r"x.sid:1: the header"),
        ("item_id\tcode_1\tcode_2\n1\t2\t3\n2\t3\n", r"x.sid:3: expected an item token and 2 non-negative codes"),
        ("item_id\tcode_1\n1\t-2\n", r"x.sid:2: expected"),
        ("item_id\tcode_1\n1\tA\n", r"x.sid:2: expected"),
        ("item_id\tcode_1\n1\t2\n1\t3\n", r"more than one row"),
        ("item_id\tcode_1\tcode_2\n1\t2\t3\n2\t2\t3\n", r"share all their codes"),
    ],
)
def test_malformed_files_are_one_line_errors_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "x.sid").write_text(text)
    with pytest.raises(SIDFileError, match=message) as error:
        read_sid_file(tmp_path / "x.sid")
    assert "\n" not in str(error.value)


@pytest.fixture
def tiny_dataset(tiny_config):
    return create_dataset(Config("SASRec", "ml-tiny", config_dict=tiny_config))


def test_the_loader_aligns_codes_to_the_datasets_internal_item_ids(tiny_dataset, tmp_path):
    dataset_tokens = list(tiny_dataset.field2id_token["item_id"][1:])
    tokens = [*reversed(dataset_tokens), "not-in-the-dataset"]
    codes = torch.stack([torch.arange(len(tokens)), torch.arange(len(tokens)) % 7], dim=1)
    write_sid_file(tmp_path / "ml-tiny.sid", tokens, codes)
    table = load_dataset_sids(tiny_dataset, tmp_path / "ml-tiny.sid")
    assert table.shape == (tiny_dataset.item_num, 2) and table.dtype == torch.int64
    assert torch.all(table[0] == PAD_CODE)
    row_of = {token: row for row, token in enumerate(tokens)}
    for item_id in (1, 2, len(dataset_tokens)):
        assert torch.equal(table[item_id], codes[row_of[tiny_dataset.field2id_token["item_id"][item_id]]])


def test_a_missing_file_names_the_command_that_makes_it(tiny_dataset):
    with pytest.raises(SIDFileError) as error:
        load_dataset_sids(tiny_dataset)
    message = str(error.value)
    expected = default_sid_file(tiny_dataset.config["data_path"], "ml-tiny")
    assert "\n" not in message and str(expected) in message
    assert "make it with: python -m recbole_oneranker.tokenize --dataset ml-tiny --data-path " in message


def test_a_file_without_some_dataset_items_is_refused(tiny_dataset, tmp_path):
    tokens = list(tiny_dataset.field2id_token["item_id"][2:])  # the first item is missing
    write_sid_file(tmp_path / "ml-tiny.sid", tokens, torch.arange(len(tokens)).unsqueeze(1))
    with pytest.raises(SIDFileError, match="no codes for 1 of the dataset's"):
        load_dataset_sids(tiny_dataset, tmp_path / "ml-tiny.sid")


def test_the_embedded_ml100k_keeps_its_file_under_dataset():
    embedded = Config("SASRec", "ml-100k", config_dict={"state": "ERROR"})["data_path"]
    assert default_sid_file(embedded, "ml-100k").as_posix() == "dataset/ml-100k/ml-100k.sid"
    assert default_sid_file("data/beauty", "beauty").as_posix() == "data/beauty/beauty.sid"


def test_the_command_end_to_end_on_the_embedded_ml100k(tmp_path, capsys):
    command = ["--dataset", "ml-100k", "--data-path", str(tmp_path), "--codebook-size", "16", "--levels", "2"]
    command += ["--source", "attributes", "--columns", "class", "release_year", "--quiet"]
    assert tokenize_main(command) == 0
    sid_file = tmp_path / "ml-100k" / "ml-100k.sid"
    tokens, codes = read_sid_file(sid_file)
    assert len(tokens) == 1682 and codes.shape == (1682, 3)
    manifest = json.loads(manifest_path(sid_file).read_text())
    assert manifest["method"] == "rq-kmeans" and manifest["codebook_sizes"][:2] == [16, 16]
    assert manifest["sources"]["attributes"]["columns"] == ["class", "release_year"]
    assert manifest["command"].startswith("python -m recbole_oneranker.tokenize --dataset ml-100k")
    assert 0 < manifest["metrics"]["collision_rate"] < 1 and manifest["metrics"]["fit_seconds"] > 0
    first = sid_file.read_bytes()
    assert tokenize_main(command) == 0
    assert sid_file.read_bytes() == first  # same seed, same file
    assert tokenize_main([*command, "--seed", "1"]) == 0
    assert sid_file.read_bytes() != first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "no-such-data"], "dataset 'no-such-data' not found"),
        (["--dataset", "ml-100k", "--codebook-size", "5000"], "exceeds the 1682 items"),
        (["--dataset", "ml-100k", "--source", "checkpoint"], "needs --checkpoint"),
        (["--dataset", "ml-100k", "--columns", "genre"], "no item feature column"),
        (["--dataset", "ml-100k", "--levels", "0"], "need levels >= 1"),
        (["--dataset", "ml-100k", "--method", "rq-vae", "--epochs", "0"], "sizes must be positive"),
    ],
)
def test_command_mistakes_are_one_line_and_status_2(tmp_path, capsys, extra, message):
    assert tokenize_main(["--data-path", str(tmp_path), "--quiet", *extra]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and error.startswith("tokenize: error: ")


def test_a_users_vectors_file_becomes_the_sid_files_items(tmp_path):
    tokens = [str(i) for i in range(1, 1683)]
    vectors = np.random.default_rng(0).normal(size=(len(tokens), 6)).astype(np.float32)
    np.savez(tmp_path / "vectors.npz", ids=np.array(tokens), vectors=vectors)
    np.save(tmp_path / "vectors.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(tokens))
    from_npz, from_npy = (
        file_vectors(tmp_path / "vectors.npz"),
        file_vectors(tmp_path / "vectors.npy", tmp_path / "ids.txt"),
    )
    assert from_npz.tokens == from_npy.tokens == tokens
    assert torch.equal(from_npz.vectors, from_npy.vectors) and torch.equal(from_npz.vectors, torch.from_numpy(vectors))
    command = ["--dataset", "ml-100k", "--data-path", str(tmp_path), "--source", "file", "attributes"]
    assert tokenize_main([*command, "--vectors", str(tmp_path / "vectors.npz"), "--codebook-size", "8", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "ml-100k" / "ml-100k.sid.json").read_text())
    assert manifest["vector_dim"] == 6 + 64 and manifest["num_items"] == 1682


def test_a_checkpoints_item_table_is_keyed_by_the_datasets_item_tokens(tiny_config, tiny_data_path, tmp_path):
    from recbole_oneranker.quick_start import run

    tiny_hstu = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2, "num_negatives": 16}
    checkpoint = run("HSTU", "ml-tiny", config_dict={**tiny_config, **tiny_hstu})["saved_model_file"]
    command = ["--dataset", "ml-tiny", "--data-path", str(tiny_data_path), "--out", str(tmp_path / "ml-tiny.sid")]
    assert tokenize_main([*command, "--source", "checkpoint", "--checkpoint", checkpoint, "--codebook-size", "8"]) == 0
    tokens, codes = read_sid_file(tmp_path / "ml-tiny.sid")
    dataset = create_dataset(Config("HSTU", "ml-tiny", config_dict=tiny_config))
    assert tokens == list(dataset.field2id_token["item_id"][1:])  # the table's rows 1.. in internal-id order
    table = checkpoint_item_table(checkpoint)
    rebuilt = fit_semantic_ids(table[1:], TokenizerConfig(codebook_size=8)).codes  # the same vectors, same codes
    assert torch.equal(codes, rebuilt)
    assert torch.equal(load_dataset_sids(dataset, tmp_path / "ml-tiny.sid")[1:], codes)


def test_the_item_table_key_is_found_by_its_suffix_when_unambiguous(tmp_path):
    table = torch.randn(5, 3)
    torch.save({"state_dict": {"encoder.item_embedding.weight": table, "other": torch.ones(2)}}, tmp_path / "a.pth")
    assert torch.equal(checkpoint_item_table(tmp_path / "a.pth"), table)
    two = {"a.item_embedding.weight": table, "b.item_embedding.weight": table}
    torch.save({"state_dict": two}, tmp_path / "b.pth")
    with pytest.raises(ConfigError, match="2 keys end in 'item_embedding.weight'"):
        checkpoint_item_table(tmp_path / "b.pth")
    assert torch.equal(checkpoint_item_table(tmp_path / "b.pth", "b.item_embedding.weight"), table)


def test_item_features_come_from_inter_columns_constant_within_items(tmp_path):
    (tmp_path / "shop.inter").write_text(
        "user_id:token\titem_id:token\tcategory_id:token\tshop:token\tvalue:float\n"
        "1\t10\tc1\ts1\t1\n2\t10\tc1\ts2\t2\n1\t11\tc2\ts1\t1\n"
    )
    table = item_feature_table(tmp_path, "shop")
    assert list(table.columns) == ["item_id", "category_id:token"]  # shop varies within item 10, value is a float
    assert table.values.tolist() == [["10", "c1"], ["11", "c2"]]


def test_a_missing_file_given_by_path_names_the_command_that_writes_that_path(tiny_dataset, tmp_path):
    wanted = tmp_path / "elsewhere" / "ids.sid"
    with pytest.raises(SIDFileError, match=f"--out {wanted}$"):
        load_dataset_sids(tiny_dataset, wanted)
