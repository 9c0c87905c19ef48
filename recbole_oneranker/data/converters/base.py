"""What every converter shares: the error type, the table types, progress messages and strict input readers.

Readers never guess: a missing file or column, a row with the wrong number of fields, a non-numeric value where a
number is required and an empty file all raise :class:`ConversionError`, whose message names the file, the 1-based
line (where there is one) and what is wrong. None of the sources quotes its fields, so every delimited file is read
as plain separator-split text (no CSV quoting), which makes "field count of a line" exact.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from recbole_oneranker.errors import shorten

ATOMIC_TYPES = ("token", "float", "token_seq", "float_seq")


class ConversionError(Exception):
    """The raw input is missing or malformed; the message is one line naming the file, line and problem."""


def input_error(path: Path, problem: str, line: int | None = None) -> ConversionError:
    """A :class:`ConversionError` for ``path`` (and its 1-based ``line`` where known)."""
    where = f"{path}, line {line}" if line is not None else str(path)
    return ConversionError(f"{where}: {problem}")


@dataclass
class Table:
    """One atomic file: a frame whose columns are written in order, and each column's RecBole type."""

    frame: pd.DataFrame
    types: dict[str, str]

    def __post_init__(self) -> None:
        if list(self.frame.columns) != list(self.types):
            raise ValueError(f"columns {list(self.frame.columns)} do not match types {list(self.types)}")
        unknown = {t for t in self.types.values() if t not in ATOMIC_TYPES}
        if unknown:
            raise ValueError(f"unknown atomic types {sorted(unknown)}")


@dataclass
class Converted:
    """A converter's result: the ``.inter`` table, optional ``.user``/``.item`` tables and its label columns.

    ``default_name`` is the dataset name used when ``--name`` is not given; ``labels`` are the ``.inter`` columns
    the summary counts.
    """

    default_name: str
    inter: Table
    user: Table | None = None
    item: Table | None = None
    labels: tuple[str, ...] = ()

    def tables(self) -> dict[str, Table]:
        """The tables to write, keyed by file suffix (``inter``, ``user``, ``item``)."""
        found = {"inter": self.inter, "user": self.user, "item": self.item}
        return {suffix: table for suffix, table in found.items() if table is not None}


@dataclass(frozen=True)
class Option:
    """A converter-specific option: ``--<name>`` on the command line, keyword ``name`` in Python."""

    name: str
    default: str
    help: str
    choices: tuple[str, ...] | None = None


class Progress:
    """Timestamped step messages on stdout (silent when disabled), so that stderr carries only the error line."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self.start = time.perf_counter()

    def step(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.1f}s] {message}", file=self.stream or sys.stdout, flush=True)


ConvertFunction = Callable[[Path, Mapping[str, str], Progress], Converted]


@dataclass(frozen=True)
class ConverterSpec:
    """A registered converter: its CLI name, one-line description, default raw folder, options and function."""

    name: str
    description: str
    folder: str
    convert: ConvertFunction
    options: tuple[Option, ...] = field(default=())


# ----------------------------------------------------------------------------------------------- reading files


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole text of ``path`` (gunzipped when it ends in ``.gz``); missing, unreadable or empty -> error."""
    if not path.is_file():
        raise input_error(path, "file not found")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise input_error(path, f"cannot read: {exc}") from exc
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise input_error(path, f"not {encoding} text: {exc.reason} (byte {raw[exc.start]:#04x})", line) from None
    if path.suffix != ".gz":  # plain files are read with universal newlines, as open() in text mode does
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise input_error(path, "file is empty")
    return text


