"""Where Optuna studies live, shared by the search and its reports: opening a storage, loading a study, counting
its trials, and the one-line usage error both print."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from recbole_oneranker.bench.common import REPO

# A user's studies live apart from the committed ones (git ignores studies/), which are read-only inputs: a search
# or a report writes into results/tuning only when given --out results/tuning.
DEFAULT_OUT = REPO / "studies"
COMMITTED_STUDIES = REPO / "results" / "tuning"
USAGE_ERROR = 2
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RDB_MAX_RETRIES = 3  # RDB storages: Optuna's heartbeat retries a stale trial this many times in all, blind to progress
HEARTBEAT_INTERVAL_S = 60  # RDB storages only
GRACE_PERIOD_S = 180
TABLE_CREATION_TRIES = 3


class UsageError(Exception):
    """A mistake in the command or its inputs, or a study that cannot be read: printed as one ``error: ...`` line,
    exit status 2."""


def is_rdb_url(url: str | None) -> bool:
    """True for a database URL (``postgresql://...``, ``sqlite:///...``), False for a journal file path or None."""
    return url is not None and "://" in url


def open_storage(
    url: str | None,
    default_journal: Path,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
) -> BaseStorage:
    """An RDB storage for a URL, else a journal file. An RDB storage beats every ``heartbeat_interval`` seconds while
    a trial runs (None: no heartbeat, for reading); a trial silent for ``grace_period`` seconds is failed and retried.
    """
    if is_rdb_url(url):
        return _open_rdb(url, heartbeat_interval, grace_period)
    path = Path(url) if url else default_journal
    path.parent.mkdir(parents=True, exist_ok=True)
    # An explicit journal path may sit on NFS, where only the open() lock is reliable.
    lock = JournalFileOpenLock(str(path)) if url else None
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _open_rdb(url: str, heartbeat_interval: int | None, grace_period: int) -> RDBStorage:
    if heartbeat_interval is not None and grace_period <= heartbeat_interval:
        raise UsageError(
            f"the grace period ({grace_period} s) must exceed the heartbeat interval ({heartbeat_interval} s), "
            "or live trials are failed"
        )
    # A trial may run for hours between two queries of its process: test pooled connections before using them.
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    try:
        with warnings.catch_warnings():  # the heartbeat and its callback are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat_interval is not None:
                kwargs["heartbeat_interval"] = heartbeat_interval
                kwargs["grace_period"] = grace_period
                kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(max_retry=RDB_MAX_RETRIES)
            return _rdb_storage(url, kwargs)
    except ImportError as error:
        driver = error.__cause__ or error
        raise UsageError(
            f"cannot open storage {without_password(url)}: {driver} (PostgreSQL: pip install -e '.[postgres]')"
        ) from error
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        raise UsageError(f"cannot open storage {without_password(url)}: {str(error).splitlines()[0]}") from error


def _rdb_storage(url: str, kwargs: dict[str, Any]) -> RDBStorage:
    """``RDBStorage(url, **kwargs)``. Workers that start together on an empty database race to create Optuna's
    tables; the losers' creation fails (PostgreSQL: a unique violation) and a later try finds the tables."""
    for attempt in range(1, TABLE_CREATION_TRIES):
        try:
            return RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(attempt)
    return RDBStorage(url, **kwargs)


def without_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db``, for output."""
    scheme, _, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    return f"{scheme}://{credentials.partition(':')[0]}{at}{place}"


def study_journal(name: str, out: Path) -> Path:
    """The journal of study ``name``: ``<out>/<name>/journal.log``, or when that is missing and ``out`` is the
    default, the committed study's (``results/tuning/<name>/journal.log``), read as an input."""
    journal = out / name / "journal.log"
    committed = COMMITTED_STUDIES / name / "journal.log"
    return committed if out == DEFAULT_OUT and not journal.is_file() and committed.is_file() else journal


def load_study(name: str, storage_url: str | None, out: Path) -> optuna.Study:
    """The study ``name`` from ``storage_url``, or from its journal (:func:`study_journal`); loading writes nothing."""
    journal = study_journal(name, out)
    if not is_rdb_url(storage_url) and not Path(storage_url or journal).is_file():
        raise UsageError(f"no study '{name}': no journal {storage_url or journal} (give --out or --storage)")
    try:
        storage = open_storage(storage_url, journal, heartbeat_interval=None)
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError as error:
        raise UsageError(f"no study '{name}' in {storage_url or journal}") from error


def state_counts(study: optuna.Study) -> Counter:
    return Counter(trial.state for trial in study.get_trials(deepcopy=False))
