"""Writing atomic files: value cleaning, the all-or-nothing folder swap, and the run summary.

Cleaning: token values lose tabs, carriage returns and newlines (replaced by a space) and double quotes (RecBole
reads atomic files with pandas' default quote character, so a value starting with ``"`` would swallow the rest of
the line); token_seq values also get their whitespace collapsed to single spaces. Float columns must be finite (a
NaN would be replaced by the column mean when RecBole loads the file); a float column whose values are all whole
numbers is written without a decimal point (``5`` rather than ``5.0``).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_oneranker.data.converters.base import ConversionError, Converted, Progress, Table

_CONTROL = r"[\t\r\n]+"  # become one space
_UNSAFE = re.compile(r'[\t\r\n"]')  # control characters and double quotes (removed)


@dataclass
class Summary:
    """What a conversion wrote: folder, files with their row counts, users, items and label counts."""

    name: str
    path: Path
    files: dict[str, int]
    users: int
    items: int
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.files[f"{self.name}.inter"]

    def lines(self) -> list[str]:
        """The human-readable summary, one entry per line."""
        out = [f"wrote {self.path}"]
        out += [f"  {file}: {rows:,} rows" for file, rows in self.files.items()]
        out.append(f"  interactions: {self.rows:,}  users: {self.users:,}  items: {self.items:,}")
        if self.labels:
            out.append("  labels: " + "; ".join(f"{k}: {v:,}" for k, v in self.labels.items()))
        return out


def clean_column(values: pd.Series, kind: str) -> pd.Series:
    """One column ready for writing: cleaned strings for token types, finite numbers for float types."""
    if values.isna().any():
        raise ValueError(f"column {values.name!r} has missing values")  # a converter bug, not an input error
    if kind in ("token", "token_seq"):
        text = values.astype(str)
        if _UNSAFE.search("".join(text)):  # one scan of all values; most columns need no replacing
            text = text.str.replace(_CONTROL, " ", regex=True).str.replace('"', "", regex=False)
        return text.str.split().str.join(" ") if kind == "token_seq" else text
    if kind == "float_seq":
        return values.astype(str).str.split().str.join(" ")
    numbers = pd.to_numeric(values).to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        raise ValueError(f"float column {values.name!r} has NaN or infinite values")  # a converter bug
    if np.array_equal(numbers, np.round(numbers)) and np.abs(numbers).max(initial=0) < 2**53:
        return pd.Series(numbers.astype(np.int64), index=values.index)
    return pd.Series(numbers, index=values.index)


def write_table(table: Table, path: Path) -> None:
    """Write one atomic file: the ``name:type`` header line, then tab-separated rows."""
    frame = pd.DataFrame({name: clean_column(table.frame[name], kind) for name, kind in table.types.items()})
    header = "\t".join(f"{name}:{kind}" for name, kind in table.types.items())
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(header + "\n")
        frame.to_csv(handle, sep="\t", header=False, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")


def label_counts(frame: pd.DataFrame, labels: tuple[str, ...]) -> dict[str, int]:
    """Positives of each 0/1 label column; for other label columns (ratings), the count of each value."""
    counts: dict[str, int] = {}
    for column in labels:
        values = pd.to_numeric(frame[column])
        if values.isin([0, 1]).all():
            counts[column] = int(values.sum())
        else:
            for value, count in values.value_counts().sort_index().items():
                counts[f"{column}={value:g}"] = int(count)
    return counts


def write_atomic(converted: Converted, out: Path, name: str, progress: Progress) -> Summary:
    """Write ``<out>/<name>/<name>.<suffix>`` for every table, replacing an older folder only once all are written.

    Files go to a temporary folder inside ``out`` that is renamed into place at the end, so a failure leaves
    neither a half-written dataset nor a stray folder behind; the folders of a conversion killed mid-way are
    removed by the next conversion of ``name`` (:func:`remove_abandoned_folders`). The dataset folder gets the
    permissions of the umask, as ``mkdir`` gives them.
    """
    final = out / name
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_abandoned_folders(out, name)
        staging = _work_folder(out, name, "tmp")
    except OSError as exc:
        raise ConversionError(f"{out}: cannot create the output folder: {exc}") from exc
    try:
        files = {}
        for suffix, table in converted.tables().items():
            file = f"{name}.{suffix}"
            progress.step(f"writing {file} ({len(table.frame):,} rows)")
            write_table(table, staging / file)
            files[file] = len(table.frame)
        _swap_into_place(staging, final)
    except OSError as exc:
        raise ConversionError(f"{final}: cannot write: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    inter = converted.inter.frame
    return Summary(
        name=name,
        path=final,
        files=files,
        users=int(inter["user_id"].nunique()),
        items=int(inter["item_id"].nunique()),
        labels=label_counts(inter, converted.labels),
    )


def _work_folder(out: Path, name: str, kind: str) -> Path:
    """A new hidden folder ``.<name>.<kind>-<pid>-<random>`` in ``out``.

    Made with ``mkdir``, which honours the umask (``tempfile.mkdtemp`` would make it ``drwx------``, and the staging
    folder becomes the dataset folder); the pid lets a later conversion tell an abandoned folder from a live one.
    """
    folder = out / f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def remove_abandoned_folders(out: Path, name: str) -> None:
    """Delete the work folders of conversions of ``name`` into ``out`` whose process is gone (killed mid-way)."""
    for folder in out.glob(f".{name}.*-*-*"):
        kind, _, rest = folder.name.removeprefix(f".{name}.").partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _swap_into_place(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and deleted afterwards."""
    if not final.exists():
        os.replace(staging, final)
        return
    old = _work_folder(final.parent, final.name, "old")
    os.replace(final, old / final.name)
    try:
        os.replace(staging, final)
    except OSError:
        os.replace(old / final.name, final)  # put the previous output back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
