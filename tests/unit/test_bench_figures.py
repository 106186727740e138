"""The benchmark's pure bookkeeping: which deliveries count, how growth and targets are reported."""

from __future__ import annotations

import array
import math

from bench import end_to_end, growth, profile_records
from bench.apply_data import SourceNames
from bench.apply_proc import EngineResult, joined
from bench.services import store_sizing
from bench.serving_e2e import EndToEndJob, _ChangeTimes, _latencies, _Pass
from bench.serving_subs import Received
from bench.timing import backend_cpu_between
from bench.traffic_writer import WrittenPass


def _job(subscribers: int = 2) -> EndToEndJob:
    return EndToEndJob(
        dsn="", source_dsns={"crm": "", "loyalty": ""}, config={}, token="",
        names=SourceNames.for_run("t"), transport="embedded", seed=1, people=10, rates=(10.0,),
        seconds=1.0, warmup_s=0.2, catch_up_s=1.0, drain_s=1.0, subscribers=subscribers,
        slot="s",
    )


def test_a_missing_delivery_makes_the_tail_infinite_not_smaller() -> None:
    # Ten source commits at wall-clock 1000.0, 1000.1, …; the first 0.2 s (sequences 1 and 2)
    # are warm-up, sequence 11 was committed after the pass. Subscribers' clock runs 1000 s
    # behind the wall clock.
    committed_at = {n: 1000.0 + (n - 1) / 10 for n in range(1, 12)}
    written = WrittenPass(
        rows=10, transactions=10, activities=10, failed=0, first_commit=1000.0,
        last_commit=1000.9,
    )
    every_change = array.array("q", range(1, 12))
    on_time = array.array("d", [(n - 1) / 10 + 0.005 for n in range(1, 12)])
    complete = Received(every_change, on_time, {})
    one_short = Received(every_change[:-2], on_time[:-2], {})

    def run(*received: Received) -> _Pass:
        return _Pass(10.0, written, True, 0.0, None, list(received))

    # The store transaction that logged each change began 2 ms after its source commit and
    # committed 1 ms later.
    times = _ChangeTimes(
        source_commit=committed_at,
        store_began={n: at + 0.002 for n, at in committed_at.items()},
        store_committed={n: at + 0.003 for n, at in committed_at.items()},
    )
    full = _latencies(_job(), run(complete, complete), times, clock_offset=1000.0)
    assert full["changes"] == 10
    assert full["deliveries"] == full["deliveries_expected"] == 16
    assert math.isclose(full["commit_to_receive"]["p99_ms"], 5.0, abs_tol=1e-6)
    # Counted once per change (not per delivery), over the counted changes only.
    assert full["commit_to_store_transaction"]["count"] == 8
    assert math.isclose(full["commit_to_store_transaction"]["p99_ms"], 2.0, abs_tol=1e-6)
    assert full["store_transaction_to_commit"]["count"] == 8
    assert math.isclose(full["store_transaction_to_commit"]["p99_ms"], 1.0, abs_tol=1e-6)
    # The fan-out is counted per delivery.
    assert full["store_commit_to_receive"]["count"] == 16
    assert math.isclose(full["store_commit_to_receive"]["p99_ms"], 2.0, abs_tol=1e-6)

    missing = _latencies(_job(), run(complete, one_short), times, clock_offset=1000.0)
    assert missing["deliveries"] == 15
    assert missing["commit_to_receive"]["p99_ms"] == math.inf

    # A store without commit timestamps: no split at the commit, rather than a made-up one.
    untracked = _ChangeTimes(committed_at, times.store_began, {})
    plain = _latencies(_job(), run(complete, complete), untracked, clock_offset=1000.0)
    assert plain["store_transaction_to_commit"] is None
    assert plain["store_commit_to_receive"] is None


def test_the_end_to_end_target_is_judged_at_1000_per_second_only() -> None:
    def at(p99: float, delivered: int) -> dict[str, object]:
        latency = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": p99}
        return {"commit_to_receive": latency, "deliveries": delivered, "deliveries_expected": 10}

    measured = {
        "kafka": {
            "rates": {"100": at(500.0, 10), "1000": at(50.0, 9)},
            "peak_rss_mib": {"server": 120.0, "engine": None},
        }
    }
    sizes = end_to_end.EndToEndSizes.for_mode(quick=True)
    figures = {f.measure: f for f in end_to_end.figures(measured, sizes)}
    slow = figures["source commit → subscriber, kafka, 100/s, 100 subscribers: p99"]
    assert slow.met is None
    # Fast enough, but one delivery never came: missed.
    fast = figures["source commit → subscriber, kafka, 1,000/s, 100 subscribers: p99"]
    assert fast.met is False
    assert "peak RSS, server process (kafka end to end)" in figures
    assert not any("engine" in name for name in figures if name.startswith("peak RSS"))


def test_growth_figures_sit_next_to_the_smallest_store() -> None:
    def step(rate: float, fanout: float | None) -> dict[str, object]:
        return {
            "apply_per_s": rate, "get_qps": 1_000.0, "get_p99_ms": 5.0,
            "fanout_p99_ms": fanout, "server_peak_rss_mib": 100.0,
        }

    figures = growth.figures({"10000": step(400.0, 10.0), "1000000": step(300.0, None)})
    by_name = {f.measure: f for f in figures}
    small = by_name["growth: apply, embedded at 10,000 profiles"]
    large = by_name["growth: apply, embedded at 1,000,000 profiles"]
    assert small.baseline is None
    assert large.baseline == 400.0 and large.ratio == 0.75
    # A figure a step could not measure is left out rather than written as a number.
    assert "growth: fan-out to 100 subscribers: store commit → receive p99 at 1,000,000 profiles" \
        not in by_name


