"""The capture scenarios: throughput and latency of PostgreSQL commit → Kafka acknowledgement.

Each scenario captures its own table into its own topic with a fresh connector process
(``snapshot = "never"``: it only streams) and compares what it measured with baselines measured in
the same run on the same services. See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from unified_profile.cdc.config import KafkaConfig, parse_capture_config
from unified_profile.cdc.kafka import ensure_topics

from . import workload
from .baselines import Rate, raw_decode, raw_produce
from .connector_proc import ConnectorProcess, ConnectorResult
from .report import Figure
from .scenario import Context, ScenarioResult
from .timing import (
    Percentiles,
    first_time_reaching,
    host_cpu_shares,
    host_cpu_times,
    summarize_seconds,
    times_reaching,
)
from .topics import FETCH_MAX_WAIT_MS, ReceiveListener, record_sizes

THROUGHPUT_TARGET_RATIO = 0.9
THROUGHPUT_TARGET_PER_S = 20_000
LATENCY_TARGET_P99_MS = 50.0
_POLL_INTERVAL_S = 0.002
_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class CaptureSizes:
    """How big a capture run is.

    Attributes:
        changes: Row changes written for the throughput measurement.
        latency_rate: Single-row transactions per second for the latency measurement.
        latency_seconds: How long the latency writer runs.
    """

    changes: int
    latency_rate: int
    latency_seconds: float

    @classmethod
    def for_mode(cls, quick: bool) -> CaptureSizes:
        """The full or the quick sizes."""
        if quick:
            return cls(changes=20_000, latency_rate=1_000, latency_seconds=5.0)
        return cls(changes=200_000, latency_rate=1_000, latency_seconds=20.0)


@dataclass(frozen=True)
class Names:
    """The objects one scenario creates, all derived from the run id."""

    source: str
    table: str
    publication: str
    slot: str

    @classmethod
    def for_scenario(cls, run_id: str, tag: str) -> Names:
        """Names for scenario ``tag`` of run ``run_id``."""
        base = f"bench_{run_id}_{tag}"
        return cls(source=base, table=f"customers_{tag}", publication=base, slot=base)

    @property
    def topic(self) -> str:
        """The table's change topic."""
        return f"{self.source}.public.{self.table}"


def run(ctx: Context, sizes: CaptureSizes | None = None) -> ScenarioResult:
    """Run both capture measurements and return their figures."""
    sizes = sizes or CaptureSizes.for_mode(ctx.quick)
    throughput = measure_throughput(ctx, sizes.changes)
    latency = measure_latency(ctx, sizes.latency_rate, sizes.latency_seconds)
    result = ScenarioResult(details={"throughput": throughput, "latency": latency})
    result.figures = _throughput_figures(throughput) + _latency_figures(latency)
    result.notes = _notes(throughput, latency)
    result.figures.append(
        Figure(
            "connector CPU per change (throughput run)",
            throughput["connector"]["cpu_us_per_change"],
            "µs",
        )
    )
    connector_rss = max(throughput["connector"]["max_rss_mib"], latency["connector"]["max_rss_mib"])
    result.figures.append(Figure("peak RSS, connector process", connector_rss, "MiB"))
    return result


# --- throughput ------------------------------------------------------------------------------


