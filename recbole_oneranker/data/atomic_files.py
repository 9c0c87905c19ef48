"""Strict reading of atomic files, before RecBole reads them.

RecBole's ``Dataset._load_feat`` parses ``<dataset>.inter`` (and ``.user``, ``.item``, ...) with pandas and accepts
what it should not: a header naming 3 columns over 4-field rows shifts every column by one (the first field
becomes the index), a NUL byte cuts an id short, an empty or NaN timestamp or id is silently filled, and the rest
(no header, an unknown type, text in a float column, an empty file) ends in a traceback. :func:`check_atomic_files`
reads every atomic file of the run's dataset first and raises :class:`AtomicFileError`, one line naming the file,
the line and the problem, or warns with the count and the fill value where RecBole's filling is meant (a missing
value in a column that is not an id or the time).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import getLogger
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_oneranker.data.converters.base import ATOMIC_TYPES, ConversionError, Rows, read_delimited
from recbole_oneranker.errors import ConfigError, shorten

# The suffixes of RecBole's atomic files (a benchmark split adds its own: ml-1m.train.inter).
ATOMIC_SUFFIXES = (".inter", ".user", ".item", ".kg", ".link", ".net")
# What pandas reads as missing in a file (its default na_values), so what RecBole fills.
MISSING = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


class AtomicFileError(ConfigError):
    """An atomic file RecBole would misread; the message is one line naming the file, the line and the problem."""


def check_atomic_files(config) -> None:
    """Check every atomic file of the run's dataset (``<data_path>/<dataset>.*``) before RecBole loads it.

    Ids (``USER_ID_FIELD``, ``ITEM_ID_FIELD``, ``HEAD/TAIL_ENTITY_ID_FIELD``) and the time (``TIME_FIELD``) may not
    be missing; a missing value elsewhere is filled by RecBole and logged here as a warning.

    Raises:
        AtomicFileError: a file with no typed header, a duplicate or unknown column type, an ``.inter`` file without
            the user or item id column, a line whose field count
            differs from the header's, a NUL byte, text that is not UTF-8, a non-number in a float column, a
            missing id or time, or no data rows.
    """
    folder = Path(config["data_path"])
    required = {config[key] for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "HEAD_ENTITY_ID_FIELD",
                                        "TAIL_ENTITY_ID_FIELD") if config[key]}  # fmt: skip
    interaction_ids = [config[key] for key in ("USER_ID_FIELD", "ITEM_ID_FIELD") if config[key]]
    for path in sorted(folder.glob(f"{config['dataset']}.*")):
        if path.suffix in ATOMIC_SUFFIXES and path.is_file():
            columns = interaction_ids if path.suffix == ".inter" else []
            check_atomic_file(path, config["field_separator"], config["encoding"] or "utf-8", required, columns)


def check_atomic_file(
    path: Path, separator: str, encoding: str, required: set[str], columns: Sequence[str] = ()
) -> None:
    """Check one atomic file (see :func:`check_atomic_files`); ``columns`` must be in its header."""
    try:
        rows = read_delimited(path, separator, encoding=encoding)
    except ConversionError as error:
        raise AtomicFileError(str(error)) from None
    types = _header_types(path, list(rows.frame.columns))
    names = [field.partition(":")[0] for field in types]
    for column in columns:
        if column not in names:
            listed = ", ".join(shorten(repr(name), 30) for name in names)
            raise AtomicFileError(f"{path}, line 1: no column {column!r} (the config's id field); columns: {listed}")
    for column, kind in types.items():
        values = rows.frame[column]
        missing = values.isin(MISSING).to_numpy()
        if kind == "float":
            _check_numbers(rows, column, values, missing)
        if missing.any():
            _report_missing(rows, column, kind, values, missing, required)


def _header_types(path: Path, header: list[str]) -> dict[str, str]:
    """``{name: type}`` of a ``name:type`` header; a field without a known type -> error at line 1."""
    types: dict[str, str] = {}
    for field in header:
        name, sep, kind = field.partition(":")
        if not sep or not name:
            problem = f"header field {shorten(repr(field))} has no name:type (e.g. user_id:token)"
            raise AtomicFileError(f"{path}, line 1: {problem}; types: {', '.join(ATOMIC_TYPES)}")
        if kind not in ATOMIC_TYPES:
            problem = f"column {name!r} has unknown type {shorten(repr(kind))}"
            raise AtomicFileError(f"{path}, line 1: {problem}; types: {', '.join(ATOMIC_TYPES)}")
        if name in types:
            raise AtomicFileError(f"{path}, line 1: column {name!r} appears twice")
        types[name] = kind
    return {field: types[field.partition(":")[0]] for field in header}


def _check_numbers(rows: Rows, column: str, values: pd.Series, missing: np.ndarray) -> None:
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(numbers) & ~missing)
    if bad.size:
        row = int(bad[0])
        raise AtomicFileError(
            f"{rows.path}, line {rows.lines[row]}: column {column.partition(':')[0]!r} is a float column, "
            f"got {shorten(repr(values.iloc[row]))}"
        )


def _report_missing(
    rows: Rows, column: str, kind: str, values: pd.Series, missing: np.ndarray, required: set[str]
) -> None:
    name = column.partition(":")[0]
    first_line = rows.lines[int(np.flatnonzero(missing)[0])]
    if name in required:
        raise AtomicFileError(
            f"{rows.path}, line {first_line}: column {name!r} is empty or NaN "
            f"({int(missing.sum())} such rows); an id or the time cannot be filled in"
        )
    if kind == "float":
        fill = f"the column mean {pd.to_numeric(values[~missing]).mean():.6g}"
    else:
        fill = "the padding token (id 0)" if kind == "token" else "an empty sequence"
    getLogger(__name__).warning(
        f"{rows.path}: {int(missing.sum())} rows have no {name!r} (first at line {first_line}); "
        f"RecBole fills them with {fill}"
    )
