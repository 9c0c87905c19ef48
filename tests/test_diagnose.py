"""bench/diagnose.py on a tiny trained OneRanker: the reloaded model scores as trained, the reports are sound."""

from __future__ import annotations

import pytest
import torch
from recbole.data import data_preparation
from test_oneranker import ONERANKER_TINY, SID

from recbole_oneranker.bench import diagnose
from recbole_oneranker.checkpoints import load_data_and_model
from recbole_oneranker.config import Config
from recbole_oneranker.data import create_dataset
from recbole_oneranker.model.sequential_recommender import OneRanker
from recbole_oneranker.quick_start import run


@pytest.fixture(scope="module")
def trained(tiny_data_path, tmp_path_factory):
    """A OneRanker trained 2 epochs on ml-tiny, its checkpoint in a folder of its own."""
    folder = tmp_path_factory.mktemp("diagnose")
    settings = {
        **ONERANKER_TINY, "epochs": 2, "train_batch_size": 256, "eval_batch_size": 256, "n_layers": 1,
        "MAX_ITEM_LIST_LENGTH": 20, "show_progress": False, "state": "ERROR", "metrics": ["Hit", "NDCG"],
        "topk": [10, 100], "valid_metric": "NDCG@10", "data_path": str(tiny_data_path), "load_col": None,
        "cascade_fields": ["click", "conversion"], "value_field": "rating", "repeat_bias": True,
        "history_negatives": True, "checkpoint_dir": str(folder / "saved"), "log_dir": str(folder / "log"),
    }  # fmt: skip
    return run("OneRanker", "ml-tiny", config_dict=settings)


def test_a_reloaded_checkpoint_scores_as_trained(trained):
    config, model, *_ = load_data_and_model(trained["saved_model_file"])
    assert config["repeat_bias"] and config["n_fake_items"] == ONERANKER_TINY["n_fake_items"]
    assert not model.training
    assert model.repeat_shift.shift.item() != 0.0  # the trained value, not a fresh model's


def test_seen_report_matches_the_evaluator(trained, tmp_path):
    out = tmp_path / "seen.md"
    argv = ["seen", "--checkpoint", trained["saved_model_file"], "--k", "100", "--out", str(out)]
    assert diagnose.main(argv) == 0
    cells = [line.strip("|").split("|") for line in out.read_text().splitlines() if line.startswith("| ")]
    values = {name.strip(): float(value) for name, value in cells[1:]}  # below the header
    # The same checkpoint, the same test split: RecBole's evaluator gave this NDCG@100 with seen items kept
    assert trained["test_result"]["ndcg@100"] > 0.0  # else the comparison proves nothing
    assert values["NDCG@100, seen items kept"] == pytest.approx(trained["test_result"]["ndcg@100"], abs=1e-4)
    assert 0.0 <= values["top-100 slots holding a history item"] <= 1.0


def test_ranker_report_refits_without_touching_the_model(trained, tmp_path, monkeypatch):
    config, model, _, train_data, valid_data, _ = load_data_and_model(trained["saved_model_file"])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    as_trained = diagnose.ranker_as_trained(model, valid_data)
    assert set(as_trained) == {"retrieval", "ranker alone", "served (ranker over retrieval)", "sets"}
    torch.manual_seed(0)
    sets = diagnose.candidate_sets(model, train_data, passes=1, heldout_every=3)
    assert all(s["is_target"].sum(1).eq(1).all() for s in sets)  # the target is in every set, once
    curves = diagnose.refit(model, sets, epochs=2, lr=1e-2, log=lambda line: None)
    assert set(curves) == {"retrieval", "ranker alone", "ranker as residual (weight 1)",
                           "bilinear on the generator's inputs"}  # fmt: skip
    assert all(len(curve) == 3 for name, curve in curves.items() if name != "retrieval")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], msg=name)

    out = tmp_path / "ranker.md"
    argv = ["ranker", "--checkpoint", trained["saved_model_file"], "--refit-epochs", "1", "--passes", "1"]
    assert diagnose.main([*argv, "--out", str(out)]) == 0
    report = out.read_text()
    assert "## As trained" in report and "| bilinear on the generator's inputs |" in report


