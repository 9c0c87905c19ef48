"""Random malformed atomic files and random bad ``--key=value`` pairs, fed to ``run_recbole`` in-process: each is
one line on stderr and exit status 2, or a valid run; never a traceback, never a half-written file."""

from __future__ import annotations

import contextlib
import io
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbole_oneranker.cli import main
from recbole_oneranker.config_rules import RULED_KEYS, RULES

HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
# 4 users x 40 interactions over 60 items: enough items for OneRanker's defaults (30 candidates, 32 fake items).
ROWS = [[str(user), str((user * 7 + step) % 60 + 1), str(step % 5 + 1), str(1000 + step)]
        for user in range(1, 5) for step in range(40)]  # fmt: skip
TINY = ["--epochs=1", "--hidden_size=8", "--n_layers=1", "--n_heads=1", "--MAX_ITEM_LIST_LENGTH=5", "--state=ERROR",
        "--load_col=None", "--show_progress=False", "--train_batch_size=64", "--eval_batch_size=64"]  # fmt: skip
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(folder: Path, model: str, *args: str) -> tuple[int, str]:
    """``run_recbole`` in-process with outputs under ``folder``; returns (exit status, stderr)."""
    err = io.StringIO()
    outputs = [f"--checkpoint_dir={folder / 'saved'}", f"--log_dir={folder / 'log'}"]
    by_key = {arg.partition("=")[0]: arg for arg in [*TINY, *outputs, *args]}  # a fuzzed value replaces a tiny one
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main([f"--model={model}", "--dataset=fuzz", f"--data_path={folder}", *by_key.values()])
    return status, err.getvalue()


def _assert_one_line_or_success(folder: Path, status: int, err: str) -> None:
    assert status in (0, 2), err
    if status == 2:
        assert err.startswith("run_recbole: error: ") and err.count("\n") == 1, err
    half_written = [path.name for path in folder.rglob("*.partial")]
    assert not half_written


# -- malformed atomic files ------------------------------------------------------------------------------------

field_text = st.text(alphabet=string.printable + "\x00é", max_size=8)
mutation = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, len(ROWS)), st.integers(0, 3), field_text),
    st.tuples(st.just("drop_field"), st.integers(0, len(ROWS)), st.integers(0, 3)),
    st.tuples(st.just("add_field"), st.integers(0, len(ROWS)), field_text),
    st.tuples(st.just("raw_bytes"), st.integers(0, 4000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 4000)),
)


def _mutated_file(mutations) -> bytes:
    lines = [list(HEADER), *(list(row) for row in ROWS)]  # line 0 is the header
    raw_edits = []
    for kind, *where in mutations:
        if kind in ("raw_bytes", "truncate"):
            raw_edits.append((kind, *where))
            continue
        line = lines[where[0]]
        if kind == "replace" and where[1] < len(line):
            line[where[1]] = where[2]
        elif kind == "drop_field" and where[1] < len(line):
            del line[where[1]]
        elif kind == "add_field":
            line.append(where[1])
    content = ("\n".join("\t".join(line) for line in lines) + "\n").encode("utf-8")
    for kind, position, *payload in raw_edits:
        position = min(position, len(content))
        content = content[:position] + payload[0] + content[position:] if kind == "raw_bytes" else content[:position]
    return content


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_malformed_atomic_files_are_one_line_or_a_valid_run(tmp_path_factory, mutations):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "fuzz").mkdir()
    (folder / "fuzz" / "fuzz.inter").write_bytes(_mutated_file(mutations))
    _assert_one_line_or_success(folder, *_run(folder, "SASRec"))


# -- bad --key=value pairs -------------------------------------------------------------------------------------

DATASET_BOUNDED = sorted({rule.key for rule in RULES if rule.check.needs_dataset})
# Small values only: a large valid width (hidden_size=100000) is a valid, and huge, model.
bad_value = st.one_of(
    st.integers(-3, 3).map(str),
    st.floats(-2, 2).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "None", "[]", "[1, 2]", "{'a': 1}", "''", "True", "1e309", "x\ny"]),
    st.text(alphabet=string.printable + "\x00", max_size=10),
)
pair = st.one_of(
    st.tuples(st.sampled_from(sorted(RULED_KEYS)), bad_value),
    st.tuples(st.sampled_from(DATASET_BOUNDED), st.sampled_from(["100000", "-1", "59", "60", "61"])),
)


@FUZZ
@given(model=st.sampled_from(["SASRec", "OneRanker"]), pairs=st.lists(pair, min_size=1, max_size=2))
def test_bad_key_values_are_one_line_or_a_valid_run(tmp_path_factory, model, pairs):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "fuzz").mkdir()
    (folder / "fuzz" / "fuzz.inter").write_bytes(_mutated_file([]))
    args = [f"--{key}={value}" for key, value in dict(pairs).items()]
    _assert_one_line_or_success(folder, *_run(folder, model, *args))