def measure_throughput(ctx: Context, changes: int) -> dict[str, Any]:
    """Commit → ack throughput of ``changes`` row changes, and both baselines.

    Returns:
        The raw numbers (rates, timings, sizes, the connector's resource use).
    """
    names = Names.for_scenario(ctx.run_id, "tp")
    dsn = ctx.services.dsn
    raw_slot = f"{names.slot}_raw"
    with psycopg.connect(dsn, autocommit=True) as conn:
        workload.create_table(conn, names.table)
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(names.publication), sql.Identifier(names.table)
            )
        )
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (raw_slot,))
    transactions = workload.throughput_workload(changes, ctx.seed)
    config = _config(ctx, names)
    kafka = _kafka(config)
    connector = ConnectorProcess(config)
    connector.start()
    writer = _BulkWriter(dsn, names.table, transactions)
    cpu_before = host_cpu_times()
    try:
        writer.start()
        _wait_for(lambda: connector.acknowledged >= changes, _timeout(changes), writer.failed)
    finally:
        cpu_after = host_cpu_times()
        outcome = connector.stop()
        writer.join()
    _check(outcome, writer.error)
    acked_at = first_time_reaching(outcome.timeline, changes)
    assert acked_at is not None and writer.first_commit is not None
    capture = Rate(changes, acked_at - writer.first_commit)

    sizes = record_sizes(kafka.bootstrap_servers, names.topic, changes, timeout=_timeout(changes))
    decode = raw_decode(dsn, raw_slot, names.publication, changes, timeout=_timeout(changes))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (raw_slot,))
    produce_topic = f"{names.source}.raw_produce"
    ensure_topics(kafka, [produce_topic])
    produce = raw_produce(
        kafka,
        produce_topic,
        changes,
        round(sizes.avg_key_bytes),
        round(sizes.avg_value_bytes),
        ctx.seed,
    )
    inserts = sum(t.rows for t in transactions if t.kind == "insert")
    return {
        "changes": changes,
        "transactions": len(transactions),
        "inserts": inserts,
        "updates": changes - inserts,
        "capture_per_s": capture.per_second,
        "capture_seconds": capture.seconds,
        "write_seconds": writer.seconds,
        "write_per_s": changes / writer.seconds if writer.seconds else None,
        "raw_decode_per_s": decode.per_second,
        "raw_decode_seconds": decode.seconds,
        "raw_produce_per_s": produce.per_second,
        "raw_produce_seconds": produce.seconds,
        "records_in_topic": sizes.records,
        "avg_key_bytes": sizes.avg_key_bytes,
        "avg_value_bytes": sizes.avg_value_bytes,
        "connector": _connector_usage(outcome, changes),
        "host_cpu_percent": host_cpu_shares(cpu_before, cpu_after),
    }


class _BulkWriter(threading.Thread):
    """Writes the throughput workload as fast as PostgreSQL takes it, one commit per transaction."""

    def __init__(self, dsn: str, table: str, transactions: list[workload.Transaction]) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self._dsn = dsn
        self._table = table
        self._transactions = transactions
        self.first_commit: float | None = None
        self.seconds = 0.0
        self.error: BaseException | None = None

    def failed(self) -> bool:
        return self.error is not None

    def run(self) -> None:
        try:
            with psycopg.connect(self._dsn) as conn:
                started = time.perf_counter()
                for tx in self._transactions:
                    workload.write_transaction(conn, self._table, tx)
                    conn.commit()
                    if self.first_commit is None:
                        self.first_commit = time.time()
                self.seconds = time.perf_counter() - started
        except BaseException as exc:
            self.error = exc


def _throughput_figures(tp: dict[str, Any]) -> list[Figure]:
    capture = tp["capture_per_s"]
    produce = tp["raw_produce_per_s"]
    met = capture >= THROUGHPUT_TARGET_RATIO * produce and capture >= THROUGHPUT_TARGET_PER_S
    return [
        Figure(
            "capture throughput: commit → Kafka ack",
            capture,
            "changes/s",
            baseline=produce,
            baseline_name="raw kafka-python produce, same record sizes",
            target=f"ratio ≥ {THROUGHPUT_TARGET_RATIO} and ≥ {THROUGHPUT_TARGET_PER_S:,}/s",
            met=met,
        ),
        Figure(
            "capture throughput vs decoding alone",
            capture,
            "changes/s",
            baseline=tp["raw_decode_per_s"],
            baseline_name="raw pgoutput stream + decode_message",
        ),
    ]


# --- latency ---------------------------------------------------------------------------------


