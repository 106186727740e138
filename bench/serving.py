"""The serving scenarios: unary reads next to an echo RPC, change fan-out, commit → subscriber.

Everything runs against servers started as ``unified-profile serve`` runs them
(:mod:`bench.serving_proc`), in a database of the scenario's own holding N preloaded profiles
(written with ``COPY`` exactly as the apply scenario preloads them). Load generators and
subscribers are processes of their own (:mod:`bench.serving_load`, :mod:`bench.serving_subs`),
so no client shares a GIL with a server. See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import grpc
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from unified_profile.server.config import parse_service_config
from unified_profile.server.store import migrate
from unified_profile.v1 import profile_service_pb2 as pb
from unified_profile.v1 import profile_service_pb2_grpc

from . import apply, apply_data
from .report import Figure
from .scenario import Context, ScenarioResult
from .serving_load import LoadJob, LoadResult, Method, run_load
from .serving_proc import ServerGroup, postgres_cpu_s
from .serving_subs import (
    SubscribeJob,
    SubscriberGroup,
    WriterJob,
    stream_errors,
    write_changes,
)
from .timing import host_cpu_shares, host_cpu_times, process_memory_mib, summarize_seconds

READ_TARGET_QPS = 4_000
READ_TARGET_RATIO = 0.8
READ_TARGET_P99_MS = 5.0
FANOUT_TARGET_P99_MS = 100.0
TOKEN = "bench-serving-token-0123456789"
_LOAD_PROCESSES = 2
_CHANNELS_PER_PROCESS = 4
_METHOD_NAMES = {"echo": "echo (health Check)", "get": "GetProfile", "lookup": "LookupProfile"}
CACHED_READ_SET = 1_000
"""Profiles the cached-read figures read (all held by the server's read cache): the customers a
service desk or the tills have in hand, read again and again."""
_CACHED = "1 cached"
"""The cached-read figures' key beside the server process counts in the reads' results."""
CHURN_SHARE = 10
"""The churning-cache figures' cache holds 1/CHURN_SHARE of the store (10,000 of 100,000
profiles, the default size): uniform reads then mostly miss, and every miss is stored."""
_CHURN = "1 churning cache"
"""The churning-cache figures' key beside the others in the reads' results."""


@dataclass(frozen=True)
class ServingSizes:
    """How big a serving run is.

    Attributes:
        profiles: Profiles stored before the measurements.
        server_processes: Server process counts the reads are measured with.
        concurrency: Calls in flight the reads are measured at.
        read_seconds: Each read measurement's window (after ``warmup_s``).
        warmup_s: Calls made before each window.
        repeats: How often each read measurement is repeated (the median QPS is reported).
        subscribers: Subscriber counts of the fan-out measurement.
        fanout_rate: Store commits (one change each) per second during fan-out.
        fanout_seconds: How long the writer writes (the first ``warmup_s`` not counted).
        methods: The unary methods measured (``echo`` is the baseline of the others).
        start_delay_s: Load generators are given this long to start before calling.
        settle_s: After the fan-out writer's last commit, how long deliveries may take.
    """

    profiles: int
    server_processes: tuple[int, ...]
    concurrency: tuple[int, ...]
    read_seconds: float
    warmup_s: float
    repeats: int
    subscribers: tuple[int, ...]
    fanout_rate: float
    fanout_seconds: float
    methods: tuple[Method, ...] = ("echo", "get", "lookup")
    start_delay_s: float = 2.0
    settle_s: float = 2.0

    @classmethod
    def for_mode(cls, quick: bool) -> ServingSizes:
        """The full or the quick sizes."""
        if quick:
            return cls(
                profiles=5_000, server_processes=(1,), concurrency=(1, 16, 64),
                read_seconds=1.0, warmup_s=0.5, repeats=1, subscribers=(10, 100, 1_000),
                # Counting starts 2.5 s in (warm-up + 2 s): 2 s of 10 changes/s are counted.
                fanout_rate=10.0, fanout_seconds=4.5, start_delay_s=1.2, settle_s=1.0,
            )
        return cls(
            profiles=100_000, server_processes=(1, 2), concurrency=(1, 16, 64),
            read_seconds=6.0, warmup_s=1.0, repeats=2, subscribers=(10, 100, 1_000),
            fanout_rate=10.0, fanout_seconds=20.0,
        )


@dataclass(frozen=True)
class Store:
    """The scenario's database and the service config (as parsed TOML) serving it."""

    dsn: str
    config: dict[str, Any]
    names: apply_data.SourceNames
    profile_ids: list[str]
    crm_ids: list[str]