def test_a_change_to_a_larger_profile_sits_next_to_the_same_change_at_2_records() -> None:
    def result(cpu_us: float) -> dict[str, object]:
        return {"changes": 50, "cpu_us_per_change": cpu_us, "wall_ms_per_change": 1.0}

    figures = profile_records.figures({"2": result(3_000.0), "1000": result(33_000.0)})
    small, large = figures
    assert small.baseline is None and small.value == 3_000.0
    assert "1,000 records" in large.measure
    assert large.baseline == 3_000.0 and large.ratio == 11.0
    assert large.baseline_name == "the same change to a profile of 2 records"


def test_workers_are_timed_from_when_all_have_started_and_backends_counted_once() -> None:
    # Worker A starts alone at t=10 and applies 100 events before B's first batch at t=12;
    # the last commit is at t=16. Both read the same two PostgreSQL backends.
    a = EngineResult(
        events=400, cpu_s=3.0, batch_spans=[(10.0, 11.0, 100), (12.5, 14.0, 100),
                                            (14.0, 16.0, 200)],
        backends_open={1: 5.0, 2: 7.0}, backends_close={1: 9.0, 2: 8.0},
    )
    b = EngineResult(
        events=150, cpu_s=2.0, batch_spans=[(12.0, 13.0, 50), (13.0, 15.5, 100)],
        backends_open={1: 5.5, 2: 7.0}, backends_close={1: 8.5, 2: 9.0},
    )
    both = joined([a, b])
    assert both.seconds == 4.0  # from t=12 (both started) to t=16 (last commit)
    assert both.events == 450  # A's first batch, before B started, is left out
    assert both.per_second == 112.5
    assert both.cpu_s == 5.0
    assert both.postgres_cpu_s == (9.0 - 5.0) + (9.0 - 7.0)
    assert both.workers == 2


def test_a_worker_that_applied_nothing_does_not_hold_the_window_shut() -> None:
    a = EngineResult(events=100, batch_spans=[(1.0, 2.0, 100)])
    idle = EngineResult()
    both = joined([a, idle])
    assert (both.events, both.seconds, both.workers) == (100, 1.0, 1)


def test_backend_cpu_counts_backends_that_began_inside_the_window_whole() -> None:
    before = {1: 5.0, 2: 7.0}
    after = {1: 6.5, 2: 7.0, 3: 0.25}  # backend 3 connected during the window
    assert backend_cpu_between(before, after) == 1.75
    assert backend_cpu_between(None, after) is None  # unreadable: no figure, not zero


def test_end_to_end_notes_give_cpu_per_row_change_where_it_was_read() -> None:
    latency = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    rate = {
        "rows": 1_000, "transactions": 550, "achieved_rate": 999.0, "changes": 480,
        "deliveries": 10, "deliveries_expected": 10, "commit_to_receive": latency,
        "commit_to_store_transaction": latency, "store_caught_up": True, "catch_up_s": 0.5,
        "host_cpu_percent": None, "pipeline_cpu_us_per_row": 612.4, "store_cpu_us_per_row": None,
    }
    measured = {
        "embedded": {
            "rates": {"1000": rate}, "snapshot_s": 30.0, "ready_s": 31.0, "errors": {},
        }
    }
    (_, line) = end_to_end.notes(measured, end_to_end.EndToEndSizes.for_mode(quick=True))
    assert "CPU per row change: pipeline 612 µs, store PostgreSQL —" in line
    # Without commit timestamps the latency is split only where the store transaction began.
    assert "source commit → store transaction start p50 1 ms / p99 3 ms, store caught up" in line


def test_end_to_end_notes_split_the_latency_at_the_store_commit_when_known() -> None:
    def latency(p50: float, p99: float) -> dict[str, float]:
        return {"p50_ms": p50, "p95_ms": p99, "p99_ms": p99}

    rate = {
        "rows": 1_000, "transactions": 550, "achieved_rate": 999.0, "changes": 480,
        "deliveries": 10, "deliveries_expected": 10, "commit_to_receive": latency(60, 90),
        "commit_to_store_transaction": latency(15, 50),
        "store_transaction_to_commit": latency(18, 45),
        "store_commit_to_receive": latency(20, 52),
        "store_caught_up": True, "catch_up_s": 0.5, "host_cpu_percent": None,
    }
    measured = {
        "embedded": {
            "rates": {"500": rate}, "snapshot_s": 30.0, "ready_s": 31.0, "errors": {},
        }
    }
    (_, line) = end_to_end.notes(measured, end_to_end.EndToEndSizes.for_mode(quick=True))
    assert (
        "source commit → store transaction start p50 15 ms / p99 50 ms, "
        "→ store commit p50 18 ms / p99 45 ms, → subscriber p50 20 ms / p99 52 ms"
    ) in line


def test_the_bench_store_gets_a_quarter_of_memory_within_bounds() -> None:
    assert store_sizing(24 * 1024)["shared_buffers"] == "4096MB"  # capped
    assert store_sizing(8 * 1024)["shared_buffers"] == "2048MB"
    assert store_sizing(256)["shared_buffers"] == "128MB"  # never below PostgreSQL's default
    assert store_sizing(8 * 1024)["max_wal_size"] == "8GB"
