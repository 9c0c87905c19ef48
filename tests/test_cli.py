"""The run_recbole command: one clear line and exit 2 for mistakes; a real end-to-end run on tiny data."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recbole_oneranker.cli import main


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recbole_oneranker", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=NoSuchModel"], "unknown model 'NoSuchModel'"),
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
