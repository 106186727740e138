"""Small numeric helpers: percentiles, reading an acknowledgement timeline, CPU and memory."""

from __future__ import annotations

import bisect
import math
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Percentiles:
    """A latency distribution in milliseconds.

    Attributes:
        count: How many samples.
        p50_ms, p95_ms, p99_ms, max_ms: Nearest-rank percentiles and the maximum.
    """

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize_seconds(latencies_s: Sequence[float]) -> Percentiles:
    """p50/p95/p99/max in milliseconds of latencies given in seconds."""
    ordered = sorted(latencies_s)
    return Percentiles(
        count=len(ordered),
        p50_ms=percentile(ordered, 50) * 1000,
        p95_ms=percentile(ordered, 95) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        max_ms=(ordered[-1] * 1000) if ordered else math.nan,
    )


def first_time_reaching(timeline: Sequence[tuple[float, int]], count: int) -> float | None:
    """The first time at which the acknowledged count was ``>= count`` (``None``: never).

    Args:
        timeline: ``(time, acknowledged)`` pairs with non-decreasing counts.
        count: The count to reach.
    """
    counts = [n for _, n in timeline]
    index = bisect.bisect_left(counts, count)
    return timeline[index][0] if index < len(timeline) else None


def times_reaching(timeline: Sequence[tuple[float, int]], counts: Sequence[int]) -> list[float]:
    """For each of ``counts``, the first time the acknowledged count reached it (``nan``: never)."""
    known = [n for _, n in timeline]
    out = []
    for count in counts:
        index = bisect.bisect_left(known, count)
        out.append(timeline[index][0] if index < len(timeline) else math.nan)
    return out


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    Linux: ``VmHWM`` from ``/proc/self/status``, the peak of the current program image.
    ``getrusage().ru_maxrss`` is not used there because it carries over across ``fork`` and
    ``exec``: a freshly spawned child would report its parent's size at the time of the fork.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_memory_mib(pid: int, field: str = "VmHWM") -> float | None:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of another process, in MiB (``None``: unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def host_cpu_times() -> tuple[int, ...] | None:
    """The machine's cumulative CPU times (``/proc/stat``), or ``None`` where unavailable."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    return tuple(int(v) for v in fields[1 : 1 + len(_CPU_FIELDS)])


def host_cpu_shares(
    before: tuple[int, ...] | None, after: tuple[int, ...] | None
) -> dict[str, float] | None:
    """Percent of all CPU time between two :func:`host_cpu_times` readings, per kind.

    ``steal`` is time the hypervisor gave to other guests: on a shared VM it explains runs
    where latency tails grow without the code changing.
    """
    if before is None or after is None:
        return None
    deltas = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(deltas)
    if total <= 0:
        return None
    return {name: round(100 * d / total, 1) for name, d in zip(_CPU_FIELDS, deltas, strict=True)}


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used (``None``: unreadable, e.g. it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(dsn: str) -> dict[int, float] | None:
    """CPU seconds of every other client backend of ``dsn``'s database, by backend pid.

    ``None`` when a backend's ``/proc`` entry cannot be read (the server runs elsewhere).
    """
    import psycopg  # here: every process the bench spawns imports this module

    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            int(pid)
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        ]
    out: dict[int, float] = {}
    for pid in pids:
        cpu = process_cpu_s(pid)
        if cpu is None:
            return None
        out[pid] = cpu
    return out


def backend_cpu_between(
    before: dict[int, float] | None, after: dict[int, float] | None
) -> float | None:
    """CPU the backends used between two :func:`backend_cpu` readings (new backends: all of it)."""
    if before is None or after is None:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