def test_the_refit_scorers_read_a_model_without_item_ids(tiny_config, tiny_sid_file):
    """With ``item_id_embeddings: False`` the generator's inputs are the items' code embeddings' sums: the bilinear
    scorer refits on them (it read the id table, which such a model does not have)."""
    settings = {**tiny_config, **ONERANKER_TINY, **SID, "sid_file": str(tiny_sid_file), "item_id_embeddings": False}
    config = Config("OneRanker", "ml-tiny", config_dict=settings)
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = OneRanker(config, train._dataset)
    sets = diagnose.candidate_sets(model, train, passes=1, heldout_every=3)
    curves = diagnose.refit(model, sets, epochs=1, lr=1e-2, log=lambda line: None)
    assert len(curves["bilinear on the generator's inputs"]) == 2  # before and after the pass


def test_ranker_report_refuses_a_model_without_ranker(trained, tmp_path, tiny_data_path):
    hstu = run("HSTU", "ml-tiny", config_dict={
        "epochs": 1, "hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_layers": 1,
        "MAX_ITEM_LIST_LENGTH": 20, "show_progress": False, "state": "ERROR", "data_path": str(tiny_data_path),
        "load_col": None, "checkpoint_dir": str(tmp_path / "saved"), "log_dir": str(tmp_path / "log"),
    })  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["ranker", "--checkpoint", hstu["saved_model_file"]])
    assert exit_info.value.code == 2


def test_gates_report_zeroes_each_gate_then_restores_it(trained):
    _, model, *_ = load_data_and_model(trained["saved_model_file"])
    trained_gates = {name: getattr(model, name).item() for name in diagnose.GATES}
    assert all(trained_gates.values())  # a gate still at its initial 0 would make the rows below indistinguishable

    def evaluate(loader):  # records the gates each row is evaluated with
        return {name: getattr(model, name).item() for name in diagnose.GATES}

    result = diagnose.gates_report(model, evaluate, {"valid": None}, sweep={"task_gate": [0.5, 2.0]})
    assert result["gates"] == pytest.approx(trained_gates)
    seen = {label: splits["valid"] for label, splits in result["rows"].items()}
    assert seen == {
        "as trained": pytest.approx(trained_gates),
        "task_gate = 0": pytest.approx({**trained_gates, "task_gate": 0.0}),
        "rank_gate = 0": pytest.approx({**trained_gates, "rank_gate": 0.0}),
        "every gate = 0": {"task_gate": 0.0, "rank_gate": 0.0},
        "task_gate = 0.5": pytest.approx({**trained_gates, "task_gate": 0.5}),
        "task_gate = 2": pytest.approx({**trained_gates, "task_gate": 2.0}),
    }
    assert {name: getattr(model, name).item() for name in diagnose.GATES} == pytest.approx(trained_gates)


def test_gates_report_as_trained_matches_the_run(trained, tmp_path):
    out = tmp_path / "gates.md"
    assert diagnose.main(["gates", "--checkpoint", trained["saved_model_file"], "--out", str(out)]) == 0
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines() if line.startswith("| ")]
    header, table = [cell.strip() for cell in rows[0]], {row[0].strip(): row[1:] for row in rows[1:]}
    assert list(table) == ["as trained", "task_gate = 0", "rank_gate = 0", "every gate = 0"]
    as_trained = dict(zip(header[1:], (float(cell) for cell in table["as trained"]), strict=True))
    assert as_trained["test ndcg@10"] == pytest.approx(trained["test_result"]["ndcg@10"], abs=1e-4)


@pytest.mark.parametrize("sweep", ["no_gate=1", "task_gate=a,b"])
def test_gates_report_refuses_a_bad_sweep(trained, sweep):
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["gates", "--checkpoint", trained["saved_model_file"], "--sweep", sweep])
    assert exit_info.value.code == 2


def test_order_alignment_of_reversed_and_equal_orders():
    generator, cutoffs = torch.tensor([[3.0, 2.0, 1.0]]), (1, 2, 3)
    gaps, overlaps = diagnose.order_alignment(generator, torch.tensor([[1.0, 2.0, 3.0]]), cutoffs)
    assert gaps.tolist() == [2, 0, 2] and overlaps.tolist() == [[0.0, 0.5, 1.0]]
    gaps, overlaps = diagnose.order_alignment(generator, 10 * generator, cutoffs)  # same order, other scale
    assert gaps.tolist() == [0, 0, 0] and overlaps.tolist() == [[1.0, 1.0, 1.0]]


def test_chance_alignment_is_the_expected_gap_of_independent_orders():
    chance = diagnose.chance_alignment(30, [1, 15])
    assert chance["mean |rank gap|"] == pytest.approx((30**2 - 1) / (3 * 30))  # E|X - Y|, X, Y uniform on 1..30
    assert chance["top-1 overlap"] == pytest.approx(1 / 30) and chance["top-15 overlap"] == pytest.approx(0.5)


