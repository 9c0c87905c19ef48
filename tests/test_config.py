"""Config: plugin layers, key checks, no sys.argv leaks, dataset checks, today's-stack fixes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from recbole_oneranker import compat
from recbole_oneranker.config import Config, known_keys
from recbole_oneranker.errors import ConfigError, UnknownModelError
from recbole_oneranker.registry import get_model


def test_builtin_ce_model_runs_without_explicit_negatives():
    # RecBole's own Config raises here: SASRec's CE loss conflicts with overall.yaml's uniform negatives.
    config = Config("SASRec", "ml-100k")
    assert config["train_neg_sample_args"]["distribution"] == "none"


def test_explicit_negatives_are_kept_for_bpr():
    config = Config("SASRec", "ml-100k", config_dict={"loss_type": "BPR"})
    assert config["train_neg_sample_args"]["distribution"] == "uniform"


def test_layers_priority_dataset_config_then_user():
    config = Config("SASRec", "ml-100k")
    assert config["normalize_all"] is False  # dataset_configs/ml-100k.yaml over RecBole's dataset yaml
    assert config["cascade_fields"] == ["watched", "liked", "loved"]
    assert config["mask_seen_items"] is False  # properties/overall.yaml
    overridden = Config("SASRec", "ml-100k", config_dict={"value_field": None}, cmd_args=["--mask_seen_items=True"])
    assert overridden["value_field"] is None and overridden["mask_seen_items"] is True


def test_argument_strings_become_literals_and_nothing_else():
    # RecBole eval()s these strings among its own locals: 'value' became the previous key's value, 'key' the key
    args = ["--epochs=3", "--learning_rate=1e-3", "--topk=[5, 10]", "--value_field=value", "--TIME_FIELD=key",
            "--show_progress=false", "--eval_args={'order': 'TO'}", "--user_inter_num_interval=[5,inf)"]  # fmt: skip
    config = Config("SASRec", "ml-100k", cmd_args=args)
    assert (config["epochs"], config["learning_rate"], config["topk"]) == (3, 1e-3, [5, 10])
    assert (config["value_field"], config["TIME_FIELD"], config["show_progress"]) == ("value", "key", False)
    assert config["eval_args"]["order"] == "TO" and config["user_inter_num_interval"] == "[5,inf)"
    same = Config("SASRec", "ml-100k", config_dict={"value_field": "value", "epochs": "3", "seed": "__import__('os')"})
    assert (same["value_field"], same["epochs"], same["seed"]) == ("value", 3, "__import__('os')")


def test_embedded_dataset_is_the_default():
    config = Config("SASRec")
    assert config["dataset"] == "ml-100k" and config["data_path"].endswith("dataset_example/ml-100k")


def test_sys_argv_is_not_read(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--epochs=7", "-q"])
    assert Config("SASRec")["epochs"] != 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cmd_args": ["--lerning_rate=0.1"]}, "'lerning_rate' in the command line; did you mean 'learning_rate'"),
        ({"config_dict": {"n_fake": 3}}, "unknown config key 'n_fake' in config_dict"),
        ({"cmd_args": ["epochs=3"]}, "write overrides as --key=value"),
        ({"dataset": "no-such-data"}, "dataset 'no-such-data' not found"),
        ({"config_dict": {"valid_metric": "MRR@20"}}, "valid_metric 'MRR@20' is not computed"),
        ({"config_dict": {"metrics": ["NoMetric"]}}, "There is no metric named 'NoMetric'"),
        ({"cmd_args": ["--show_progress=maybe"]}, "'show_progress' must be True or False, got 'maybe'"),
        ({"cmd_args": ["--whole_sequence=1"]}, "'whole_sequence' must be True or False, got 1"),
    ],
)  # fmt: skip
def test_bad_configuration_is_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Config("SASRec", **kwargs)


def test_config_file_keys_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="'learning_rat' in the config files"):
        Config("SASRec", config_file_list=[str(bad)])


def test_model_lookup():
    assert get_model("SASRec").__name__ == "SASRec"
    with pytest.raises(UnknownModelError, match="did you mean 'SASRec'"):
        get_model("sasrec")
    with pytest.raises(UnknownModelError, match="valid models: .*BERT4Rec"):
        get_model("NoSuchModel")


def test_every_plugin_default_is_a_known_key():
    assert {"mask_seen_items", "whole_sequence", "cascade_fields", "value_field", "run_id"} <= known_keys()


def test_numpy_aliases_restored():
    compat.restore_numpy_aliases()
    assert np.float_ is np.float64 and np.unicode_ is np.str_ and np.bool8 is np.bool_


def test_pandas_3_is_refused(monkeypatch):
    import pandas

    monkeypatch.setattr(pandas, "__version__", "3.0.1")
    with pytest.raises(compat.IncompatibleEnvironmentError, match="pandas 3.0.1 is not supported"):
        compat.check_pandas()


def test_run_path_does_not_import_ray():
    import subprocess

    code = "import sys, recbole_oneranker.quick_start, recbole_oneranker.cli; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_recbole_future_warnings_hidden_ours_kept():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.silence_recbole_future_warnings()
        warnings.warn_explicit("chained fillna", FutureWarning, "dataset.py", 1, module="recbole.data.dataset.dataset")
        warnings.warn_explicit("ours", FutureWarning, "config.py", 1, module="recbole_oneranker.config")
    assert [str(w.message) for w in caught] == ["ours"]


@pytest.mark.parametrize("use_gpu", [True, False])
def test_use_gpu_false_keeps_the_run_on_the_cpu(monkeypatch, use_gpu):
    # RecBole 1.2.1 chose the GPU whenever torch saw one, whatever use_gpu said (compat fix 10).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine; no GPU is touched
    config = Config("SASRec", config_dict={"use_gpu": use_gpu})
    assert config["device"] == torch.device("cuda" if use_gpu else "cpu")
