"""The config rule table: values that cannot mean anything stop the run in one line before training starts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from recbole_oneranker import config_rules
from recbole_oneranker.cli import main
from recbole_oneranker.config import Config, properties_dir, read_yaml_layer
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.evaluator.protocol import Protocol
from recbole_oneranker.quick_start import run


@pytest.mark.parametrize(
    "model, override, message",
    [
        ("HSTU", "--num_negatives=0", "'num_negatives' must be an int >= 1, got 0 (0 negatives give a loss of 0"),
        ("SASRec", "--epochs=0", "'epochs' must be an int >= 1, got 0"),
        ("SASRec", "--epochs=-1", "'epochs' must be an int >= 1, got -1"),
        ("SASRec", "--train_batch_size=-1", "'train_batch_size' must be an int >= 1, got -1"),
        ("SASRec", "--train_batch_size=0", "'train_batch_size' must be an int >= 1, got 0"),
        ("SASRec", "--train_batch_size=1.5", "'train_batch_size' must be an int >= 1, got 1.5"),
        ("SASRec", "--eval_batch_size=0", "'eval_batch_size' must be an int >= 1, got 0"),
        ("SASRec", "--learning_rate=-1", "'learning_rate' must be a number > 0, got -1"),
        ("SASRec", "--learning_rate=nan", "'learning_rate' must be a number > 0, got 'nan'"),
        ("HSTU", "--hidden_size=0", "'hidden_size' must be an int >= 1, got 0"),
        ("SASRec", "--MAX_ITEM_LIST_LENGTH=0", "'MAX_ITEM_LIST_LENGTH' must be an int >= 1, got 0"),
        ("OneRanker", "--gamma=-1", "'gamma' must be a number >= 0, got -1"),
        ("OneRanker", "--dropout_prob=1.0", "'dropout_prob' must be a number in [0, 1), got 1.0"),
        ("SASRec", "--candidate_negatives=-3", "'candidate_negatives' must be an int in [0, n_items - 1] or ~ (off)"),
        ("SASRec", "--candidate_sampling=popular", "'candidate_sampling' must be one of uniform, popularity"),
        ("SASRec", "--learner=adamm", "got 'adamm' (RecBole silently trains with adam on any other name)"),
        ("SASRec", "--use_gpu=maybe", "'use_gpu' must be True or False, got 'maybe'"),
        ("SASRec", "--n_heads=3", "hidden_size must be a multiple of n_heads, got hidden_size=64, n_heads=3"),
        ("OneRanker", "--decoder_heads=3", "hidden_size must be a multiple of decoder_heads, got hidden_size=50"),
        ("SASRec", "--run_id=../elsewhere", "'run_id' must be a file name (no folder separator, no NUL byte"),
        ("SASRec", "--candidate_sampling=Uniform", "'candidate_sampling' must be one of uniform, popularity"),
        ("SASRec", "--loss_type=2", "'loss_type' must be one of CE, BPR, BCE, MSE, got 2"),
        ("HSTU", "--loss_type=CE", "'loss_type' must be one of sampled_softmax, full_softmax, got 'CE'"),
        ("SASRec", "--n_layers=0", "'n_layers' must be an int >= 1, got 0"),
        ("SASRec", "--adam_betas=[0.9, 1]", "'adam_betas' must be a list of 2 items, each a number in [0, 1)"),
        ("SASRec", "--epochs=" + "x" * 10_000, "xxx... (10,002 characters)"),  # repr's quotes count
    ],
)  # fmt: skip
def test_value_outside_its_rule_is_one_line(model, override, message):
    with pytest.raises(ConfigError) as raised:
        Config(model, cmd_args=[override])
    text = str(raised.value)
    assert message in text and "\n" not in text and len(text) < 400


def test_rules_of_a_model_do_not_apply_to_another_models_key():
    """gamma is OneRanker's DC-loss weight here, but means other things in RecBole's models: not checked for them."""
    assert [rule.scope for rule in config_rules.RULES if rule.key == "gamma"] == [config_rules.OWN]
    Config("SASRec", config_dict={"hidden_size": 8})  # no gamma rule for SASRec (RecBole defines no gamma for it)


def test_no_fake_items_is_a_valid_value():
    assert Config("OneRanker", cmd_args=["--n_fake_items=0"])["n_fake_items"] == 0


def test_every_key_of_properties_is_ruled_a_flag_or_free():
    uncovered = []
    for path in properties_dir().rglob("*.yaml"):
        for key, default in read_yaml_layer(path).items():
            if key not in config_rules.RULED_KEYS | set(config_rules.FREE_KEYS) and not isinstance(default, bool):
                uncovered.append(f"{path.name}: {key}")
    assert not uncovered


@pytest.mark.parametrize(
    "model, override, message",
    [
        ("SASRec", "--candidate_negatives=100000", "'candidate_negatives' must be an int in [0, n_items - 1 = "),
        ("OneRanker", "--n_fake_items=100000", "'n_fake_items' must be an int in [0, n_items - 1 = "),
        ("OneRanker", "--num_candidates=100000", "'num_candidates' must be an int in [2, n_items - 1 = "),
        ("SASRec", "--topk=[10, 100000]", "'topk' must be a list of items, each an int in [1, n_items = "),
    ],
)
def test_dataset_bounded_rules_stop_the_run_before_training(tiny_config, tmp_path, model, override, message):
    config = {**tiny_config, "checkpoint_dir": str(tmp_path / "saved")}
    with pytest.raises(ConfigError, match=r"the dataset has \d+ items") as raised:
        run(model, "ml-tiny", config_dict=config, cmd_args=[override])
    assert message in str(raised.value)
    assert not list((tmp_path / "saved").iterdir())  # nothing trained, no checkpoint


def test_a_failure_after_training_prints_and_logs_the_results(tiny_config, monkeypatch, capsys):
    def failing_protocol(config, dataset):
        raise RuntimeError("late failure")

    monkeypatch.setattr(Protocol, "of", staticmethod(failing_protocol))
    with pytest.raises(RuntimeError, match="late failure"):
        tiny = ["--epochs=1", "--hidden_size=8", "--n_layers=1", "--n_heads=1", "--state=ERROR", "--load_col=None"]
        main(["--model=SASRec", "--dataset=ml-tiny", f"--data_path={tiny_config['data_path']}", "--run_id=late", *tiny])
    logging.shutdown()
    for text in (capsys.readouterr().err, Path("log/SASRec/late.log").read_text()):
        assert "the run failed after training; results computed so far: best valid: " in text
        assert "; test: " in text and "ndcg@10" in text