def measure_latency(ctx: Context, rate: int, seconds: float) -> dict[str, Any]:
    """Commit → ack at a steady ``rate`` of single-row commits, then commit → consumer receive.

    Two passes of ``seconds`` each against one connector. The first has no Kafka consumer
    attached: on two cores a polling consumer takes CPU from the connector, so the target figure
    (commit → ack) comes from it. The second adds a consumer that records commit → receive, and
    reports commit → ack again, under that extra load.
    """
    names = Names.for_scenario(ctx.run_id, "lat")
    dsn = ctx.services.dsn
    rows = round(rate * seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        workload.create_table(conn, names.table)
    config = _config(ctx, names)
    kafka = _kafka(config)
    connector = ConnectorProcess(config)
    connector.start()
    listener = ReceiveListener(kafka.bootstrap_servers, names.topic)
    try:
        cpu = [host_cpu_times()]
        alone = _paced_writes(dsn, names.table, rate, 1, rows, ctx.seed)
        cpu.append(host_cpu_times())
        _wait_for(lambda: connector.acknowledged >= rows, 60.0)
        listener.start()
        cpu.append(host_cpu_times())
        observed = _paced_writes(dsn, names.table, rate, rows + 1, rows, ctx.seed + 1)
        cpu.append(host_cpu_times())
        _wait_for(lambda: connector.acknowledged >= 2 * rows, 60.0)
        _wait_for(lambda: len(listener.latencies_s) >= rows, 60.0)
    finally:
        outcome = connector.stop()
        listener.stop()
    _check(outcome, listener.error)
    # Row ids are committed in order and each is one event, so row i is acknowledged event i.
    acked = times_reaching(outcome.timeline, range(1, 2 * rows + 1))
    return {
        "target_rate": rate,
        "seconds_per_pass": seconds,
        "rows_per_pass": rows,
        "achieved_rate": _rate(alone),
        "commit_to_ack": asdict(_latencies(acked[:rows], alone)),
        "host_cpu_percent": host_cpu_shares(cpu[0], cpu[1]),
        "with_consumer": {
            "host_cpu_percent": host_cpu_shares(cpu[2], cpu[3]),
            "achieved_rate": _rate(observed),
            "commit_to_ack": asdict(_latencies(acked[rows:], observed)),
            "commit_to_consumer_receive": asdict(summarize_seconds(listener.latencies_s)),
            "consumer_fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "received_each_row_once": sorted(listener.ids) == list(range(rows + 1, 2 * rows + 1)),
        },
        "connector": _connector_usage(outcome, 2 * rows),
    }


def _latencies(acked: list[float], committed: list[float]) -> Percentiles:
    return summarize_seconds([a - c for a, c in zip(acked, committed, strict=True)])


def _rate(commit_times: list[float]) -> float | None:
    span = commit_times[-1] - commit_times[0]
    return (len(commit_times) - 1) / span if span > 0 else None


def _paced_writes(
    dsn: str, table: str, rate: int, first_id: int, rows: int, seed: int
) -> list[float]:
    """Run the paced writer in its own process (its clock readings never wait for our GIL).

    Returns:
        The time each row's commit returned, in row order.
    """
    parent_end, child_end = _CONTEXT.Pipe()
    go = _CONTEXT.Event()
    process = _CONTEXT.Process(
        target=workload.paced_writer_main,
        args=(dsn, table, float(rate), first_id, rows, seed, go, child_end),
        name="bench-paced-writer",
        daemon=True,
    )
    process.start()
    try:
        if not parent_end.poll(60) or parent_end.recv() != "ready":
            raise RuntimeError("the paced writer did not start")
        go.set()
        if not parent_end.poll(rows / rate + 120):
            raise RuntimeError("the paced writer did not finish")
        commit_times: list[float] = parent_end.recv()
        return commit_times
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


def _latency_figures(lat: dict[str, Any]) -> list[Figure]:
    ack = Percentiles(**lat["commit_to_ack"])
    loaded = lat["with_consumer"]
    receive = Percentiles(**loaded["commit_to_consumer_receive"])
    loaded_ack = Percentiles(**loaded["commit_to_ack"])
    rate = f"at {lat['target_rate']:,}/s"
    return [
        Figure(f"commit → ack p50 {rate}", ack.p50_ms, "ms"),
        Figure(f"commit → ack p95 {rate}", ack.p95_ms, "ms"),
        Figure(
            f"commit → ack p99 {rate}",
            ack.p99_ms,
            "ms",
            target=f"≤ {LATENCY_TARGET_P99_MS:.0f} ms",
            met=ack.p99_ms <= LATENCY_TARGET_P99_MS,
        ),
        Figure(f"commit → ack p99 {rate}, consumer attached", loaded_ack.p99_ms, "ms"),
        Figure(f"commit → consumer receive p50 {rate}", receive.p50_ms, "ms"),
        Figure(f"commit → consumer receive p99 {rate}", receive.p99_ms, "ms"),
        Figure("latency writer: achieved commit rate", lat["achieved_rate"] or 0.0, "commits/s"),
    ]


def _notes(tp: dict[str, Any], lat: dict[str, Any]) -> list[str]:
    notes = [
        f"throughput workload: {tp['inserts']:,} inserts + {tp['updates']:,} updates in "
        f"{tp['transactions']} transactions, written at {tp['write_per_s'] or 0:,.0f} changes/s; "
        f"records average {tp['avg_key_bytes']:.0f} B key + {tp['avg_value_bytes']:.0f} B value",
    ]
    for label, shares in (
        ("throughput run", tp["host_cpu_percent"]),
        ("commit → ack pass", lat["host_cpu_percent"]),
        ("consumer-attached pass", lat["with_consumer"]["host_cpu_percent"]),
    ):
        if shares:
            notes.append(
                f"host CPU during the {label}: {shares['idle']:.0f}% idle, "
                f"{shares['steal']:.0f}% stolen by the hypervisor"
            )
    return notes


# --- shared ----------------------------------------------------------------------------------


def _config(ctx: Context, names: Names) -> dict[str, Any]:
    """A capture config (as parsed TOML) for one scenario: stream only, no heartbeats."""
    return {
        "transport": {
            "kind": "kafka",
            "bootstrap_servers": ctx.services.bootstrap_servers,
            "offsets_topic": f"{names.source}.offsets",
        },
        "sources": [
            {
                "name": names.source,
                "dsn": ctx.services.dsn,
                "slot": names.slot,
                "publication": names.publication,
                "snapshot": "never",
                # A heartbeat is an event too: none during a measurement keeps counts exact.
                "heartbeat_interval_s": 3_600.0,
                "tables": [{"table": f"public.{names.table}"}],
            }
        ],
    }


def _kafka(config_data: dict[str, Any]) -> KafkaConfig:
    """Validate the config and create its topics; return the Kafka settings."""
    config = parse_capture_config(config_data)
    kafka = config.transport
    assert isinstance(kafka, KafkaConfig)
    source = config.sources[0]
    topics = [f"{source.name}.{t.table.schema}.{t.table.name}" for t in source.tables]
    ensure_topics(kafka, [*topics, f"__debezium-heartbeat.{source.name}"], [kafka.offsets_topic])
    return kafka


def _timeout(changes: int) -> float:
    """Generous: the run fails rather than hangs if capture stalls (2,000 changes/s or better)."""
    return 60.0 + changes / 2_000


def _wait_for(
    condition: Callable[[], bool],
    timeout: float,
    failed: Callable[[], bool] | None = None,
    interval: float = _POLL_INTERVAL_S,
) -> None:
    """Poll ``condition`` every ``interval`` seconds; return early if ``failed()`` turns true.

    Raises:
        TimeoutError: ``condition`` did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if failed is not None and failed():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.0f}s")
        time.sleep(interval)


def _check(outcome: ConnectorResult, other: BaseException | None) -> None:
    if outcome.error:
        raise RuntimeError(f"the connector failed:\n{outcome.error}")
    if other is not None:
        raise other


def _connector_usage(outcome: ConnectorResult, changes: int) -> dict[str, Any]:
    return {
        "events_published": outcome.published,
        "events_acknowledged": outcome.acknowledged,
        "max_rss_mib": outcome.max_rss_mib,
        "cpu_seconds": outcome.cpu_s,
        "cpu_us_per_change": outcome.cpu_s / changes * 1e6 if changes else None,
    }
