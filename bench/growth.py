"""The growth scenario: how apply, reads and fan-out costs change as the store grows.

One database is grown in steps (full 10,000 → 100,000 → 1,000,000 profiles, written with ``COPY``
as the apply scenario preloads them). At each size, the same three short measurements run: the
embedded apply rate (:mod:`bench.apply_proc`), GetProfile at 16 in flight next to echo, and fan-out
to 100 subscribers (:mod:`bench.serving`). Each figure at a larger size is shown next to the same
figure at the smallest size, so the ratio is the growth. Then, on a database of its own, the cost
of a change as one profile's records pile up (:mod:`bench.profile_records`). See
``bench/README.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psycopg.conninfo import make_conninfo

from unified_profile.server.config import parse_service_config

from . import apply, apply_data, profile_records
from .apply_proc import EngineJob, run_engine
from .report import Figure
from .scenario import Context, ScenarioResult
from .serving import (
    ServingSizes,
    Store,
    create_database,
    drop_database,
    measure_fanout,
    measure_reads,
    prepare_store,
)

_CONCURRENCY = 16
_SUBSCRIBERS = 100


@dataclass(frozen=True)
class GrowthSizes:
    """How big a growth run is.

    Attributes:
        profiles: The store sizes measured, smallest first.
        changes: Change events of each apply workload.
        apply_cap_s: An apply run stops after the batch that passes this many seconds.
        read_seconds: The read window (echo, then GetProfile).
        fanout_seconds: How long the fan-out writer writes (10 changes/s).
        start_delay_s: Load generators are given this long to start before calling.
        settle_s: After the fan-out writer's last commit, how long deliveries may take.
        profile_records: Records of the one profile whose changes are timed, smallest first.
        record_changes: Changes timed at each of those sizes.
    """

    profiles: tuple[int, ...]
    changes: int
    apply_cap_s: float
    read_seconds: float
    fanout_seconds: float
    start_delay_s: float
    settle_s: float
    profile_records: tuple[int, ...]
    record_changes: int

    @classmethod
    def for_mode(cls, quick: bool) -> GrowthSizes:
        """The full or the quick sizes."""
        if quick:
            return cls(
                profiles=(2_000, 5_000), changes=2_000, apply_cap_s=4.0, read_seconds=1.0,
                fanout_seconds=4.5, start_delay_s=1.2, settle_s=1.0,
                profile_records=(2, 100), record_changes=20,
            )
        return cls(
            profiles=(10_000, 100_000, 1_000_000), changes=20_000, apply_cap_s=15.0,
            read_seconds=5.0, fanout_seconds=10.0, start_delay_s=2.0, settle_s=2.0,
            profile_records=(2, 100, 1_000), record_changes=50,
        )

    def serving(self, profiles: int) -> ServingSizes:
        """The serving measurements' sizes at one store size."""
        return ServingSizes(
            profiles=profiles, server_processes=(1,), concurrency=(_CONCURRENCY,),
            read_seconds=self.read_seconds, warmup_s=0.5, repeats=1,
            subscribers=(_SUBSCRIBERS,), fanout_rate=10.0, fanout_seconds=self.fanout_seconds,
            methods=("echo", "get"), start_delay_s=self.start_delay_s, settle_s=self.settle_s,
        )


def run(ctx: Context, sizes: GrowthSizes | None = None) -> ScenarioResult:
    """Grow the store step by step and measure apply, reads and fan-out at each size."""
    sizes = sizes or GrowthSizes.for_mode(ctx.quick)
    admin = make_conninfo(ctx.services.dsn, dbname="postgres")
    database = f"up_bench_{ctx.run_id}_growth"
    create_database(admin, database)
    steps: dict[str, Any] = {}
    try:
        dsn = make_conninfo(ctx.services.dsn, dbname=database)
        store, first_load = prepare_store(ctx, dsn, sizes.profiles[0], "growth")
        parsed = parse_service_config(store.config, "bench")
        preloader = apply_data.Preloader(ctx.seed, store.names.crm, parsed.rules)
        loaded = sizes.profiles[0]
        for index, profiles in enumerate(sizes.profiles):
            load = first_load
            if profiles > loaded:
                load = apply.preload(dsn, preloader, loaded + 1, profiles)
                loaded = profiles
            steps[str(profiles)] = _measure(ctx, store, sizes, index, profiles) | {
                "preload": load
            }
    finally:
        drop_database(admin, database)
    records = _measure_profile_records(ctx, admin, sizes)
    result = ScenarioResult(
        details={"sizes": asdict(sizes), "steps": steps, "profile_records": records}
    )
    result.figures = figures(steps) + profile_records.figures(records)
    result.notes = [
        f"growth: at each store size, embedded apply of {sizes.changes:,} events (capped at "
        f"{sizes.apply_cap_s:g} s), GetProfile at {_CONCURRENCY} in flight next to echo "
        f"({sizes.read_seconds:g} s windows, 1 server process), fan-out to {_SUBSCRIBERS} "
        f"subscribers at 10 changes/s for {sizes.fanout_seconds:g} s; each figure next to the "
        "same figure at the smallest size",
        "growth: one loyalty member linked to a CRM customer, its profile holding "
        f"{', '.join(f'{n:,}' for n in sizes.profile_records)} records in turn (the rest "
        f"points-ledger entries); at each size {sizes.record_changes} changes of the member's "
        "points, one per store transaction, applied in the bench process and timed with its "
        "CPU clock",
    ]
    return result


