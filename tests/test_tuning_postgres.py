"""tuning/search.py on PostgreSQL: two workers share one study; one is SIGKILLed in the middle of a trial, Optuna's
heartbeat fails that trial after the grace period, and the other worker runs its retry, so that every planned trial
completes exactly once. Workers that start together on an empty database all open it.

They need a server: ``RECBOLE_ONERANKER_TEST_POSTGRES=postgresql://user@host:port/db``, a database whose user may
create databases (``.ci/run`` starts a throwaway server; README, "Run the tests"). Each test works in a new database
of its own, dropped at the end. Without the variable, or with the server unreachable, the tests skip.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from test_tuning import DEADLINE_S, finish, search_args, start

from recbole_oneranker.tuning.storage import open_storage

POSTGRES_ENV = "RECBOLE_ONERANKER_TEST_POSTGRES"
HEARTBEAT_S = 1
GRACE_S = 4


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a new database on the server of ``RECBOLE_ONERANKER_TEST_POSTGRES``, dropped afterwards."""
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test on (.ci/run starts one, see README)")
    psycopg = pytest.importorskip("psycopg", reason='the PostgreSQL driver is missing: pip install -e ".[test]"')
    try:  # CREATE/DROP DATABASE run outside a transaction
        admin = psycopg.connect(server, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL at {server} ({POSTGRES_ENV}) is unreachable: {str(error).strip().splitlines()[0]}")
    name = f"recbole_oneranker_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    yield urlsplit(server)._replace(path=f"/{name}").geturl()
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def trials_of(database: str, study: str) -> list[FrozenTrial]:
    """The study's trials, read without a heartbeat; none while the study does not exist yet."""
    try:
        return optuna.load_study(study_name=study, storage=database).trials
    except KeyError:
        return []


def wait_until(condition: Callable[[], bool], what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened:\n" + "\n".join(log.read_text() for log in logs))


def running_in(database: str, study: str, number: int, pid: int) -> bool:
    """True when trial ``number`` is RUNNING in process ``pid`` and has drawn its parameters."""
    trials = trials_of(database, study)
    if len(trials) <= number:
        return False
    trial = trials[number]
    owner = trial.user_attrs.get("owner", {})
    return trial.state == TrialState.RUNNING and owner.get("pid") == pid and "command" in trial.user_attrs


def test_a_killed_worker_trial_is_failed_by_its_heartbeat_and_completed_once_by_the_other(
    database, tiny_data_path, tmp_path
):
    study = "killed-on-postgres"
    heartbeat = ["--heartbeat-interval", str(HEARTBEAT_S), "--grace-period", str(GRACE_S)]
    args = search_args(tiny_data_path, tmp_path, study, 2, "--seed", "0", "--storage", database, *heartbeat)
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    first = start(args, logs[0], sleep_at="0:120")  # trial 0 sleeps in the test hook: it is killed there
    wait_until(lambda: running_in(database, study, 0, first.pid), "worker 1 running trial 0", logs)
    second = start(args, logs[1])
    wait_until(lambda: running_in(database, study, 1, second.pid), "worker 2 running trial 1", logs)
    first.send_signal(signal.SIGKILL)
    killed_at = time.time()
    first.wait()
    output = finish(second, logs[1])

    killed, other, retry = trials_of(database, study)
    assert (killed.state, other.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE)
    # failed by the heartbeat: no sooner than a grace period after its last beat (at most one interval before the kill)
    assert killed.datetime_complete.timestamp() >= killed_at + GRACE_S - HEARTBEAT_S
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["owner"]["pid"] == second.pid
    assert retry.user_attrs["run_id"] == killed.user_attrs["run_id"]  # it continues the killed trial's run
    # every planned trial completed exactly once: trial 0's parameters by its retry, trial 1's by itself
    completed = sorted(repr(t.params) for t in (other, retry))
    assert completed == sorted(repr(t.params) for t in (killed, other)) and len(set(completed)) == 2
    assert "the last 1 trial(s) are running in other processes: waiting, to retry any that dies" in output
    assert any(line.startswith("trial 2  COMPLETE") and line.endswith("(retry of 0)") for line in output.splitlines())
    assert "== study killed-on-postgres: 2 finished of 2 (COMPLETE 2, FAIL 1)" in output


# catch_warnings (hiding the heartbeat's ExperimentalWarning) is not thread-safe; workers are processes, not threads
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_workers_starting_together_on_an_empty_database_all_open_it(database):
    # each creates Optuna's tables; without a second try, all but one failed with a unique violation
    with ThreadPoolExecutor(4) as pool:
        storages = list(pool.map(lambda _: open_storage(database, Path("unused")), range(4)))
    assert all(storage.get_all_studies() == [] for storage in storages)
