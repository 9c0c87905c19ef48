"""The benchmark scripts on a tiny slice: rows written and resumed, reports rendered."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from recbole_oneranker.bench import common, quality, scale, speed, summary

REPO = Path(__file__).resolve().parents[1]

TINY_ROWS = {
    "common": {
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [1, 5, 10, 20],
        "valid_metric": "NDCG@10",
        "MAX_ITEM_LIST_LENGTH": 20,
        "show_progress": False,
        "state": "ERROR",
        "load_col": None,
        "cascade_fields": ["click", "conversion"],
        "value_field": "rating",
    },
    "rows": {
        "HSTU-tiny": {"model": "HSTU", "hidden_size": 16, "attention_dim": 8, "linear_hidden_dim": 8, "n_heads": 2},
    },
    "baseline": "HSTU-tiny",
}


def test_quality_rows_resume_and_report(tmp_path, tiny_data_path, run_device, capsys):
    bench_config = tmp_path / "tiny.yaml"
    bench_config.write_text(yaml.safe_dump(TINY_ROWS))
    argv = ["--dataset", "ml-tiny", "--bench-config", str(bench_config), "--seeds", "2", "--epochs", "1",
            "--data-path", str(tiny_data_path), "--results", str(tmp_path / "results")]  # fmt: skip
    assert quality.main(argv) == 0
    csv_file = tmp_path / "results" / "tiny.csv"  # named after the bench config
    rows = list(csv.DictReader(csv_file.open()))
    assert [row["seed"] for row in rows] == ["2020", "2021"]
    assert rows[0]["command"].startswith("run_recbole --model=HSTU --dataset=ml-tiny")
    report = (tmp_path / "results" / "tiny.md").read_text()
    assert "| HSTU-tiny | 2 |" in report and "whole-sequence training" in report
    assert "Δ NDCG@10 vs HSTU-tiny" in report and "| +0.0000 [+0.0000, +0.0000] |" in report  # itself, paired
    users = np.load(REPO / rows[0]["users_file"])  # each test user once, in the order of the saved ranks
    assert len(users) == len(np.load(REPO / rows[0]["ranks_file"])) == len(set(users.tolist()))

    assert quality.main(argv) == 0  # everything done: nothing is trained again
    assert len(list(csv.DictReader(csv_file.open()))) == 2
    assert quality.main([*argv, "--first-seed", "2022", "--seeds", "1"]) == 0  # one more seed, alone
    rows = list(csv.DictReader(csv_file.open()))
    assert [row["seed"] for row in rows] == ["2020", "2021", "2022"]
    report = (tmp_path / "results" / "tiny.md").read_text()
    assert {row["device"] for row in rows} == {run_device} and f"| {run_device} |" in report

    capsys.readouterr()
    assert quality.main([*argv, "--seeds", "1", "--rerun"]) == 0  # seed 2020 again, in its own row's place
    printed = capsys.readouterr().out  # a CPU run of the same row and seed gives the same ranks
    assert "; reproduced the row it replaced" in printed and "NOT reproduced" not in printed
    rows = list(csv.DictReader(csv_file.open()))
    assert [row["seed"] for row in rows] == ["2020", "2021", "2022"] and rows[0]["reproduced"] == "True"
    assert quality.main([*argv, "--paired", "HSTU-tiny", "HSTU-tiny"]) == 0  # trains nothing, reads the ranks
    printed = capsys.readouterr().out
    assert "(seeds [2020, 2021, 2022])" in printed and "+0.0000 [+0.0000, +0.0000]" in printed  # a row against itself
    assert len(list(csv.DictReader(csv_file.open()))) == 3
    assert quality.main([*argv, "--paired", "HSTU-tiny", "HSTU-tiny", "--paired-seeds", "2021"]) == 0
    assert "(seeds [2021])" in capsys.readouterr().out  # one seed's runs of each row, for rows run on others too
    assert quality.main([*argv, "--paired", "HSTU-tiny", "HSTU-tiny", "--paired-seeds", "2023"]) == 2
    assert "no finished run of seeds [2023]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # trains nothing: the seeds choose what --paired compares
        quality.main([*argv, "--paired-seeds", "2021"])
    assert "--paired-seeds selects the runs --paired compares" in capsys.readouterr().err
    assert quality.main([*argv, "--paired", "HSTU-tiny", "NoSuchRow"]) == 2


def test_quality_rejects_unknown_rows(tmp_path):
    assert quality.main(["--dataset", "ml-100k", "--models", "NoSuchRow", "--results", str(tmp_path)]) == 2


def test_speed_smoke(tmp_path):
    out = tmp_path / "speed.md"
    argv = ["--models", "HSTU", "--baseline", "HSTU", "--hidden-size", "16", "--max-len", "10", "--max-batches", "1",
            "--out", str(out)]  # fmt: skip
    assert speed.main(argv) == 0
    table = out.read_text()
    assert "| HSTU |" in table and "positions/s" in table and "| 1.00x |" in table  # GFLOPs vs itself

    assert speed.main([*argv, "--flops-only", "--flop-batches", "1"]) == 0
    table = out.read_text()
    assert "training GFLOPs / epoch" in table and "epoch (s)" not in table
    assert "operators / full-sort batch" in table


def test_scale_smoke(tmp_path):
    out = tmp_path / "scale.md"
    argv = ["--curves", "HSTU", "HSTU-full", "--items", "200", "400", "--lengths", "10", "--base-items", "200",
            "--base-length", "10", "--users", "8", "--batches", "1", "--hidden-size", "16",
            "--out", str(out)]  # fmt: skip
    assert scale.main(argv) == 0
    report = out.read_text()
    assert "| curve | head | 200 | 400 | time exponent | memory exponent |" in report
    assert "| HSTU | sampled softmax |" in report and "| HSTU-full | full softmax |" in report
    assert "- HSTU-full / HSTU, time per batch: 200 items: " in report
    history_table = report.split("## History length")[1]
    assert "| 10 | time exponent |" in history_table and "| – | – |" in history_table  # one point: no slope
    assert "## Dropped points\n\nNone." in report


def test_scale_growth_exponent_is_the_log_log_slope():
    assert abs(scale.growth_exponent([10, 100, 1000], [3, 300, 30000]) - 2.0) < 1e-9
    assert scale.growth_exponent([10], [3]) is None


def test_scale_names_why_a_point_was_dropped():
    assert scale.drop_reason("over the 300 s limit") == "over the 300 s limit"
    failure = (
        "exit status 1\n...\nRuntimeError: [enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
    )
    assert scale.drop_reason(failure) == "out of memory (over the address-space limit)"


def test_the_flop_counter_counts_the_cpus_fused_attention():
    query = torch.randn(2, 1, 5, 8)  # [B, H, N, dh]
    with speed.flop_counter() as flops:  # no dropout, a boolean mask: the CPU's fused kernel
        F.scaled_dot_product_attention(query, query, query, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril())
    assert flops.get_total_flops() == 2 * (2 * 2 * 5 * 5 * 8)  # q k^T and weights v, 2 FLOPs per multiply-add


def test_sid_models_read_the_committed_semantic_ids_unless_told_otherwise():
    committed = Path("results/sids/ml-100k/ml-100k.sid")  # in the test's own folder
    committed.parent.mkdir(parents=True)
    committed.touch()
    args = speed.parse_args([])
    assert speed.equal_size_settings("GPR", args)["sid_file"] == str(committed)
    assert speed.equal_size_settings("OneRec", args)["sid_file"] == str(committed)
    assert "sid_file" not in speed.equal_size_settings("HSTU", args)
    assert speed.equal_size_settings("GPR", speed.parse_args(["--set", "sid_file=x.sid"]))["sid_file"] == "x.sid"


def test_speed_smoke_of_the_sid_models_and_their_beams(tmp_path, tiny_data_path, tiny_sid_file):
    out = tmp_path / "speed.md"
    argv = ["--dataset", "ml-tiny", "--data-path", str(tiny_data_path), "--models", "GPR", "OneRec",
            "--baseline", "GPR", "--hidden-size", "16", "--max-len", "10", "--max-batches", "1",
            "--flop-batches", "1", "--eval-batch", "8", "--beam", "4", "--out", str(out),
            "--set", f"sid_file={tiny_sid_file}", "load_col=None"]  # fmt: skip
    assert speed.main(argv) == 0
    report = out.read_text()
    assert f"Semantic IDs: GPR, OneRec read `{tiny_sid_file}`." in report
    assert "## Beam search: top 4 per batch of 8 test users" in report
    for row in ("| GPR | generate |", "| OneRec | generate |", "| OneRec | generate_sessions, KV cache |",
                "| OneRec | generate_sessions, no cache |"):  # fmt: skip
        assert row in report and row not in report.split("##")[0]
    assert "latency median / p90 (ms)" in report


def _ml100k_variants(model_name: str, settings: dict, split: int):
    """``(batch, build)``: the first batch of an ml-100k split (``split`` 0: training, 2: test), one for every
    variant since costs depend on its lengths, and ``build(**overrides)``: the model with ``settings`` + overrides."""
    from recbole.data import data_preparation

    from recbole_oneranker.config import Config
    from recbole_oneranker.data import create_dataset
    from recbole_oneranker.registry import get_model

    config = Config(model_name, "ml-100k", config_dict=settings)
    splits = data_preparation(config, create_dataset(config))
    batch = next(iter(splits[split]))

    def build(**overrides):
        config = Config(model_name, "ml-100k", config_dict={**settings, **overrides})
        return get_model(model_name)(config, splits[split]._dataset)

    return batch, build


def test_length_buckets_multiply_the_operators_of_ranking():
    # Each bucket runs the whole stack again: on a GPU, where small batches pay per kernel launch, that is the cost.
    settings = {"hidden_size": 16, "attention_dim": 16, "linear_hidden_dim": 16, "MAX_ITEM_LIST_LENGTH": 10,
                "eval_batch_size": 64, "state": "ERROR"}  # fmt: skip
    batch, build = _ml100k_variants("HSTU", settings, split=2)
    models = {size: build(length_bucket_size=size) for size in (0, 16)}
    operators = {
        size: speed.inference_cost(model, model.full_sort_predict, batch[0])[1] for size, model in models.items()
    }
    assert 0 < operators[0] and 3 * operators[0] < operators[16]  # 4 buckets of 16: about 4x the stack's operators


def test_training_flops_grow_with_the_decoders():
    settings = {"hidden_size": 16, "attention_dim": 16, "linear_hidden_dim": 16, "MAX_ITEM_LIST_LENGTH": 10,
                "n_fake_items": 4, "state": "ERROR"}  # fmt: skip
    batch, build = _ml100k_variants("OneRanker", settings, split=0)
    flops = {step2: speed.training_cost(build(use_step2=step2), [batch], "cpu")[0] for step2 in (False, True)}
    assert 0 < flops[False] < flops[True]


def test_row_commands_survive_the_shell():
    import shlex

    settings = {"metrics": ["Hit", "NDCG"], "topk": [1, 5], "valid_metric": "NDCG@10", "note": 'say "hi" $HOME'}
    words = shlex.split(common.run_command("HSTU", "ml-100k", settings))
    assert words == ["run_recbole", "--model=HSTU", "--dataset=ml-100k", "--metrics=['Hit', 'NDCG']",
                     "--topk=[1, 5]", "--valid_metric=NDCG@10", '--note=say "hi" $HOME']  # fmt: skip


def test_protocol_renders_the_line_results_tables_have_always_shown():
    from recbole_oneranker.evaluator.protocol import Protocol

    note = "the 1-5 rating, a proxy (no price)"
    protocol = Protocol(split={"RS": [0.8, 0.1, 0.1]}, ranking="full", n_items=1683, candidate_negatives=29,
                        whole_sequence=True, value_field="rating", value_note=note)  # fmt: skip
    assert protocol.render() == (
        "random split ([0.8, 0.1, 0.1]), full ranking over all 1,682 items, seen items kept (RecBole default), "
        "candidate set: target + 29 uniform negatives, whole-sequence training, "
        "value = rating: the 1-5 rating, a proxy (no price)"
    )
    assert Protocol(**json.loads(json.dumps(protocol.fields()))) == protocol  # what a results row stores
    sampled = Protocol(split={"LS": "valid_and_test"}, ranking="pop99", n_items=10, mask_seen_items=True)
    assert sampled.render() == "leave-one-out (valid_and_test), target + 99 popularity-sampled negatives"


def _protocol_row(label: str, **fields) -> dict:
    shared = {"split": {"LS": "valid_and_test"}, "ranking": "full", "n_items": 10, "value_field": "v",
              "value_note": "a, b"}  # fmt: skip
    return {"label": label, "protocol_fields": json.dumps({**shared, **fields})}


def test_report_states_the_shared_protocol_once_and_what_rows_add_to_it():
    shared = "leave-one-out (valid_and_test), full ranking over all 9 items, seen items kept (RecBole default)"
    value = "value = v: a, b"
    rows = [_protocol_row("SASRec")] + [_protocol_row(label, whole_sequence=True) for label in ("A", "B", "A")]
    assert quality.protocol_line(rows) == (
        f"Protocol: {shared}, {value}. Rows differ in: none of that (SASRec); whole-sequence training (A, B)."
    )
    assert quality.protocol_line(rows[1:]) == f"Protocol: {shared}, whole-sequence training, {value}."


def test_result_tables_sharing_a_file_keep_each_others_rows(tmp_path):
    path = tmp_path / "shared.csv"
    first, second = (
        common.ResultTable(path),
        common.ResultTable(path),
    )  # two benchmark processes, both started on an empty file
    first.append({"key": "a", "test_ndcg@10": 0.1})
    second.append({"key": "b", "test_ndcg@10": 0.2, "test_gmv@10": 0.3})  # a new column, too
    rows = list(csv.DictReader(path.open()))
    assert [row["key"] for row in rows] == ["a", "b"]
    assert rows[0]["test_gmv@10"] == "" and rows[1]["test_gmv@10"] == "0.3"
    assert second.has("a")  # the second process now knows the first one's row


def test_a_changed_package_default_makes_rows_stale(tmp_path, monkeypatch):
    from recbole_oneranker import config

    settings = {"MAX_ITEM_LIST_LENGTH": 50, "seed": 2020}
    before = common.row_key("HSTU", "HSTU", "ml-100k", settings)
    assert common.row_key("HSTU", "HSTU", "ml-100k", {**settings, "seed": 2021}) != before  # seeds differ
    assert common.config_hash("HSTU", "HSTU", "ml-100k", {**settings, "seed": 2021}) in before  # configs do not

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    defaults = yaml.safe_load((config.properties_dir() / "model" / "HSTU.yaml").read_text())
    (model_dir / "HSTU.yaml").write_text(yaml.safe_dump({**defaults, "dropout_prob": 0.5}))
    (tmp_path / "overall.yaml").write_text((config.properties_dir() / "overall.yaml").read_text())
    monkeypatch.setattr(config, "properties_dir", lambda: tmp_path)
    assert common.row_key("HSTU", "HSTU", "ml-100k", settings) != before


def test_rows_record_the_code_version_and_results_do_not_make_it_dirty(monkeypatch, tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    for path in ("bench/quality.py", "results/ml-100k.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("first\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(common, "REPO", tmp_path)
    commit = common.code_version()
    assert len(commit) == 12 and not commit.endswith("-dirty")

    (tmp_path / "results" / "ml-100k.md").write_text("a row more\n")  # a benchmark writing its table
    assert common.code_version() == commit
    (tmp_path / "bench" / "quality.py").write_text("changed\n")
    assert common.code_version() == f"{commit}-dirty"

    monkeypatch.setenv("RECBOLE_ONERANKER_COMMIT", "e7ba9c89b5fb")  # a copy of the tree, outside git
    assert common.code_version() == "e7ba9c89b5fb"
    monkeypatch.setenv("RECBOLE_ONERANKER_COMMIT", "641d4d43de9870a1197a7190ef2b28c99ad13a9d")  # `git rev-parse HEAD`
    assert common.code_version() == "641d4d43de98"


def test_a_default_a_row_overrides_does_not_make_it_stale(monkeypatch):
    settings = {"dropout_prob": 0.3, "seed": 2020}
    before = common.row_key("HSTU", "HSTU", "ml-100k", settings)
    defaults = common.package_defaults("HSTU", "ml-100k")
    monkeypatch.setattr(common, "package_defaults", lambda model, dataset: {**defaults, "dropout_prob": 0.5})
    assert common.row_key("HSTU", "HSTU", "ml-100k", settings) == before


def test_a_default_that_cannot_change_results_does_not_make_rows_stale(monkeypatch):
    settings = {"seed": 2020}
    defaults = common.package_defaults("HSTU", "ml-100k")
    before = common.row_key("HSTU", "HSTU", "ml-100k", settings)
    for neutral in common.RESULT_NEUTRAL_KEYS:  # e.g. resume_training: how a run is kept, not what it computes
        flipped = {**defaults, neutral: not defaults.get(neutral)}
        monkeypatch.setattr(common, "package_defaults", lambda model, dataset, d=flipped: d)
        assert common.row_key("HSTU", "HSTU", "ml-100k", settings) == before


def test_a_key_added_with_the_old_behaviour_keeps_rows_until_its_value_changes(monkeypatch):
    settings = {"seed": 2020}
    defaults = common.package_defaults("OneRanker", "ml-100k")
    before = common.row_key("OneRanker", "OneRanker", "ml-100k", settings)  # made before the key existed
    monkeypatch.setitem(common.UNCHANGED_BEHAVIOUR, "new_switch", False)
    monkeypatch.setattr(common, "package_defaults", lambda model, dataset: {**defaults, "new_switch": False})
    assert common.row_key("OneRanker", "OneRanker", "ml-100k", settings) == before
    assert common.row_key("OneRanker", "OneRanker", "ml-100k", {**settings, "new_switch": True}) != before
    monkeypatch.setattr(common, "package_defaults", lambda model, dataset: {**defaults, "new_switch": True})
    assert common.row_key("OneRanker", "OneRanker", "ml-100k", settings) != before  # a later default that differs


@pytest.mark.parametrize("method, stale", [("hepo", True), ("dpo", False), ("ecpo", False)])
def test_an_alignment_methods_own_key_makes_only_its_rows_stale(method, stale):
    from recbole_oneranker.config import read_yaml_layer, stage_layer

    row = {**read_yaml_layer(stage_layer()), "stage": "align", "align_method": method, "seed": 2020}
    changed = {**row, "hepo_critic_warmup": row["hepo_critic_warmup"] + 1}
    assert (
        common.row_key("GPR +X", "GPR", "ml-100k", changed) != common.row_key("GPR +X", "GPR", "ml-100k", row)
    ) is stale


def test_paired_difference_matches_users_across_orders():
    # Two seeds of row A (users in different orders) and row B, which tested user 4 that A did not.
    a = common.per_user_mean(
        [np.array([1, 2, 3]), np.array([3, 1, 2])], [np.array([0.2, 0.4, 0.0]), np.array([1.0, 0.0, 0.4])]
    )
    b = (np.array([4, 3, 2, 1]), np.array([9.0, 0.5, 0.1, 0.1]))
    np.testing.assert_allclose(a[1], [0.1, 0.4, 0.5])  # users 1, 2, 3
    np.testing.assert_allclose(common.paired_difference(a, b), [0.0, 0.3, 0.0])


def test_reported_ml100k_rows_carry_the_command_of_their_settings():
    # A row re-keyed after a default changed must also name the setting it ran with, or its command reruns another
    # model (checked on the committed ml-100k tables, whose data needs no conversion).
    for bench_config in (
        None,
        REPO / "bench/configs/ml-100k-ablation.yaml",
        REPO / "bench/configs/ml-100k-design.yaml",
    ):
        config = quality.load_bench_config("ml-100k", bench_config)
        table = REPO / "results" / f"{bench_config.stem if bench_config else 'ml-100k'}.csv"
        for row in csv.DictReader(table.open(newline="")):
            if row["label"] not in config["rows"]:
                continue
            model, settings = quality.row_settings(config, row["label"], {"seed": int(row["seed"])})
            if common.config_hash(row["label"], model, "ml-100k", settings) == row["config_hash"]:  # a reported row
                assert row["command"] == common.run_command(model, "ml-100k", settings), (table.name, row["label"])


def test_summary_picks_each_models_best_row_on_validation(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    bench = {"rows": {"A": {"model": "HSTU", "n_layers": 1}, "B": {"model": "HSTU", "n_layers": 2},
                      "C": {"model": "HSTU", "n_layers": 3}, "S": {"model": "SASRec"}}}  # fmt: skip
    (configs / "ml-100k.yaml").write_text(yaml.safe_dump(bench))
    monkeypatch.setattr(summary, "CONFIG_DIR", configs)
    hashes = common.config_hashes(bench, "ml-100k", {})
    fields = json.dumps({"split": {"LS": "valid_and_test"}, "ranking": "full", "n_items": 1683})
    table = common.ResultTable(tmp_path / "ml-100k.csv")
    runs = [("A", 1, 0.05, 0.04), ("A", 2, 0.07, 0.06), ("B", 1, 0.055, 0.09), ("S", 1, 0.03, 0.02)]
    runs += [("B", 2, 0.9, 0.9, "made before a default changed"), ("C", 1, 0.08, 0.07)]
    for label, seed, valid, test, *stale in runs:
        table.append({"key": f"{label}{seed}", "config_hash": "stale" if stale else hashes[label], "label": label,
                      "model": bench["rows"][label]["model"], "seed": seed, "protocol_fields": fields,
                      "command": f"run_recbole {label} --seed={seed}", "valid_ndcg@10": valid, "test_ndcg@10": test,
                      "test_hit@10": test})  # fmt: skip
    text = summary.write_summary(tmp_path).read_text()
    assert "## ml-100k\n\nProtocol: leave-one-out (valid_and_test), full ranking over all 1,682 items" in text
    # A's mean validation (0.06) beats B's (0.055): A is HSTU's best, whatever B scored on test; C's one seed
    # validated higher (0.08), but A has more seeds
    assert (
        "| HSTU | A | 2 | 0.0600 | 0.0500 | 0.0500 | - | [ml-100k.md](ml-100k.md) | `run_recbole A --seed=1` |" in text
    )
    assert "| SASRec | S | 1 | 0.0300 |" in text and "| HSTU | B |" not in text and "| HSTU | C |" not in text


def test_a_rerun_records_what_it_replaced_and_whether_it_reproduced_it_metric_for_metric():
    before = {"test_ndcg@10": "0.0623", "valid_ndcg@10": "0.0777", "candidate_hit@1": "0.316", "best_epoch": "28",
              "commit": "abc", "test_gmv@10": ""}  # fmt: skip
    row = {"test_ndcg@10": 0.06231, "valid_ndcg@10": 0.0777, "candidate_hit@1": 0.316, "best_epoch": 28}
    assert quality.mark_rerun(row, before).startswith("reproduced the row it replaced")  # as RecBole rounds them
    assert row["reproduced"] and row["replaced_commit"] == "abc" and row["replaced_test_ndcg@10"] == "0.0623"
    changes = ({"valid_ndcg@10": 0.0778}, {"candidate_hit@1": 0.3161}, {"best_epoch": 33}, {"test_ndcg@10": 0.0625})
    for change in changes:  # one metric moved, or the best epoch
        row = {"test_ndcg@10": 0.0623, "valid_ndcg@10": 0.0777, "candidate_hit@1": 0.316, "best_epoch": 28, **change}
        verdict = quality.mark_rerun(row, before)
        assert verdict.startswith("NOT reproduced") and "(commit abc, test ndcg@10 0.0623)" in verdict, change
        assert row["reproduced"] is False


def test_a_row_keeps_per_user_values_and_candidate_ranks_that_average_to_its_metrics(tmp_path, tiny_data_path, capsys):
    bench = {**TINY_ROWS, "common": {**TINY_ROWS["common"], "metrics": ["Hit", "NDCG", "GMV"], "topk": [10],
                                     "candidate_negatives": 9}}  # fmt: skip
    bench_config = tmp_path / "tiny.yaml"
    bench_config.write_text(yaml.safe_dump(bench))
    argv = ["--dataset", "ml-tiny", "--bench-config", str(bench_config), "--seeds", "1", "--epochs", "1",
            "--data-path", str(tiny_data_path), "--results", str(tmp_path / "results")]  # fmt: skip
    assert quality.main(argv) == 0
    [row] = list(csv.DictReader((tmp_path / "results" / "tiny.csv").open()))
    assert row["per_user_file"].endswith(".per-user.npz")
    users, gmv_shares = quality.per_user_gmv([row])
    assert gmv_shares.mean() == pytest.approx(float(row["test_gmv@10"]), abs=1e-4)  # the metric, user by user
    candidate_users, hits = quality.per_user_candidate_hit([row])
    assert hits.mean() == pytest.approx(float(row["candidate_hit@1"]), abs=1e-4)
    assert sorted(candidate_users.tolist()) == sorted(users.tolist())  # the same test users, each once
    capsys.readouterr()
    assert quality.main([*argv, "--paired", "HSTU-tiny", "HSTU-tiny"]) == 0  # a row against itself, user by user
    printed = capsys.readouterr().out
    for measure in ("test NDCG@10", "candidate-set HR@1", "GMV@10"):
        assert f"  {measure} +0.0000 [+0.0000, +0.0000]" in printed


def test_the_study_compares_rows_in_the_table_1_shape_against_the_baseline(tmp_path, monkeypatch, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    rows = {"GPR": {"model": "GPR"}, "OneRanker": {"model": "OneRanker"}, "Idle": {"model": "HSTU"},
            "Old": {"model": "HSTU"}}  # fmt: skip
    (configs / "ml-100k.yaml").write_text(yaml.safe_dump({"rows": rows}))
    monkeypatch.setattr(common, "CONFIG_DIR", configs)
    hashes = common.config_hashes({"rows": rows}, "ml-100k", {})
    table = common.ResultTable(tmp_path / "ml-100k.csv")
    users = tmp_path / "users.npy"
    np.save(users, np.array([1, 2]))
    # label, seed, candidate HR@1, full-ranking ranks, candidate ranks (None: a row from before they were kept)
    runs = [("GPR", 1, 0.20, [1, 20], [1, 5]), ("GPR", 2, 0.30, [2, 20], [2, 1]),
            ("OneRanker", 1, 0.30, [1, 1], [1, 1]), ("Old", 1, 0.30, [1, 1], None)]  # fmt: skip
    for label, seed, hr1, ranks, candidate_ranks in runs:
        ranks_file = tmp_path / f"{label}{seed}.npy"
        np.save(ranks_file, np.array(ranks))
        per_user_file = ""
        if candidate_ranks is not None:
            per_user_file = tmp_path / f"{label}{seed}.per-user.npz"
            # the candidate users in another order than the full ranking's: pairing goes by user id
            np.savez(per_user_file, values=np.array([1.0, 3.0]), candidate_users=np.array([2, 1]),
                     candidate_ranks=np.array(candidate_ranks[::-1]))  # fmt: skip
        table.append({"key": f"{label}{seed}", "config_hash": hashes[label], "label": label, "model": label,
                      "seed": seed, "command": "run_recbole --candidate_negatives=29", "candidate_hit@1": hr1,
                      "test_ndcg@10": 0.1, "ranks_file": str(ranks_file), "users_file": str(users),
                      "per_user_file": str(per_user_file)})  # fmt: skip
    from recbole_oneranker.bench import study

    assert study.main(["--dataset", "ml-100k", "--results", str(tmp_path), "--rows", "OneRanker", "Idle", "Old"]) == 0
    text = capsys.readouterr().out
    assert "target and 29 sampled negatives" in text and "| Idle |" not in text  # no finished seed: left out
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    gpr, oneranker, old = lines["| GPR"], lines["| OneRanker"], lines["| Old"]
    assert "| 2 | 0.2500 ± 0.6353 |" in gpr and "| +0.0% |" in gpr  # 0.25 ± t(1) * 0.0707 / sqrt(2)
    # +20% relative HR@1; per user, candidate HR@1 1 against 1/2 (GPR's seeds rank user 1 first, then user 2)
    assert "| 1 | 0.3000 |" in oneranker and "| +20.0% | +0.5000 [+0.5000, +0.5000] |" in oneranker
    # GMV@10 shares: values 1 and 3 of total 4 over 2 users -> 0.5 and 1.5 on a hit; GPR misses user 2 (rank 20)
    assert "| +0.7500 [+0.0000, +1.5000] |" in oneranker
    # NDCG@10 per user: 1 against (1 + 1/log2(3)) / 2 (ranks 1 and 2) and against 0 (rank 20)
    assert "| +0.5923 [" in oneranker
    assert "| +20.0% | - | - | - | 0.1000 | +0.5923 [" in old  # no per-user file: no paired HR@1 or GMV
    assert study.main(["--dataset", "ml-100k", "--results", str(tmp_path), "--baseline", "Idle"]) == 2


def test_every_committed_row_label_still_has_current_rows():
    # A key added to a model's defaults enters every row's identity unless it keeps the old behaviour
    # (common.UNCHANGED_BEHAVIOUR): forgetting that would silently turn every committed row stale.
    for table_file in sorted((common.REPO / "results").glob("*.csv")):
        config_file = common.CONFIG_DIR / f"{table_file.stem}.yaml"
        if not config_file.is_file():
            continue
        bench_config, _, _, current = common.configured_rows(common.REPO / "results", table_file.stem, config_file)
        with table_file.open() as rows:
            labels = {row["label"] for row in csv.DictReader(rows)} & set(bench_config["rows"])
        assert labels == {row["label"] for row in current}, table_file.name
