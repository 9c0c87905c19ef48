"""Thread choice: the idle cores when a run is not told, and one thread once other processes want the cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_oneranker import quick_start, threads
from recbole_oneranker.errors import ConfigError
from recbole_oneranker.quick_start import IDLE_CORES, cpu_threads, run
from recbole_oneranker.threads import ContentionGuard, CpuTimes, auto_threads, idle_cores, usable_cores

ALLOWED = sorted(os.sched_getaffinity(0))


def _stat(path: Path, per_cpu: dict[int, tuple[int, int]]) -> Path:
    """A /proc/stat with ``cpuN: (busy, idle)`` ticks (busy as user time, idle split into idle and iowait)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle - idle // 4} {idle // 4} 0 0 0 0 0" for n, (busy, idle) in per_cpu.items()]
    path.write_text("\n".join([*lines, "intr 12345 0 0", "ctxt 999"]) + "\n")
    return path


def _times(busy_s: float, own_s: float, wall_s: float) -> CpuTimes:
    return CpuTimes(busy_s=busy_s, total_s=0.0, own_s=own_s, wall_s=wall_s)


def test_cpu_times_sum_the_allowed_cores_and_count_iowait_as_idle(tmp_path):
    tick = os.sysconf("SC_CLK_TCK")
    stat = _stat(tmp_path / "stat", {n: (3 * tick, 5 * tick) for n in ALLOWED} | {max(ALLOWED) + 1: (100 * tick, 0)})
    times = CpuTimes.now(stat)
    assert times.busy_s == pytest.approx(3 * len(ALLOWED)) and times.total_s == pytest.approx(8 * len(ALLOWED))


def test_cpu_times_are_unknown_without_proc_stat(tmp_path):
    assert CpuTimes.now(tmp_path / "missing") is None
    assert idle_cores(0.0, tmp_path / "missing") is None


def test_other_cores_are_the_busy_time_this_process_did_not_use():
    earlier = _times(busy_s=10.0, own_s=4.0, wall_s=100.0)
    assert _times(busy_s=16.0, own_s=6.0, wall_s=102.0).other_cores_since(earlier) == pytest.approx(2.0)
    assert _times(busy_s=12.0, own_s=6.0, wall_s=102.0).other_cores_since(earlier) == 0.0  # never negative


def test_idle_cores_over_a_sample(tmp_path, monkeypatch):
    tick = os.sysconf("SC_CLK_TCK")
    stat = _stat(tmp_path / "stat", {n: (tick, tick) for n in ALLOWED})
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)
    # over the 1 s sample, the first allowed core is fully busy and the others idle
    busy_core = ALLOWED[0]
    after = {n: (tick * (1 + (n == busy_core)), tick * (1 + (n != busy_core))) for n in ALLOWED}
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: _stat(stat, after))
    assert idle_cores(1.0, stat) == pytest.approx(len(ALLOWED) - 1)


@pytest.mark.parametrize(
    "cores, idle, expected", [(2, 1.97, 2), (2, 1.4, 1), (2, 0.1, 1), (1, 0.99, 1), (16, 15.2, 2), (8, None, 1)]
)
def test_auto_threads_take_the_idle_cores_up_to_the_cap(cores, idle, expected):
    assert auto_threads(cores, idle) == expected


@pytest.mark.parametrize("quota, expected", [("max 100000", len(ALLOWED)), ("50000 100000", 1), ("100000 100000", 1)])
def test_usable_cores_honour_a_cgroup_quota(tmp_path, quota, expected):
    (tmp_path / "cpu.max").write_text(quota + "\n")
    assert usable_cores(tmp_path / "cpu.max") == min(expected, len(ALLOWED))
    assert usable_cores(tmp_path / "missing") == len(ALLOWED)


def test_guard_drops_to_one_thread_for_good_once_others_want_the_cores(monkeypatch):
    # On 2 cores a 2-thread run leaves none free: others using more than half a core is contention.
    readings = iter(
        [
            _times(busy_s=0.0, own_s=0.0, wall_s=0.0),  # at construction
            _times(busy_s=8.3, own_s=8.0, wall_s=4.0),  # others used 0.075 cores: keep 2 threads
            _times(busy_s=20.3, own_s=12.0, wall_s=8.0),  # others used 2.0 cores: drop
        ]
    )
    monkeypatch.setattr(CpuTimes, "now", classmethod(lambda cls: next(readings)))
    guard = ContentionGuard(threads=2, cores=2)
    assert guard.check() is None
    assert guard.check() == (1, pytest.approx(2.0))
    assert guard.check() is None and guard.threads == 1  # no more readings needed: the drop is final


def test_guard_leaves_room_on_larger_machines(monkeypatch):
    readings = iter([_times(0.0, 0.0, 0.0), _times(busy_s=48.0, own_s=8.0, wall_s=4.0)])  # others: 10 cores
    monkeypatch.setattr(CpuTimes, "now", classmethod(lambda cls: next(readings)))
    assert ContentionGuard(threads=2, cores=16).check() is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_guard_sees_a_real_busy_process():
    before = CpuTimes.now()
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"]
    )
    busy.wait()
    assert CpuTimes.now().other_cores_since(before) > 0.5  # the child ran for most of the second, not this process


@pytest.mark.parametrize(
    "threads_key, environment, expected",
    [
        (None, None, (2, IDLE_CORES)),
        (None, "3", (3, "OMP_NUM_THREADS")),
        (None, "", (2, IDLE_CORES)),
        (2, "3", (2, "--threads")),
    ],
)
def test_thread_count_is_the_key_else_omp_num_threads_else_the_idle_cores(
    monkeypatch, threads_key, environment, expected
):
    monkeypatch.setattr(quick_start, "idle_cores", lambda: 1.9)
    monkeypatch.setattr(quick_start, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if environment is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", environment)
    assert cpu_threads({"threads": threads_key}) == expected
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        cpu_threads({"threads": 0})


@pytest.fixture
def restore_torch_threads():
    threads_before = torch.get_num_threads()
    yield
    torch.set_num_threads(threads_before)


@pytest.mark.parametrize("told", [False, True])
def test_a_contended_run_continues_on_one_thread_unless_told_a_count(
    tiny_config, monkeypatch, restore_torch_threads, told
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(quick_start, "idle_cores", lambda: 2.0)
    monkeypatch.setattr(quick_start, "usable_cores", lambda: 2)
    checks = iter([None, (1, 1.5)])  # epoch 0 uncontended; before epoch 1 another process took the cores
    monkeypatch.setattr(ContentionGuard, "check", lambda self: next(checks, None))
    config = {**tiny_config, "epochs": 3, "stopping_step": 5, "state": "WARNING", "threads": 2 if told else None}
    result = run("SASRec", "ml-tiny", config_dict=config)
    if told:
        assert result["threads"] == "2" and torch.get_num_threads() == 2
    else:
        assert result["threads"] == "2, then 1 from epoch 1" and torch.get_num_threads() == 1
        assert "continuing on 1 torch thread from epoch 1" in Path(result["log_file"]).read_text()
