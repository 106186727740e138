"""The end-to-end scenario: source commit → subscriber receive, per rate, on both transports.

For each transport (embedded, then Kafka) the demo's CRM and loyalty databases are seeded with its
generated population; one pipeline snapshots them, then one server and the subscribers run while
the demo's customer traffic is written at each rate in turn (:mod:`bench.serving_e2e`). See
``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psycopg.conninfo import make_conninfo

from . import apply_data
from .report import Figure
from .scenario import Context, ScenarioResult
from .serving import TOKEN, create_database, drop_database
from .serving_e2e import EndToEndJob, Transport, measure_end_to_end

TARGET_P99_MS = 100.0
TARGET_RATE = 1_000.0
TRANSPORTS: tuple[Transport, ...] = ("embedded", "kafka")


@dataclass(frozen=True)
class EndToEndSizes:
    """How big an end-to-end run is.

    Attributes:
        people: The demo population seeded in the sources (and snapshotted) before the
            measurements.
        rates: Source row changes per second, one measurement each.
        seconds: How long the writer writes at each rate.
        warmup_s: Rows committed in the first seconds of each rate are not counted.
        catch_up_s: After each rate, how long the store may take to catch up with the source.
        subscribers: Subscription streams (the target's 100).
        drain_s: After the store caught up, how long the fan-out has to deliver.
    """

    people: int
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
                people=500, rates=(100.0, 500.0, 1_000.0), seconds=1.0, warmup_s=0.3,
                catch_up_s=3.0, subscribers=100, drain_s=1.0,
            )
        return cls(
            people=10_000, rates=(100.0, 500.0, 1_000.0), seconds=60.0, warmup_s=2.0,
            catch_up_s=15.0, subscribers=100, drain_s=3.0,
        )


def run(ctx: Context, sizes: EndToEndSizes | None = None) -> ScenarioResult:
    """Seed the demo's sources, then measure every rate through each transport."""
    sizes = sizes or EndToEndSizes.for_mode(ctx.quick)
    admin = make_conninfo(ctx.services.dsn, dbname="postgres")
    measured: dict[str, Any] = {}
    # Each transport gets databases of its own, so that both start from the same state.
    for transport in TRANSPORTS:
        prefix = f"up_bench_{ctx.run_id}_e2e_{transport}"
        databases = {role: f"{prefix}_{role}" for role in ("store", "crm", "loyalty")}
        for database in databases.values():
            create_database(admin, database)
        try:
            dsns = {
                role: make_conninfo(ctx.services.dsn, dbname=database)
                for role, database in databases.items()
            }
            measured[transport] = measure_end_to_end(_job(ctx, sizes, transport, dsns))
        finally:
            for database in databases.values():
                drop_database(admin, database)
    result = ScenarioResult(details={"sizes": asdict(sizes), **measured})
    result.figures = figures(measured, sizes)
    result.notes = notes(measured, sizes)
    return result


def _job(
    ctx: Context, sizes: EndToEndSizes, transport: Transport, dsns: dict[str, str]
) -> EndToEndJob:
    """Seed the sources as ``make demo`` does, migrate the store, and describe the job."""
    from unified_profile.server.demo import generate_population
    from unified_profile.server.demo.seeding import load_example, load_population
    from unified_profile.server.store import migrate

    load_example(dsns["crm"], dsns["loyalty"])
    load_population(dsns["crm"], dsns["loyalty"], generate_population(sizes.people, ctx.seed))
    migrate.upgrade(dsns["store"])
    names = apply_data.SourceNames.for_run(ctx.run_id)
    tag = f"bench_{ctx.run_id}_e2e_{transport}"
    config = apply_data.engine_config(
        dsns["store"], ctx.services.bootstrap_servers, names, group_id=tag,
        offsets_topic=f"{tag}.offsets",
        source_dsns={"crm": dsns["crm"], "loyalty": dsns["loyalty"]},
    )
    config["grpc"] = {
        "tokens": [{"name": "bench", "token": TOKEN, "scopes": ["profiles.subscribe"]}],
    }
    return EndToEndJob(
        dsn=dsns["store"], source_dsns={"crm": dsns["crm"], "loyalty": dsns["loyalty"]},
        config=config, token=TOKEN, names=names, transport=transport, seed=ctx.seed,
        people=sizes.people, rates=sizes.rates, seconds=sizes.seconds,
        warmup_s=sizes.warmup_s, catch_up_s=sizes.catch_up_s, drain_s=sizes.drain_s,
        subscribers=sizes.subscribers, slot=tag,
    )


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
        f"end to end: the demo's sources seeded with {sizes.people:,} people and snapshotted; "
        f"the demo's customer traffic written for {sizes.seconds:g} s per rate of source row "
        f"changes (first {sizes.warmup_s:g} s not counted), {sizes.subscribers} subscribers in "
        "2 processes; a delivery missing at the end counts as infinitely late"
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
                f"{float(rate):,.0f}/s: {m['rows']:,} row changes in {m['transactions']:,} "
                f"transactions at {m['achieved_rate'] or 0:,.0f}/s, {m['changes']:,} profile "
                f"changes, {m['deliveries']:,} of {m['deliveries_expected']:,} deliveries, "
                f"{_latency_parts(m)}, {caught}; CPU per row change: pipeline "
                f"{_us(m.get('pipeline_cpu_us_per_row'))}, store PostgreSQL "
                f"{_us(m.get('store_cpu_us_per_row'))}; host "
                f"{shares.get('idle', 0):.0f}% idle, {shares.get('steal', 0):.0f}% stolen"
            )
        out.append(
            f"end to end ({transport}), snapshot {stats['snapshot_s']:.0f} s, ready "
            f"{stats['ready_s']:.0f} s after start, stream errors "
            f"{sum(stats['errors'].values())}: " + "; ".join(parts)
        )
    return out


# The parts of source commit → subscriber, in order (absent parts are left out).
_LATENCY_PARTS = (
    ("commit_to_store_transaction", "source commit → store transaction start"),
    ("store_transaction_to_commit", "→ store commit"),
    ("store_commit_to_receive", "→ subscriber"),
)


def _latency_parts(m: dict[str, Any]) -> str:
    """p50 / p99 of each part of the latency the pass's JSON has."""
    return ", ".join(
        f"{label} p50 {_ms(part.get('p50_ms'))} / p99 {_ms(part.get('p99_ms'))}"
        for key, label in _LATENCY_PARTS
        if (part := m.get(key))
    )


def _ms(milliseconds: float | None) -> str:
    return "—" if milliseconds is None else f"{milliseconds:,.0f} ms"


def _us(microseconds: float | None) -> str:
    return "—" if microseconds is None else f"{microseconds:,.0f} µs"


__all__ = ["EndToEndSizes", "figures", "notes", "run"]
