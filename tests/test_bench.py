"""The benchmark scripts on a tiny slice: rows written and resumed, reports rendered."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import quality  # noqa: E402
import speed  # noqa: E402

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


def test_quality_rows_resume_and_report(tmp_path, tiny_data_path):
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


def test_training_flops_grow_with_the_decoders():
    from recbole.data import data_preparation

    from recbole_oneranker.config import Config
    from recbole_oneranker.data import create_dataset
    from recbole_oneranker.utils import get_model

    settings = {"hidden_size": 16, "attention_dim": 16, "linear_hidden_dim": 16, "MAX_ITEM_LIST_LENGTH": 10,
                "n_fake_items": 4, "state": "ERROR"}  # fmt: skip
    config = Config("OneRanker", "ml-100k", config_dict=settings)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    batch = next(iter(train_data))  # one batch for both models: FLOPs depend on its lengths
    flops = {}
    for use_step2 in (False, True):
        model_config = Config("OneRanker", "ml-100k", config_dict={**settings, "use_step2": use_step2})
        model = get_model("OneRanker")(model_config, train_data._dataset)
        flops[use_step2] = speed.training_flops(model, [batch], "cpu")
    assert 0 < flops[False] < flops[True]
