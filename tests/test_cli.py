"""The run_recbole command: one clear line and exit 2 for mistakes; a real end-to-end run on tiny data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recbole_oneranker.cli import main


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recbole_oneranker", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=NoSuchModel"], "unknown model 'NoSuchModel'"),
        (["--model=onerec"], "unknown model 'onerec': did you mean 'OneRec'"),
        (["--model=SASRec", "--dataset=no-such-data"], "dataset 'no-such-data' not found"),
        (["--model=SASRec", "--epochz=1"], "unknown config key 'epochz'"),
        ([], "no model given"),
    ],
)
def test_mistakes_print_one_line_and_exit_2(args, message):
    result = _cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_sasrec_end_to_end_reloads_best_and_prints_summary(tiny_config, capsys):
    config = {**tiny_config, "epochs": 2}
    args = [f"--{key}={value}" if isinstance(value, str) else f"--{key}={value!r}" for key, value in config.items()]
    assert main(["--model=SASRec", "--dataset=ml-tiny", *args]) == 0
    out = capsys.readouterr().out
    assert "== SASRec on ml-tiny" in out
    assert "protocol   : leave-one-out (valid_and_test), full ranking over all" in out
    assert "test       : hit@5" in out and "gmv@10" in out and "checkpoint : saved/SASRec-ml-tiny-" in out


@pytest.mark.parametrize("verbose", [False, True])
def test_terminal_shows_a_short_header_and_the_log_file_everything(tiny_config, tiny_data_path, capsys, verbose):
    # HSTU: its whole-sequence layout rewrites the dataset's rows, which the header must not count
    config = {**tiny_config, "attention_dim": 8, "linear_hidden_dim": 8, "state": "INFO", "threads": 1}
    args = [f"--{key}={value}" if isinstance(value, str) else f"--{key}={value!r}" for key, value in config.items()]
    assert main(["--model=HSTU", "--dataset=ml-tiny", f"--verbose={verbose}", *args]) == 0
    terminal = capsys.readouterr().err
    log_file = next(Path("log", "HSTU").glob("*.log"))
    assert "1 torch thread(s)" in terminal and f"model structure: {log_file}" in terminal
    interactions = len((tiny_data_path / "ml-tiny" / "ml-tiny.inter").read_text().splitlines()) - 1  # the header
    assert "HSTU on ml-tiny: 60 users, " in terminal and f" items, {interactions:,} interactions; " in terminal
    # the config dump, the model's structure, the loaders' settings
    for detail in ("General Hyper Parameters", "HSTU(\n", "[Training]: train_batch_size"):
        assert detail in log_file.read_text()
        assert (detail in terminal) == verbose
