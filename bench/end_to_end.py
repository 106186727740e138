"""The end-to-end scenario: source commit → subscriber receive, per rate, on both transports.

For each transport (embedded, then Kafka) one pipeline, one server and the subscribers run while a
paced writer inserts new customers at each rate in turn (:mod:`bench.serving_e2e`). See
``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psycopg.conninfo import make_conninfo

from .report import Figure
from .scenario import Context, ScenarioResult
from .serving import TOKEN, create_database, drop_database, prepare_store
from .serving_e2e import EndToEndJob, Transport, measure_end_to_end

TARGET_P99_MS = 100.0
TARGET_RATE = 1_000.0
TRANSPORTS: tuple[Transport, ...] = ("embedded", "kafka")


@dataclass(frozen=True)
class EndToEndSizes:
    """How big an end-to-end run is.

    Attributes:
        profiles: Profiles stored before the measurements.
        rates: Source commits (new customers) per second, one measurement each.
        seconds: How long the writer writes at each rate.
        warmup_s: Rows committed in the first seconds of each rate are not counted.
        catch_up_s: After each rate, how long the store may take to catch up with the source.
        subscribers: Subscription streams (the target's 100).
        drain_s: After the store caught up, how long the fan-out has to deliver.
    """

    profiles: int
    rates: tuple[float, ...]
    seconds: float
    warmup_s: float
    catch_up_s: float
    subscribers: int
    drain_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> EndToEndSizes:
        """The full or the quick sizes."""
        if quick:
            return cls(
                profiles=2_000, rates=(100.0, 500.0, 1_000.0), seconds=1.5, warmup_s=0.5,
                catch_up_s=3.0, subscribers=100, drain_s=2.0,
            )
        return cls(
            profiles=10_000, rates=(100.0, 500.0, 1_000.0), seconds=60.0, warmup_s=2.0,
            catch_up_s=15.0, subscribers=100, drain_s=3.0,
        )


def run(ctx: Context, sizes: EndToEndSizes | None = None) -> ScenarioResult:
    """Preload a small store, then measure every rate through each transport."""
    sizes = sizes or EndToEndSizes.for_mode(ctx.quick)
    admin = make_conninfo(ctx.services.dsn, dbname="postgres")
    measured: dict[str, Any] = {}
    preloads: dict[str, Any] = {}
    # Each transport gets a database of its own, so that both start from the same state.
    for transport in TRANSPORTS:
        database = f"up_bench_{ctx.run_id}_e2e_{transport}"
        create_database(admin, database)
        try:
            store, preloads[transport] = prepare_store(
                ctx, make_conninfo(ctx.services.dsn, dbname=database), sizes.profiles,
                f"e2e_{transport}",
            )
            measured[transport] = measure_end_to_end(EndToEndJob(
                dsn=store.dsn, config=store.config, token=TOKEN, names=store.names,
                transport=transport, seed=ctx.seed, first_id=sizes.profiles + 1,
                rates=sizes.rates, seconds=sizes.seconds, warmup_s=sizes.warmup_s,
                catch_up_s=sizes.catch_up_s, drain_s=sizes.drain_s,
                subscribers=sizes.subscribers, slot=f"bench_{ctx.run_id}_e2e_{transport}",
            ))
        finally:
            drop_database(admin, database)
    result = ScenarioResult(details={"sizes": asdict(sizes), "preload": preloads, **measured})
    result.figures = figures(measured, sizes)
    result.notes = notes(measured, sizes)
    return result


def figures(measured: dict[str, Any], sizes: EndToEndSizes) -> list[Figure]:
    """p50/p95/p99 per transport and rate (the target on 1,000/s), then each process's peak RSS."""
    out: list[Figure] = []
    for transport, stats in measured.items():
        for rate, at_rate in stats["rates"].items():
            latency = at_rate["commit_to_receive"]
            complete = at_rate["deliveries"] == at_rate["deliveries_expected"]
            what = (
                f"source commit → subscriber, {transport}, {float(rate):,.0f}/s, "
                f"{sizes.subscribers} subscribers"
            )
            is_target = float(rate) == TARGET_RATE
            out.append(Figure(f"{what}: p50", latency["p50_ms"], "ms"))
            out.append(Figure(f"{what}: p95", latency["p95_ms"], "ms"))
            out.append(Figure(
                f"{what}: p99", latency["p99_ms"], "ms",
                target=f"≤ {TARGET_P99_MS:.0f} ms, all delivered" if is_target else None,
                met=latency["p99_ms"] <= TARGET_P99_MS and complete if is_target else None,
            ))
    for transport, stats in measured.items():
        for role, mib in stats["peak_rss_mib"].items():
            if mib is not None:
                out.append(Figure(f"peak RSS, {role} process ({transport} end to end)", mib, "MiB"))
    return out


def notes(measured: dict[str, Any], sizes: EndToEndSizes) -> list[str]:
    """What each pass wrote, how much was delivered, and how busy the host was."""
    out = [
        f"end to end: {sizes.profiles:,} profiles stored; new customers inserted one per "
        f"transaction for {sizes.seconds:g} s per rate (first {sizes.warmup_s:g} s not counted), "
        f"{sizes.subscribers} subscribers in 2 processes; a delivery missing at the end counts "
        "as infinitely late"
    ]
    for transport, stats in measured.items():
        parts = []
        for rate, m in stats["rates"].items():
            shares = m["host_cpu_percent"] or {}
            caught = (
                f"store caught up {m['catch_up_s']:.1f} s after the last commit"
                if m["store_caught_up"]
                else f"store still behind {m['catch_up_s']:.0f} s after the last commit"
            )
            parts.append(
                f"{float(rate):,.0f}/s: {m['rows']:,} inserts at {m['achieved_rate'] or 0:,.0f}/s, "
                f"{m['deliveries']:,} of {m['deliveries_expected']:,} deliveries, {caught}; host "
                f"{shares.get('idle', 0):.0f}% idle, {shares.get('steal', 0):.0f}% stolen"
            )
        out.append(
            f"end to end ({transport}), ready {stats['ready_s']:.0f} s after start, stream errors "
            f"{sum(stats['errors'].values())}: " + "; ".join(parts)
        )
    return out


__all__ = ["EndToEndSizes", "figures", "notes", "run"]