def run(ctx: Context, sizes: ServingSizes | None = None) -> ScenarioResult:
    """Preload, then measure reads and fan-out."""
    sizes = sizes or ServingSizes.for_mode(ctx.quick)
    admin = make_conninfo(ctx.services.dsn, dbname="postgres")
    database = f"up_bench_{ctx.run_id}_serving"
    create_database(admin, database)
    try:
        store, preload = prepare_store(
            ctx, make_conninfo(ctx.services.dsn, dbname=database), sizes.profiles, "serving"
        )
        reads = (
            measure_reads(store, sizes)
            | measure_cached_reads(store, sizes)
            | measure_churning_reads(store, sizes)
        )
        fanout = measure_fanout(store, sizes, ctx.seed)
    finally:
        drop_database(admin, database)
    result = ScenarioResult(details={
        "sizes": asdict(sizes), "preload": preload, "reads": reads, "fanout": fanout,
    })
    result.figures = (
        _read_figures(reads)
        + _churn_figures(reads)
        + _fanout_figures(fanout)
        + _rss_figures(reads, fanout)
    )
    result.notes = _notes(sizes, reads, fanout)
    return result


def prepare_store(ctx: Context, dsn: str, profiles: int, tag: str) -> tuple[Store, dict[str, Any]]:
    """Migrate ``dsn``, preload ``profiles`` profiles; the store and the serving config."""
    names = apply_data.SourceNames.for_run(ctx.run_id)
    config = apply_data.engine_config(
        dsn, ctx.services.bootstrap_servers, names,
        group_id=f"bench_{ctx.run_id}_{tag}", offsets_topic=f"bench_{ctx.run_id}_{tag}.offsets",
    )
    config["grpc"] = {
        "tokens": [
            {"name": "bench", "token": TOKEN, "scopes": ["profiles.read", "profiles.subscribe"]}
        ],
        # Every read goes to the store: uniform reads over the whole store are what a cache
        # cannot hide (the cached figures are measured apart, see measure_cached_reads).
        "read_cache_profiles": 0,
    }
    parsed = parse_service_config(config, "bench")
    migrate.upgrade(dsn)
    preloader = apply_data.Preloader(ctx.seed, names.crm, parsed.rules)
    preload = apply.preload(dsn, preloader, 1, profiles)
    ids = range(1, profiles + 1)
    profile_ids = [apply_data.profile_id_of(apply_data.customer_key(names.crm, i)) for i in ids]
    return Store(dsn, config, names, profile_ids, [str(i) for i in ids]), preload


# --- reads -----------------------------------------------------------------------------------


def measure_reads(store: Store, sizes: ServingSizes) -> dict[str, Any]:
    """QPS and latency of echo, GetProfile and LookupProfile, per server processes and concurrency.

    Keys are drawn uniformly from every stored profile, and the servers run without a read
    cache (``store.config``): each read goes to the store.
    """
    return {
        str(processes): _measure_reads_on(store, sizes, processes)
        for processes in sizes.server_processes
    }


def measure_cached_reads(store: Store, sizes: ServingSizes) -> dict[str, Any]:
    """The same on one server process with its read cache, reading :data:`CACHED_READ_SET`
    profiles, each read once before the measurements (so that every read is a cache hit)."""
    hot = min(CACHED_READ_SET, len(store.profile_ids))
    config = store.config | {"grpc": store.config["grpc"] | {"read_cache_profiles": hot}}
    cached = replace(
        store, config=config, profile_ids=store.profile_ids[:hot], crm_ids=store.crm_ids[:hot]
    )
    return {_CACHED: _measure_reads_on(cached, sizes, 1, warm=True)}


