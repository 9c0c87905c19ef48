"""One rule for every KEY=VALUE: Python literals, else the string; the CLI, --set and config_dict strings share it."""

from __future__ import annotations

import pytest

from recbole_oneranker import compat
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.overrides import parse_assignments, parse_value


@pytest.mark.parametrize(
    "text, value",
    [("64", 64), ("1e-3", 0.001), ("[10, 20]", [10, 20]), ("['Hit', 'NDCG']", ["Hit", "NDCG"]), ("None", None),
     ("true", True), ("FALSE", False), ("{'LS': 'valid_and_test'}", {"LS": "valid_and_test"}),
     ("popularity", "popularity"), ("value", "value"), ("[0,inf)", "[0,inf)"),
     ("__import__('os')", "__import__('os')")],
)  # fmt: skip
def test_values_are_python_literals_else_strings(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_a_recorded_command_reads_back_its_settings():
    settings = {"topk": [1, 5], "load_col": None, "learning_rate": 0.0005, "relative_bias": "position"}
    assert parse_assignments([f"--{key}={value!r}" for key, value in settings.items()], "argument", "--") == settings


@pytest.mark.parametrize(
    "items, message",
    [(["epochs=3"], "cannot read argument 'epochs=3': write overrides as --key=value"),
     (["--epochs=3", "--epochs=4"], "argument --epochs is given twice with different values")],
)  # fmt: skip
def test_malformed_assignments_are_config_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_assignments(items, "argument", "--")


def test_config_dict_strings_follow_the_same_rule():
    assert compat.convert_config_strings({"topk": "[10,20]", "sampling": "popularity"}) == {
        "topk": [10, 20], "sampling": "popularity"}  # fmt: skip
