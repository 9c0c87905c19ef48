"""``python -m recbole_oneranker.recommend`` on checkpoints of every model of the package (HSTU, OneRanker, GPR,
OneRec) and RecBole's SASRec trained on ml-tiny (and of HSTU on the embedded ml-100k): the users asked for come back
with their tokens, K items each, none seen, and OneRanker's rows say which stage placed each item."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import write_tiny_sid_file
from test_gpr import GPR_TINY
from test_oneranker import ONERANKER_TINY
from test_onerec import ONEREC_TINY

from recbole_oneranker import recommend
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.quick_start import run

HSTU_TINY = {"hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 1}
MODELS = {"HSTU": HSTU_TINY, "OneRanker": ONERANKER_TINY, "GPR": GPR_TINY, "OneRec": ONEREC_TINY, "SASRec": {}}
READS_SEMANTIC_IDS = ("GPR", "OneRec")
USERS = ["7", "13", "42"]  # tokens of ml-tiny users, not in id order


@pytest.fixture(scope="module")
def checkpoints(tiny_data_path, tmp_path_factory) -> dict[str, str]:
    """Each model of :data:`MODELS` trained one epoch on ml-tiny: model name -> its checkpoint."""
    folder = tmp_path_factory.mktemp("recommend")
    settings = {
        "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 20,
        "show_progress": False, "state": "ERROR", "data_path": str(tiny_data_path), "load_col": None,
        "cascade_fields": ["click", "conversion"], "value_field": "rating",
        "checkpoint_dir": str(folder / "saved"), "log_dir": str(folder / "log"),
    }  # fmt: skip
    sid_file = {"sid_file": str(write_tiny_sid_file(tiny_data_path, folder / "ml-tiny.sid"))}
    return {
        name: run(
            name, "ml-tiny", config_dict={**settings, **overrides, **(sid_file if name in READS_SEMANTIC_IDS else {})}
        )["saved_model_file"]
        for name, overrides in MODELS.items()
    }


def histories_in_test_rows(checkpoint: str) -> dict[str, set[str]]:
    """Each user token's history in the checkpoint's test rows, as item tokens: the items the test ranking masks."""
    config, model, dataset, *_, test_data = load_data_and_model(checkpoint)
    histories = {}
    for interaction, *_ in test_data:
        users = dataset.id2token(dataset.uid_field, interaction[dataset.uid_field].numpy())
        for user, history in zip(users, interaction[model.ITEM_SEQ], strict=True):
            histories[str(user)] = set(dataset.id2token(dataset.iid_field, history[history > 0].numpy()).tolist())
    return histories


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("model", MODELS)
def test_top_k_of_the_users_asked_for_without_their_items(model, checkpoints, tmp_path):
    out = tmp_path / "recs.csv"
    argv = ["--checkpoint", checkpoints[model], "--users", *USERS, "--k", "5", "--out", str(out)]
    assert recommend.main(argv) == 0
    rows = read_csv(out)
    by_user = {user: [row for row in rows if row["user"] == user] for user in USERS}
    assert {row["user"] for row in rows} == set(USERS)  # the tokens asked for, back as tokens
    histories = histories_in_test_rows(checkpoints[model])
    for user, items in by_user.items():
        assert [int(row["rank"]) for row in items] == [1, 2, 3, 4, 5]
        assert histories[user] and not {row["item"] for row in items} & histories[user]  # nothing seen
        scores = [float(row["score"]) for row in items]
        assert scores == sorted(scores, reverse=True)
    if model == "OneRanker":  # the ranker's candidates are served above every retrieved item
        stages = [row["stage"] for row in by_user[USERS[0]]]
        assert stages[0] == recommend.RANKED and stages == sorted(stages)  # "ranked" < "retrieved"
    else:
        assert "stage" not in rows[0]


def test_keep_seen_ranks_the_whole_catalogue(checkpoints, tmp_path):
    user = USERS[0]
    masked, kept = tmp_path / "masked.json", tmp_path / "kept.json"
    argv = ["--checkpoint", checkpoints["HSTU"], "--users", user, "--k", "100000"]
    assert recommend.main([*argv, "--out", str(masked)]) == 0
    assert recommend.main([*argv, "--keep-seen", "--out", str(kept)]) == 0
    (masked_user,), (kept_user,) = json.loads(masked.read_text()), json.loads(kept.read_text())
    kept_items = [entry["item"] for entry in kept_user["items"]]
    masked_items = [entry["item"] for entry in masked_user["items"]]
    history = histories_in_test_rows(checkpoints["HSTU"])[user]
    assert len(set(kept_items)) == len(kept_items) and history < set(kept_items)  # every item once, seen ones too
    assert masked_items == [item for item in kept_items if item not in history]  # the same order, seen items out


def test_every_user_by_default_and_unknown_users_refused(checkpoints, tmp_path, capsys):
    out = tmp_path / "all.csv"
    assert recommend.main(["--checkpoint", checkpoints["SASRec"], "--k", "2", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert len({row["user"] for row in rows}) == 60 and len(rows) == 120  # ml-tiny's 60 users, 2 items each
    with pytest.raises(SystemExit) as refusal:
        recommend.main(["--checkpoint", checkpoints["SASRec"], "--users", "1", "no-such-user"])
    assert refusal.value.code == 2 and "unknown user(s) in ml-tiny: no-such-user" in capsys.readouterr().err


def test_hstu_on_the_embedded_ml100k(tmp_path):
    settings = {
        **HSTU_TINY, "epochs": 1, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 20, "train_batch_size": 1024,
        "show_progress": False, "state": "ERROR",
    }  # fmt: skip
    checkpoint = run("HSTU", "ml-100k", config_dict=settings)["saved_model_file"]
    out = tmp_path / "recs.json"
    assert recommend.main(["--checkpoint", checkpoint, "--users", "196", "--k", "10", "--out", str(out)]) == 0
    (user,) = json.loads(out.read_text())
    assert user["user"] == "196" and len(user["items"]) == 10
    assert not {entry["item"] for entry in user["items"]} & histories_in_test_rows(checkpoint)["196"]