def measure_churning_reads(store: Store, sizes: ServingSizes) -> dict[str, Any]:
    """The same on one server process whose read cache holds a tenth of the store, keys drawn
    uniformly from every profile: what the cache costs where it cannot help (each miss is read
    from the store, then stored in the cache, evicting another answer)."""
    held = max(1, len(store.profile_ids) // CHURN_SHARE)
    config = store.config | {"grpc": store.config["grpc"] | {"read_cache_profiles": held}}
    return {_CHURN: _measure_reads_on(replace(store, config=config), sizes, 1)}


def _measure_reads_on(
    store: Store, sizes: ServingSizes, processes: int, warm: bool = False
) -> dict[str, Any]:
    """The three methods one after the other for each concurrency, repeated ``sizes.repeats``
    times, so that the echo baseline sees the same machine as the reads."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with ServerGroup(store.config, processes) as servers:
        _check_answers(servers.target, store)
        if warm:
            _read_each_once(servers.target, store)
            _check_answers(servers.target, store)  # now answered by the cache
        for repeat in range(sizes.repeats):
            for concurrency in sizes.concurrency:
                for method in sizes.methods:
                    measured = _measure(servers, store, method, concurrency, sizes, repeat)
                    runs.setdefault(method, {}).setdefault(concurrency, []).append(measured)
        peak = max((p for p in map(process_memory_mib, servers.pids) if p), default=None)
    return {
        method: {str(c): _combine(rs) for c, rs in by_c.items()}
        for method, by_c in runs.items()
    } | {"server_peak_rss_mib": peak}


def _read_each_once(target: str, store: Store) -> None:
    """GetProfile every profile id and LookupProfile every CRM id of ``store`` once."""
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(target) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        for profile_id in store.profile_ids:
            stub.GetProfile(pb.GetProfileRequest(profile_id=profile_id), metadata=metadata)
        for crm_id in store.crm_ids:
            stub.LookupProfile(
                pb.LookupProfileRequest(identifier_type="crm_id", value=crm_id),
                metadata=metadata,
            )


def _measure(
    servers: ServerGroup, store: Store, method: Method, concurrency: int, sizes: ServingSizes,
    repeat: int,
) -> dict[str, Any]:
    processes = 1 if concurrency == 1 else _LOAD_PROCESSES
    per_process = concurrency // processes
    keys = store.crm_ids if method == "lookup" else store.profile_ids
    # The children's start-up (spawn + imports) fits in the delay.
    start_at = time.monotonic() + sizes.start_delay_s
    jobs = [
        LoadJob(
            target=servers.target, method=method, keys=keys if method != "echo" else ["-"],
            concurrency=per_process, channels=min(_CHANNELS_PER_PROCESS, per_process),
            token=TOKEN, start_at=start_at, warmup_s=sizes.warmup_s,
            duration_s=sizes.read_seconds, seed=1_000 * repeat + i,
        )
        for i in range(processes)
    ]
    begin = start_at + sizes.warmup_s
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        window = _WindowSampler(servers, conn, begin, begin + sizes.read_seconds)
        results = run_load(jobs, timeout=60.0 + sizes.warmup_s + sizes.read_seconds)
        window.join()
    calls = sum(r.calls for r in results)
    latency = summarize_seconds([x for r in results for x in r.latencies_s])

    def per_call(seconds: float | None) -> float | None:
        return seconds / calls * 1e6 if calls and seconds is not None else None

    return {
        "qps": calls / sizes.read_seconds,
        "calls": calls,
        "errors": _merge_errors(results),
        "p50_ms": latency.p50_ms,
        "p99_ms": latency.p99_ms,
        "max_ms": latency.max_ms,
        # CPU inside the window per call: where the two cores went.
        "server_cpu_us_per_call": per_call(window.delta("server")),
        "postgres_cpu_us_per_call": per_call(window.delta("postgres")),
        "load_cpu_us_per_call": per_call(sum(r.cpu_s for r in results)),
        "host_cpu_percent": host_cpu_shares(window.host[0], window.host[1])
        if len(window.host) == 2 else None,
    }


class _WindowSampler:
    """Samples server, PostgreSQL and host CPU at a window's start and end (timer threads)."""

    def __init__(self, servers: ServerGroup, conn: Any, begin: float, end: float) -> None:
        self._servers = servers
        self._conn = conn
        self.host: list[Any] = []
        self._values: dict[str, list[float | None]] = {"server": [], "postgres": []}
        self._timers = [
            threading.Timer(max(0.0, at - time.monotonic()), self._sample) for at in (begin, end)
        ]
        for timer in self._timers:
            timer.start()

    def _sample(self) -> None:
        self.host.append(host_cpu_times())
        self._values["server"].append(self._servers.cpu_s())
        self._values["postgres"].append(postgres_cpu_s(self._conn))

    def join(self) -> None:
        for timer in self._timers:
            timer.join()

    def delta(self, what: str) -> float | None:
        values = self._values[what]
        if len(values) != 2 or values[0] is None or values[1] is None:
            return None
        return values[1] - values[0]


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median QPS stands for the measurement; every run is kept."""
    ordered = sorted(runs, key=lambda r: r["qps"])
    median = ordered[(len(ordered) - 1) // 2]
    return {**median, "qps_runs": [r["qps"] for r in runs],
            "qps_median": statistics.median(r["qps"] for r in runs)}


def _merge_errors(results: list[LoadResult]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for result in results:
        for name, count in result.errors.items():
            merged[name] = merged.get(name, 0) + count
    return merged


def _check_answers(target: str, store: Store) -> None:
    """The load generators do not parse responses: check here that the reads answer right."""
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(target) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        for index in (0, len(store.profile_ids) - 1):
            got = stub.GetProfile(
                pb.GetProfileRequest(profile_id=store.profile_ids[index]), metadata=metadata,
                timeout=10,
            )
            found = stub.LookupProfile(
                pb.LookupProfileRequest(identifier_type="crm_id", value=store.crm_ids[index]),
                metadata=metadata, timeout=10,
            )
            if not (got.profile.profile_id == found.profile.profile_id
                    == store.profile_ids[index]) or not got.profile.person.given_name:
                raise RuntimeError(f"wrong answer for profile {store.profile_ids[index]}")


def _read_figures(reads: dict[str, Any]) -> list[Figure]:
    figures: list[Figure] = []
    for processes, by_method in reads.items():
        where = _where(processes)
        if "echo" not in by_method:
            continue
        echo = by_method["echo"]
        for method in ("get", "lookup"):
            name = _METHOD_NAMES[method]
            for concurrency, measured in by_method.get(method, {}).items():
                baseline = echo[concurrency]
                ratio = measured["qps"] / baseline["qps"] if baseline["qps"] else 0.0
                high = concurrency == "64"
                target = f"≥ {READ_TARGET_RATIO} x echo" + (
                    f" and ≥ {READ_TARGET_QPS:,}/s" if high else ""
                )
                met = ratio >= READ_TARGET_RATIO and (
                    not high or measured["qps"] >= READ_TARGET_QPS
                )
                figures.append(Figure(
                    f"{name} QPS, {concurrency} in flight, {where}", measured["qps"], "calls/s",
                    baseline=baseline["qps"], baseline_name="echo, same server and load",
                    target=target, met=met,
                ))
                p99_target = concurrency in ("1", "16")
                figures.append(Figure(
                    f"{name} p99, {concurrency} in flight, {where}", measured["p99_ms"], "ms",
                    baseline=baseline["p99_ms"], baseline_name="echo p99",
                    target=f"≤ {READ_TARGET_P99_MS:.0f} ms" if p99_target else None,
                    met=measured["p99_ms"] <= READ_TARGET_P99_MS if p99_target else None,
                ))
    return figures


def _churn_figures(reads: dict[str, Any]) -> list[Figure]:
    """A churning cache's reads next to the same reads with no cache (same keys, same run)."""
    churn, plain = reads.get(_CHURN), reads.get("1")
    if churn is None or plain is None:
        return []
    return [
        Figure(
            f"read cache's cost: {_METHOD_NAMES[method]} QPS, {concurrency} in flight, "
            f"{_where(_CHURN)}",
            measured["qps"], "calls/s",
            baseline=plain[method][concurrency]["qps"],
            baseline_name="no read cache, 1 server process, same keys",
        )
        for method in ("get", "lookup")
        for concurrency, measured in churn.get(method, {}).items()
        if concurrency in plain.get(method, {})
    ]


# --- fan-out ---------------------------------------------------------------------------------


def measure_fanout(
    store: Store, sizes: ServingSizes, seed: int, first_round: int = 0
) -> dict[str, Any]:
    """Deliveries/s and store commit → subscriber latency for each subscriber count.

    ``first_round``: a caller measuring the same store again passes the number of runs already
    made, so that this run's record versions are above the earlier ones' (else nothing changes).
    """
    out: dict[str, Any] = {}
    version_base = 10**15  # above every preloaded version (µs timestamps ~1.7e15)
    runs = [(p, s) for p in sizes.server_processes for s in sizes.subscribers]
    for round_, (processes, subscribers) in enumerate(runs, start=first_round):
        with ServerGroup(store.config, processes) as servers:
            per_process = -(-subscribers // _LOAD_PROCESSES)
            group = SubscriberGroup([
                SubscribeJob(servers.target, TOKEN, min(per_process, subscribers - i * per_process))
                for i in range(_LOAD_PROCESSES) if subscribers - i * per_process > 0
            ])
            try:
                rss_before = _rss_mib(servers.pids)
                group.start()
                # Every stream is live (has had a heartbeat): what the server holds for them.
                rss_live = _rss_mib(servers.pids)
                changes = round(sizes.fanout_rate * sizes.fanout_seconds)
                cpu_before, server_cpu_before = host_cpu_times(), servers.cpu_s()
                written = write_changes(
                    WriterJob(
                        config=store.config, source=store.names.crm, seed=seed,
                        customers=len(store.profile_ids), rate=sizes.fanout_rate,
                        changes=changes, first_version=version_base * (round_ + 2),
                    ),
                    timeout=120.0 + sizes.fanout_seconds,
                )
                time.sleep(sizes.settle_s)  # the last changes reach every subscriber
                cpu_after, server_cpu_after = host_cpu_times(), servers.cpu_s()
                peak = max((p for p in map(process_memory_mib, servers.pids) if p), default=None)
                received = group.stop()
            finally:
                group.kill()
        out[f"{processes}/{subscribers}"] = _delivery_stats(
            written.sequences, written.times, received, subscribers, sizes.warmup_s + 2.0,
            sizes.fanout_rate,
        ) | {
            "server_processes": processes,
            "server_cpu_s": server_cpu_after - server_cpu_before,
            "server_rss_before_mib": rss_before,
            "server_rss_live_mib": rss_live,
            "mib_per_subscriber": (rss_live - rss_before) / subscribers,
            "server_peak_rss_mib": peak,
            "host_cpu_percent": host_cpu_shares(cpu_before, cpu_after),
        }
    return out


def _rss_mib(pids: list[int]) -> float:
    """The current RSS of the server processes together."""
    return sum(process_memory_mib(pid, "VmRSS") or 0.0 for pid in pids)


def _delivery_stats(
    sequences: Any, times: Any, received: Any, subscribers: int, skip_s: float, rate: float,
) -> dict[str, Any]:
    """Latency of every delivery of a change committed after the first ``skip_s`` seconds."""
    committed = dict(zip(sequences, times, strict=True))
    first = sequences[min(len(sequences) - 1, round(skip_s * rate))] if sequences else 0
    window = [s for s in sequences if s >= first]
    latencies: list[float] = []
    delivered = 0
    last_receive = 0.0
    for part in received:
        for sequence, at in zip(part.sequences, part.times, strict=True):
            if sequence in committed and sequence >= first:
                delivered += 1
                latencies.append(at - committed[sequence])
                last_receive = max(last_receive, at)
    expected = len(window) * subscribers
    span = (committed[window[-1]] - committed[window[0]]) if len(window) > 1 else 0.0
    # A delivery that never came counts as infinitely late: p99 is then "inf", not a figure over
    # the deliveries that happened to make it.
    latency = summarize_seconds(latencies + [math.inf] * max(0, expected - delivered))
    return {
        "subscribers": subscribers,
        "changes_counted": len(window),
        "deliveries": delivered,
        "deliveries_expected": expected,
        # One change counted has no rate (a quick run too short to count more).
        "deliveries_per_s": delivered / span if span else None,
        "commit_to_receive": asdict(latency),
        "errors": stream_errors(received),
    }


def _fanout_figures(fanout: dict[str, Any]) -> list[Figure]:
    figures: list[Figure] = []
    for stats in fanout.values():
        latency = stats["commit_to_receive"]
        complete = stats["deliveries"] == stats["deliveries_expected"]
        processes = stats["server_processes"]
        what = (
            f"fan-out to {stats['subscribers']:,} subscribers, {processes} server "
            f"process{'es' if processes != 1 else ''}"
        )
        if stats["deliveries_per_s"] is not None:
            figures.append(
                Figure(f"{what}: deliveries/s", stats["deliveries_per_s"], "deliveries/s")
            )
        figures.append(Figure(f"{what}: store commit → receive p50", latency["p50_ms"], "ms"))
        figures.append(Figure(
            f"{what}: store commit → receive p99", latency["p99_ms"], "ms",
            target=f"≤ {FANOUT_TARGET_P99_MS:.0f} ms, all delivered",
            met=latency["p99_ms"] <= FANOUT_TARGET_P99_MS and complete,
        ))
    return figures


def _rss_figures(reads: dict[str, Any], fanout: dict[str, Any]) -> list[Figure]:
    figures: list[Figure] = []
    for stats in fanout.values():
        if stats["server_processes"] != 1 or stats.get("mib_per_subscriber") is None:
            continue
        figures.append(Figure(
            f"memory per subscriber, {stats['subscribers']:,} subscribers "
            "(server RSS growth ÷ subscribers)",
            stats["mib_per_subscriber"] * 1024, "KiB",
        ))
    peaks = [reads.get("1", {}).get("server_peak_rss_mib")]
    peaks += [s["server_peak_rss_mib"] for s in fanout.values() if s["server_processes"] == 1]
    known = [p for p in peaks if p is not None]
    if known:
        figures.append(Figure("peak RSS, server process (reads and fan-out)", max(known), "MiB"))
    return figures


# --- notes and helpers -----------------------------------------------------------------------


def _notes(sizes: ServingSizes, reads: dict[str, Any], fanout: dict[str, Any]) -> list[str]:
    notes = [
        f"serving: {sizes.profiles:,} profiles stored; echo = grpc.health.v1.Health/Check on the "
        "same server (no store access, no token check); reads draw uniformly from every profile "
        f"with no read cache, except the read-cache figures: {CACHED_READ_SET:,} profiles, each "
        "read once before the windows (every read a hit), and the churning-cache figures: a "
        f"cache holding 1/{CHURN_SHARE} of the profiles, keys drawn from all of them; load from "
        f"{_LOAD_PROCESSES} generator processes (1 at 1 in flight), closed loop, "
        f"{sizes.read_seconds:g} s windows x {sizes.repeats}, median QPS reported",
    ]
    for processes, by_method in reads.items():
        parts = []
        for method in ("echo", "get", "lookup"):
            for concurrency, m in by_method.get(method, {}).items():
                parts.append(
                    f"{_METHOD_NAMES[method]}@{concurrency} p50 {m['p50_ms']:.2f} ms, CPU µs/call "
                    f"server {m['server_cpu_us_per_call'] or 0:.0f} + PostgreSQL "
                    f"{m['postgres_cpu_us_per_call'] or 0:.0f} + clients "
                    f"{m['load_cpu_us_per_call'] or 0:.0f}"
                )
        notes.append(f"reads, {_where(processes)}: " + "; ".join(parts))
    for stats in fanout.values():
        shares = stats["host_cpu_percent"] or {}
        notes.append(
            f"fan-out to {stats['subscribers']} subscribers ({stats['server_processes']} server "
            f"process(es)), {sizes.fanout_rate:g} changes/s: {stats['deliveries']:,} of "
            f"{stats['deliveries_expected']:,} deliveries counted, stream errors "
            f"{stats['errors'] or 0}, server CPU {stats['server_cpu_s']:.1f} s; host "
            f"{shares.get('idle', 0):.0f}% idle, {shares.get('steal', 0):.0f}% stolen"
        )
    return notes


def _where(processes: str) -> str:
    """How a reads' key reads in a figure's name."""
    if processes == _CACHED:
        return f"1 server process, read cache, {CACHED_READ_SET:,} profiles read"
    if processes == _CHURN:
        return f"1 server process, read cache holding 1/{CHURN_SHARE} of the profiles read"
    return f"{processes} server process{'es' if processes != '1' else ''}"


def create_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


__all__ = ["ServingSizes", "run"]
