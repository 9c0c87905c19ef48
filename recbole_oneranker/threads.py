"""How many torch threads a CPU run uses, and when it gives one back.

A run's torch threads wait for each other at every parallel operator. On idle cores two threads train this
package's models about 1.5x faster than one (ml-100k OneRanker: 4.0 s against 6.1 s an epoch on 2 cores); as soon
as another process wants one of those cores, the thread it displaces holds up every operator and the same epochs
take 35-166 s (issue 36). So, unless told otherwise, a run takes the cores that are idle when it starts
(:func:`auto_threads`, at most :data:`AUTO_MAX_THREADS`) and a :class:`ContentionGuard` drops it to one thread
for good when other processes start wanting those cores.

Both read Linux's ``/proc/stat``; where it is missing (macOS, Windows) a run keeps one thread.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AUTO_MAX_THREADS", "ContentionGuard", "CpuTimes", "auto_threads", "idle_cores", "usable_cores"]

# The most threads a run takes by itself: the largest count measured here (2 cores); pass --threads=N for more.
AUTO_MAX_THREADS = 2
# Other processes using more than this share of a core beyond the cores the run leaves free mean contention.
CONTENTION_MARGIN_CORES = 0.5
_PROC_STAT = Path("/proc/stat")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# /proc/stat columns: user nice system idle iowait irq softirq steal (guest time is already counted in user)
_IDLE_COLUMNS = (3, 4)
_COUNTED_COLUMNS = 8


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds of the cores this process may run on, and of this process itself.

    Attributes:
        busy_s: seconds those cores spent running anything (this process included).
        total_s: seconds they existed (busy + idle).
        own_s: seconds this process ran, all its threads together.
        wall_s: a monotonic clock, to turn differences into cores.
    """

    busy_s: float
    total_s: float
    own_s: float
    wall_s: float

    @classmethod
    def now(cls, stat: Path = _PROC_STAT) -> CpuTimes | None:
        """The current times, or None where ``stat`` cannot be read."""
        try:
            lines = stat.read_text().splitlines()
        except OSError:
            return None
        allowed = {f"cpu{index}" for index in _allowed_cpus()}
        busy = total = 0
        for line in lines:
            name, *columns = line.split()
            if name not in allowed:
                continue
            ticks = [int(value) for value in columns[:_COUNTED_COLUMNS]]
            idle = sum(ticks[column] for column in _IDLE_COLUMNS)
            busy += sum(ticks) - idle
            total += sum(ticks)
        if total == 0:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        return cls(busy / tick, total / tick, time.process_time(), time.monotonic())

    def other_cores_since(self, earlier: CpuTimes) -> float:
        """Cores' worth of CPU that other processes used between ``earlier`` and now (``self``)."""
        wall = self.wall_s - earlier.wall_s
        if wall <= 0:
            return 0.0
        others = (self.busy_s - earlier.busy_s) - (self.own_s - earlier.own_s)
        return max(others, 0.0) / wall


def _allowed_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where the platform cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def usable_cores(cgroup_cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota when one is set."""
    cores = len(_allowed_cpus())
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def idle_cores(sample_s: float = 0.3, stat: Path = _PROC_STAT) -> float | None:
    """Cores' worth of CPU no process used over the next ``sample_s`` seconds, or None where unknown."""
    before = CpuTimes.now(stat)
    if before is None:
        return None
    time.sleep(sample_s)
    after = CpuTimes.now(stat)
    if after is None or after.total_s <= before.total_s:
        return None
    cores = (after.total_s - before.total_s) / (after.wall_s - before.wall_s)
    return cores - after.other_cores_since(before)


def auto_threads(cores: int, idle: float | None) -> int:
    """Threads for a run that was not told: the idle cores (rounded), at least 1 and at most
    :data:`AUTO_MAX_THREADS` or ``cores``; 1 where idleness is unknown.

    >>> auto_threads(2, 1.97), auto_threads(2, 0.9), auto_threads(16, 15.0), auto_threads(2, None)
    (2, 1, 2, 1)
    """
    if idle is None:
        return 1
    return max(1, min(round(idle), cores, AUTO_MAX_THREADS))


class ContentionGuard:
    """Drops a run to one torch thread once other processes want the cores its threads use.

    Call :meth:`check` between epochs: it compares the CPU other processes used since the previous call with the
    cores the run leaves free, and when they wanted more (by :data:`CONTENTION_MARGIN_CORES`) it returns the
    single thread the run should continue on. The drop is for good: going back and forth would change the order
    floats are summed in at every switch.

    Args:
        threads: the threads the run started with.
        cores: :func:`usable_cores`.
    """

    def __init__(self, threads: int, cores: int) -> None:
        self.threads = threads
        self.cores = cores
        self.since = CpuTimes.now()

    def check(self) -> tuple[int, float] | None:
        """``(1, other_cores)`` when the run should drop to one thread now, else None."""
        if self.threads == 1 or self.since is None:
            return None
        now = CpuTimes.now()
        if now is None:
            return None
        others = now.other_cores_since(self.since)
        self.since = now
        if others <= self.cores - self.threads + CONTENTION_MARGIN_CORES:
            return None
        self.threads = 1
        return 1, others