def test_alignment_report_on_the_served_sets(trained):
    _, model, _, _, valid_data, _ = load_data_and_model(trained["saved_model_file"])
    n = model.num_candidates
    report = diagnose.alignment_report(model, valid_data, [1, n])
    assert report["ranker alone"][f"top-{n} overlap"] == pytest.approx(1.0)  # both orders hold the whole set
    assert report["ranker alone"]["mean |rank gap|"] > 0.0  # the trained ranker has an order of its own
    with torch.no_grad():
        model.rank_gate.zero_()  # the served order is then retrieval's own
    report = diagnose.alignment_report(model, valid_data, [1, n])
    assert report["served"]["mean |rank gap|"] == 0.0 and report["served"]["top-1 overlap"] == 1.0


def test_alignment_report_compares_checkpoints_side_by_side(trained, tmp_path):
    out, checkpoint = tmp_path / "alignment.md", trained["saved_model_file"]
    assert diagnose.main(["alignment", "--checkpoint", checkpoint, checkpoint, "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith(f"| {checkpoint} |")]
    assert len(rows) == 4  # per checkpoint: the ranker alone and the served order
    assert "| - |  | independent orders (chance) |" in out.read_text()
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["alignment", "--checkpoint", checkpoint, "--cutoffs", "1", "1000"])
    assert exit_info.value.code == 2


def test_candidate_report_draws_the_same_negatives_for_every_checkpoint(trained, tmp_path):
    out, checkpoint = tmp_path / "candidates.md", trained["saved_model_file"]
    assert (
        diagnose.main(["candidates", "--checkpoint", checkpoint, checkpoint, "--negatives", "5", "--out", str(out)])
        == 0
    )
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines() if line.startswith(f"| {checkpoint} |")]
    by_sampling: dict[str, list[list[float]]] = {}
    for _, model, sampling, *values in rows:
        assert model.strip() == "OneRanker"
        by_sampling.setdefault(sampling.strip(), []).append([float(value) for value in values])
    assert set(by_sampling) == {"uniform", "popularity"}
    for first, second in by_sampling.values():
        assert first == second  # one checkpoint twice: seeded draws, the same negatives, the same metrics
        hits = first[:5]  # HR@1, 3, 5, 10, 15: 6 candidates, so every target is within the top 10
        assert hits == sorted(hits) and hits[3] == hits[4] == 1.0
    assert by_sampling["uniform"] != by_sampling["popularity"]
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["candidates", "--checkpoint", checkpoint, "--negatives", "0"])
    assert exit_info.value.code == 2


def test_popularity_report_keeps_the_models_order_at_weight_zero(trained, tmp_path):
    _, model, _, _, _, test_data = load_data_and_model(trained["saved_model_file"])
    report = diagnose.popularity_report(model, test_data, weights=[0.0], top=100, k=10)
    sets = report.pop("sets")
    assert 0 < sets["holding the target"] <= sets["users"]
    # The top 100 reordered by the model's own scores is the model's ranking: RecBole's evaluator gave this NDCG@10
    assert report["model's scores"]["NDCG@10"] == pytest.approx(trained["test_result"]["ndcg@10"], abs=1e-4)
    assert report["score +0 x popularity"] == pytest.approx(report["model's scores"])  # standardising keeps order
    assert report["popularity alone"] != report["model's scores"]

    out = tmp_path / "popularity.md"
    argv = ["popularity", "--checkpoint", trained["saved_model_file"], "--top", "20", "--weights", "0.1"]
    assert diagnose.main([*argv, "--out", str(out)]) == 0
    assert "| score +0.1 x popularity |" in out.read_text()
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["popularity", "--checkpoint", trained["saved_model_file"], "--top", "5", "--k", "10"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main(["popularity", "--checkpoint", trained["saved_model_file"], "--top", "1000000"])
    assert exit_info.value.code == 2


def test_popularity_order_breaks_ties_by_the_models_order():
    popularity = torch.tensor([[1.0, 3.0, 1.0, 3.0 + 1e-7], [0.0, 0.0, 0.0, 0.0]])  # columns in the model's order
    order = diagnose._popularity_order(popularity)
    assert order.argsort(1, descending=True).tolist() == [[1, 3, 0, 2], [0, 1, 2, 3]]  # 3 == 3 + 1e-7 in float32