def _measure_profile_records(
    ctx: Context, admin: str, sizes: GrowthSizes
) -> dict[str, dict[str, Any]]:
    database = f"up_bench_{ctx.run_id}_records"
    create_database(admin, database)
    try:
        names = apply_data.SourceNames.for_run(ctx.run_id)
        dsn = make_conninfo(ctx.services.dsn, dbname=database)
        config = parse_service_config(
            apply_data.engine_config(
                dsn, ctx.services.bootstrap_servers, names,
                group_id=f"bench_{ctx.run_id}_records", offsets_topic=f"bench_{ctx.run_id}.records",
            ),
            "bench",
        )
        return profile_records.measure(
            dsn, config, names, sizes.profile_records, sizes.record_changes
        )
    finally:
        drop_database(admin, database)


def _measure(
    ctx: Context, store: Store, sizes: GrowthSizes, index: int, profiles: int
) -> dict[str, Any]:
    ids = range(1, profiles + 1)
    at_size = Store(
        store.dsn, store.config, store.names,
        [apply_data.profile_id_of(apply_data.customer_key(store.names.crm, i)) for i in ids],
        [str(i) for i in ids],
    )
    # One index per step: its own new ids, and positions above the earlier steps'.
    workload = apply_data.WorkloadSpec(index, sizes.changes, profiles, ctx.seed)
    engine = run_engine(
        EngineJob("embedded", store.config, store.names, workload, sizes.apply_cap_s),
        timeout=sizes.apply_cap_s + 600.0,
    )
    serving = sizes.serving(profiles)
    reads = measure_reads(at_size, serving)["1"]
    fanout = next(iter(measure_fanout(at_size, serving, ctx.seed, first_round=index).values()))
    return {
        "apply_per_s": engine.per_second,
        "apply_events": engine.events,
        "apply_capped": engine.capped,
        "echo_qps": reads["echo"][str(_CONCURRENCY)]["qps"],
        "get_qps": reads["get"][str(_CONCURRENCY)]["qps"],
        "get_p99_ms": reads["get"][str(_CONCURRENCY)]["p99_ms"],
        "echo_p99_ms": reads["echo"][str(_CONCURRENCY)]["p99_ms"],
        "fanout_p99_ms": fanout["commit_to_receive"]["p99_ms"],
        "fanout_complete": fanout["deliveries"] == fanout["deliveries_expected"],
        "server_peak_rss_mib": reads["server_peak_rss_mib"],
    }


_ROWS = (
    ("apply_per_s", "apply, embedded", "changes/s"),
    ("get_qps", f"GetProfile QPS, {_CONCURRENCY} in flight", "calls/s"),
    ("get_p99_ms", f"GetProfile p99, {_CONCURRENCY} in flight", "ms"),
    ("fanout_p99_ms", f"fan-out to {_SUBSCRIBERS} subscribers: store commit → receive p99", "ms"),
    ("server_peak_rss_mib", "peak RSS, server process (reads)", "MiB"),
)


def figures(steps: dict[str, Any]) -> list[Figure]:
    """One row per cost and size; from the second size on, next to the smallest size's value."""
    if not steps:
        return []
    smallest, first = next(iter(steps.items()))
    out: list[Figure] = []
    for key, label, unit in _ROWS:
        for profiles, step in steps.items():
            value = step[key]
            if value is None:
                continue
            base = first[key] if profiles != smallest else None
            out.append(Figure(
                f"growth: {label} at {int(profiles):,} profiles", value, unit,
                baseline=base,
                baseline_name=f"at {int(smallest):,} profiles" if base is not None else None,
            ))
    return out


__all__ = ["GrowthSizes", "figures", "run"]