def find_file(folder: Path, *names: str) -> Path:
    """The first of ``names`` that exists in ``folder``; none -> error naming the first."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    tried = " or ".join(names)
    raise input_error(folder / names[0], f"file not found (looked for {tried})")


@dataclass
class Rows:
    """A delimited file as string columns, with the 1-based source line of every row (blank lines skipped)."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def require(self, *columns: str) -> None:
        """Error (line 1, the header) if any of ``columns`` is missing."""
        missing = [c for c in columns if c not in self.frame.columns]
        if missing:
            names = ", ".join(repr(c) for c in missing)
            raise input_error(self.path, f"missing column(s) {names}", 1)

    def fail(self, row: int, problem: str) -> ConversionError:
        """An error for positional ``row`` (reported at its source line)."""
        return input_error(self.path, problem, int(self.lines[row]))

    def numbers(self, column: str, integer: bool = False) -> np.ndarray:
        """``column`` as finite float64 values; the first non-number (or non-integer) -> error at its line."""
        raw = self.frame[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if integer:
            bad |= values != np.round(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            kind = "an integer" if integer else "a number"
            raise self.fail(row, f"column {column!r} must be {kind}, got {shorten(repr(raw.iloc[row]))}")
        return values

    def one_of(self, column: str, allowed: Mapping[str, int]) -> np.ndarray:
        """``column`` mapped through ``allowed``; the first value outside it -> error at its line."""
        raw = self.frame[column]
        mapped = raw.map(allowed)
        if mapped.isna().any():
            row = int(np.flatnonzero(mapped.isna().to_numpy())[0])
            expected = ", ".join(allowed)
            raise self.fail(row, f"column {column!r} must be one of {expected}, got {shorten(repr(raw.iloc[row]))}")
        return mapped.to_numpy(dtype=np.int64)

    def unix_seconds(self, column: str) -> np.ndarray:
        """``column`` as Unix seconds: numbers are taken as they are, date-time strings are parsed (naive = UTC)."""
        raw = self.frame[column]
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().all():
            return self.numbers(column)
        parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise self.fail(row, f"column {column!r} must be a date-time, got {shorten(repr(raw.iloc[row]))}")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.float64)


def read_delimited(
    path: Path,
    sep: str,
    columns: list[str] | None = None,
    encoding: str = "utf-8",
) -> Rows:
    """Split every non-blank line of ``path`` on ``sep`` into string columns (no quoting, values kept verbatim).

    With ``columns`` the file has no header; without, its first line is the header. Every data line must have
    exactly as many fields as there are columns. Field counts are checked on the raw bytes and the split is done by
    pandas' C parser, so a million-line file takes about a second.
    """
    text, shown = read_text(path, encoding).replace("\r\n", "\n"), sep
    if len(sep) > 1:  # pandas' fast parser takes one character: stand in a control character absent from the text
        stand_in = next(c for c in "\x1f\x1e\x1d\x1c\x01\x02\x03" if c not in text)
        text, sep = text.replace(sep, stand_in), stand_in
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    nul = np.flatnonzero(data == 0)
    if nul.size:  # pandas would cut the value at it, silently shortening an id
        raise input_error(path, "a NUL byte (\\x00)", int(np.searchsorted(ends, nul[0])) + 1)
    if data[-1] != ord("\n"):
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    separators = np.flatnonzero(data == ord(sep))
    fields = np.searchsorted(separators, ends) - np.searchsorted(separators, starts) + 1
    numbers = np.arange(1, len(ends) + 1)
    header_lines = 0
    if columns is None:
        columns, header_lines = text.split("\n", 1)[0].split(sep), 1
        duplicated = pd.Index(columns).duplicated()
        if duplicated.any():
            raise input_error(
                path, f"column {shorten(repr(columns[int(np.flatnonzero(duplicated)[0])]))} appears twice", 1
            )
    data_line = (ends > starts) & (numbers > header_lines)  # blank lines are skipped
    fields, numbers = fields[data_line], numbers[data_line]
    if not len(numbers):
        raise input_error(path, "file has no data rows")
    bad = np.flatnonzero(fields != len(columns))
    if bad.size:
        problem = f"expected {len(columns)} fields separated by {shown!r}, found {fields[bad[0]]}"
        raise input_error(path, problem, int(numbers[bad[0]]))
    frame = pd.read_csv(
        io.StringIO(text),
        sep=sep,
        header=None,
        names=list(range(len(columns))),
        skiprows=header_lines,
        dtype=str,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        lineterminator="\n",
        skip_blank_lines=True,
        engine="c",
    )
    if len(frame) != len(numbers):  # cannot happen with the checks above; never report wrong lines
        raise input_error(path, f"parsed {len(frame)} rows from {len(numbers)} lines")
    frame.columns = columns
    return Rows(path, frame, numbers)


def numeric_key(values: pd.Series) -> pd.Series:
    """A sort key for id strings: their numeric value when all are numbers, else the strings themselves."""
    numeric = pd.to_numeric(values, errors="coerce")
    return numeric if numeric.notna().all() else values
