"""Atomic files RecBole would misread or fail on late: one line naming the file and line, before anything runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from recbole_oneranker.cli import main
from recbole_oneranker.data.atomic_files import AtomicFileError, check_atomic_file

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ROWS = [f"{user}\t{item}\t{(user + item) % 5 + 1}\t{1000 + 10 * item}" for user in (1, 2, 3) for item in range(1, 6)]
IDS_AND_TIME = {"user_id", "item_id", "timestamp"}


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "data" / "bad" / "bad.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _with_field(row: int, column: int, value: str) -> list[str]:
    """ROWS with one field replaced (row 0 is at line 2 of the file)."""
    rows = list(ROWS)
    fields = rows[row].split("\t")
    fields[column] = value
    rows[row] = "\t".join(fields)
    return rows


def _file(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (_file("user_id:token\titem_id:token\ttimestamp:float", ROWS), "line 2: expected 3 fields separated by"),
        (_file(HEADER, _with_field(3, 3, "")), "line 5: column 'timestamp' is empty or NaN"),
        (_file(HEADER, _with_field(2, 3, "nan")), "line 4: column 'timestamp' is empty or NaN"),
        (_file(HEADER, _with_field(1, 0, "")), "line 3: column 'user_id' is empty or NaN"),
        (_file(HEADER, _with_field(4, 0, "1\x002")), "line 6: a NUL byte"),
        (_file(ROWS[1], ROWS[2:]), "line 1: header field '1' has no name:type"),
        (_file(HEADER.replace("item_id:token", "item_id"), ROWS), "line 1: header field 'item_id' has no name:type"),
        (_file(HEADER.replace("rating:float", "item_id:float"), ROWS), "line 1: column 'item_id' appears twice"),
        (_file(HEADER.replace("rating:float", "rating:floatt"), ROWS), "line 1: column 'rating' has unknown type"),
        (_file(HEADER, _with_field(5, 2, "abc")), "line 7: column 'rating' is a float column, got 'abc'"),
        ("", "file is empty"),
        (_file(HEADER.replace("user_id", "u\x05ser_id"), ROWS), "line 1: no column 'user_id' (the config's id field)"),
        (HEADER + "\n", "file has no data rows"),
        (_file(HEADER, ROWS).encode() + b"1\t\xff\t3\t4\n", "line 17: not utf-8 text"),
    ],
)
def test_malformed_atomic_file_is_one_line_with_file_and_line(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(AtomicFileError) as raised:
        check_atomic_file(path, "\t", "utf-8", IDS_AND_TIME, columns=["user_id", "item_id"])
    assert str(raised.value).startswith(str(path)) and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_long_bad_value_is_cut_in_the_message(tmp_path):
    path = _write(tmp_path, _file(HEADER, _with_field(0, 2, "x" * 100_000)))
    with pytest.raises(AtomicFileError, match=r"xxx\.\.\. \(100,002 characters\)") as raised:  # repr's quotes count
        check_atomic_file(path, "\t", "utf-8", IDS_AND_TIME)
    assert len(str(raised.value)) < 300


def test_filled_values_are_a_warning_with_count_and_fill(tmp_path, caplog):
    rows = _with_field(0, 2, "")
    rows[1] = rows[1].rsplit("\t", 2)[0] + "\tnan\t" + rows[1].rsplit("\t", 1)[1]
    path = _write(tmp_path, _file(HEADER, rows))
    with caplog.at_level(logging.WARNING):
        check_atomic_file(path, "\t", "utf-8", IDS_AND_TIME)
    assert "2 rows have no 'rating' (first at line 2); RecBole fills them with the column mean" in caplog.text


def test_shifted_columns_stop_the_run_before_it_starts(tmp_path, capsys):
    path = _write(tmp_path, _file("user_id:token\titem_id:token\ttimestamp:float", ROWS))
    args = ["--model=SASRec", "--dataset=bad", f"--data_path={path.parent.parent}", "--epochs=1", "--state=ERROR"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}, line 2: expected 3 fields" in err


def test_a_split_left_empty_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, _file(HEADER, ["1\t2\t3\t100"]))  # a single user with one interaction
    args = ["--model=SASRec", "--dataset=bad", f"--data_path={path.parent.parent}", "--load_col=None", "--state=ERROR"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the training split of dataset 'bad' is empty" in err


def test_a_sequential_run_without_its_time_column_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, _file(HEADER, ROWS))  # RecBole loads only user_id and item_id by default
    assert main(["--model=SASRec", "--dataset=bad", f"--data_path={path.parent.parent}", "--state=ERROR"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "time field 'timestamp' is not loaded" in err
