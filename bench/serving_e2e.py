"""Source commit → subscriber receive, through the embedded or the Kafka transport.

The whole pipeline on one machine, each part in a process of its own:

* the **source**: the demo's ``crm.customers`` table (``examples/demo/schema.sql``), in the
  scenario's database; a paced writer process inserts new customers, one row per transaction, and
  records when each commit returned;
* the **pipeline**: with the embedded transport, the connector and the engine in one process
  handing events over in memory (``InMemorySink`` → ``EmbeddedIngest``, :func:`embedded_main`);
  with the Kafka transport, a connector process publishing to Kafka (``KafkaSink``,
  :func:`connector_main`) and an engine process consuming as a group member
  (``run_kafka_engine``, :func:`kafka_engine_main`), as ``unified-profile cdc`` and
  ``unified-profile engine`` run them;
* the **server**: ``serve()`` with its change feed (:class:`~bench.serving_proc.ServerGroup`);
* the **subscribers** (:class:`~bench.serving_subs.SubscriberGroup`).

One pipeline and server serve every rate of a transport: the rates are written one after the
other, lowest first, each to its own range of customer ids, each to fresh subscribers. Each new
customer becomes one CREATED change whose cause names the row (``{"id": N}``), read back from the
change log after the run, so every delivery is matched with its row's commit time.
"""

from __future__ import annotations

import array
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from . import apply_data
from .serving_proc import ServerGroup
from .serving_subs import Received, SubscribeJob, SubscriberGroup, stream_errors
from .timing import host_cpu_shares, host_cpu_times, process_memory_mib, summarize_seconds

Transport = Literal["embedded", "kafka"]
_CONTEXT = multiprocessing.get_context("spawn")
DEMO_SCHEMA = Path(__file__).resolve().parent.parent / "examples" / "demo" / "schema.sql"
_INSERT = (
    "INSERT INTO crm.customers (id, first_name, last_name, email, birth_date, owner_email, "
    "lifecycle_stage, last_contacted_at, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


@dataclass(frozen=True)
class EndToEndJob:
    """The end-to-end measurements of one transport.

    Attributes:
        dsn: The scenario's database (store and source).
        config: The service config (as parsed TOML) the server and the pipeline use.
        token: A bearer token with ``profiles.subscribe``.
        names: The run's source names.
        transport: ``embedded`` or ``kafka``.
        seed: Seeds the inserted customers.
        first_id: The first new customer id (above the preloaded ones).
        rates: Source commits per second, one measurement each, in this order.
        seconds: How long the writer writes at each rate.
        warmup_s: Rows committed in the first seconds of each rate are not counted.
        catch_up_s: After each rate, how long the store may take to catch up with the source.
        drain_s: Then, how long the fan-out has to deliver before the next rate.
        subscribers: Streams, spread over two processes.
        slot: Replication slot and publication name.
    """

    dsn: str
    config: dict[str, Any]
    token: str
    names: apply_data.SourceNames
    transport: Transport
    seed: int
    first_id: int
    rates: tuple[float, ...]
    seconds: float
    warmup_s: float
    catch_up_s: float
    drain_s: float
    subscribers: int
    slot: str

    def rows(self, rate: float) -> int:
        """Rows written at ``rate``."""
        return round(rate * self.seconds)

    def last_id(self) -> int:
        """One past the last customer id this job writes (the first row is the warm-up's)."""
        return self.first_id + 1 + sum(self.rows(r) for r in self.rates)


@dataclass(frozen=True)
class _Pass:
    rate: float
    first_id: int
    commit_times: array.array[float]
    caught_up: bool
    catch_up_s: float
    host_cpu: dict[str, float] | None
    received: list[Received]


def measure_end_to_end(job: EndToEndJob) -> dict[str, Any]:
    """Commit → receive latency of every delivery at each rate, with the processes' peak RSS."""
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('crm.customers')").fetchone() == (None,):
            conn.execute(DEMO_SCHEMA.read_text())
        head = _head(conn)
    config = _pipeline_config(job)
    pipeline = _Pipeline(job.transport, config)
    began = time.monotonic()
    passes: list[_Pass] = []
    rss: dict[str, float | None] = {}
    writer = _Writer(job)
    group: SubscriberGroup | None = None
    with ServerGroup(job.config, 1) as servers:
        per_process = -(-job.subscribers // 2)
        jobs = [
            SubscribeJob(
                servers.target, job.token, min(per_process, job.subscribers - i * per_process)
            )
            for i in range(2) if job.subscribers - i * per_process > 0
        ]
        try:
            started = time.monotonic()
            pipeline.start(job)
            # The first change proves the whole path works (for Kafka: the group has joined).
            writer.write(rate=1.0, first_id=job.first_id, rows=1)
            _wait_for_head(job.dsn, head + 1, timeout=180.0, pipeline=pipeline)
            ready_s = time.monotonic() - started
            expected_head = head + 1
            next_id = job.first_id + 1
            for rate in job.rates:
                # Fresh subscribers for every rate: streams still behind on the previous rate's
                # changes would make this rate's latencies theirs.
                group = SubscriberGroup(jobs)
                group.start()
                rows = job.rows(rate)
                cpu_before = host_cpu_times()
                commit_times = writer.write(rate, next_id, rows)
                written = time.monotonic()
                expected_head += rows
                caught_up = _wait_for_head(
                    job.dsn, expected_head, timeout=job.catch_up_s, pipeline=pipeline,
                    required=False,
                )
                catch_up_s = time.monotonic() - written
                time.sleep(job.drain_s)
                host_cpu = host_cpu_shares(cpu_before, host_cpu_times())
                if rate == job.rates[-1]:
                    rss = {"server": _peak(servers.pids), **pipeline.peak_rss()}
                passes.append(_Pass(
                    rate, next_id, commit_times, caught_up, catch_up_s, host_cpu, group.stop()
                ))
                next_id += rows
            measured = time.monotonic()
        finally:
            writer.close()
            if group is not None:
                group.kill()
            failure = pipeline.stop()
    if failure:
        raise RuntimeError(f"the {job.transport} pipeline failed:\n{failure}")
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        # An inactive slot would hold WAL back for the rest of the run.
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (job.slot,),
        )
    row_of = _rows_by_sequence(job.dsn, head)
    return {
        "transport": job.transport,
        "subscribers": job.subscribers,
        "ready_s": ready_s,
        # Where the wall time went: start-up, the passes, stopping every process.
        "wall_s": time.monotonic() - began,
        "passes_s": measured - began - ready_s,
        "stop_s": time.monotonic() - measured,
        "pipeline_stop_s": pipeline.stop_s,
        "peak_rss_mib": rss,
        "errors": stream_errors([r for p in passes for r in p.received]),
        "rates": {f"{p.rate:g}": _latencies(job, p, row_of) for p in passes},
    }


def _pipeline_config(job: EndToEndJob) -> dict[str, Any]:
    """The service config with only the CRM customers table: streams new rows, no snapshot."""
    crm = next(s for s in job.config["sources"] if s["name"] == job.names.crm)
    source = {
        **crm, "snapshot": "never", "slot": job.slot, "publication": job.slot,
        "heartbeat_interval_s": 3_600.0, "status_interval_s": 1.0,
        "tables": [t for t in crm["tables"] if t["table"] == apply_data.CUSTOMERS],
    }
    return {**job.config, "sources": [source]}


def _peak(pids: list[int]) -> float | None:
    values = [process_memory_mib(pid) for pid in pids]
    known = [v for v in values if v is not None]
    return max(known) if known else None


class _Pipeline:
    """The connector and engine processes of one transport."""

    def __init__(self, transport: Transport, config: dict[str, Any]) -> None:
        self._transport = transport
        self._config = config
        self._stop = _CONTEXT.Event()
        self._children: list[tuple[str, Any, multiprocessing.connection.Connection]] = []
        self.stop_s: dict[str, float] = {}

    def start(self, job: EndToEndJob) -> None:
        roles = ["embedded engine"]
        if self._transport == "kafka":
            _ensure_topics(self._config)
            roles = ["engine", "connector"]
        for role in roles:
            parent_end, child_end = _CONTEXT.Pipe(duplex=False)
            child = _CONTEXT.Process(
                target=pipeline_main, args=(role, self._config, self._stop, child_end),
                name=f"bench-{role.replace(' ', '-')}", daemon=True,
            )
            child.start()
            child_end.close()
            self._children.append((role, child, parent_end))
        _wait_for_slot(job.dsn, job.slot, self)

    def check(self) -> None:
        """Raise if a process has ended."""
        for role, child, _ in self._children:
            if not child.is_alive():
                raise RuntimeError(f"the {role} process exited early:\n{self.stop()}")

    def peak_rss(self) -> dict[str, float | None]:
        return {role: process_memory_mib(int(c.pid)) for role, c, _ in self._children}

    def stop(self) -> str:
        """Stop every process; return what failed (empty: nothing)."""
        self._stop.set()
        failures = []
        for role, child, conn in self._children:
            began = time.monotonic()
            child.join(60)
            if child.is_alive():
                child.kill()
            self.stop_s[role] = time.monotonic() - began
            if conn.poll(1):
                with contextlib.suppress(EOFError):
                    failure = conn.recv()
                    if failure:
                        failures.append(f"{role}: {failure}")
        self._children.clear()
        return "\n".join(failures)


def _ensure_topics(config_data: dict[str, Any]) -> None:
    from unified_profile.cdc.config import KafkaConfig
    from unified_profile.cdc.connector import table_topic
    from unified_profile.cdc.kafka import ensure_topics
    from unified_profile.server.config import parse_service_config

    config = parse_service_config(config_data, "bench")
    transport = config.capture.transport
    assert isinstance(transport, KafkaConfig)
    source = config.capture.sources[0]
    topics = [table_topic(source.name, t.table) for t in source.tables]
    ensure_topics(
        transport, [*topics, f"__debezium-heartbeat.{source.name}"], [transport.offsets_topic]
    )


def pipeline_main(
    role: str, config_data: dict[str, Any], stop: Any, report: multiprocessing.connection.Connection
) -> None:
    """Entry point of a pipeline process: run ``role`` until the parent sets ``stop``.

    ``role``: ``embedded engine`` (connector and engine in memory), ``engine`` (the Kafka engine,
    as ``unified-profile engine``) or ``connector`` (publishing to Kafka, as ``unified-profile
    cdc``). Sends back the failure's traceback, or an empty string.
    """
    failure = ""
    try:
        import logging

        import structlog

        from unified_profile.server.config import parse_service_config

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        logging.getLogger("kafka").setLevel(logging.ERROR)
        config = parse_service_config(config_data, "bench")
        body = _ROLES[role]
        halt = threading.Event()
        errors: list[str] = []

        def run() -> None:
            try:
                body(config, halt)
            except BaseException:
                errors.append(traceback.format_exc())

        thread = threading.Thread(target=run, name=role)
        thread.start()
        while not stop.wait(0.2):
            if not thread.is_alive():
                raise RuntimeError("the pipeline ended early:\n" + "".join(errors))
        halt.set()
        thread.join(60)
        if errors:
            raise RuntimeError(errors[0])
    except BaseException:
        failure = traceback.format_exc()
    finally:
        with contextlib.suppress(Exception):
            report.send(failure)
        report.close()


def _run_embedded(config: Any, halt: threading.Event) -> None:
    from unified_profile.cdc.connector import Connector
    from unified_profile.cdc.sink import InMemorySink
    from unified_profile.server.ingest.consumers import EmbeddedIngest
    from unified_profile.server.ingest.service import build_pipeline, open_store
    from unified_profile.server.store.profile_store import StoreOffsetStore

    store = open_store(config)
    try:
        source = config.capture.sources[0]
        sink = InMemorySink()
        connector = Connector(source, sink, StoreOffsetStore(store))
        ingest = EmbeddedIngest(
            sink, build_pipeline(config, store, "embedded"), source.name,
            config.engine.batch_events,
        )
        threads = [
            threading.Thread(target=connector.run, args=(halt,), name="connector"),
            threading.Thread(target=ingest.run, args=(halt,), name="ingest"),
        ]
        for thread in threads:
            thread.start()
        while not halt.wait(0.2):
            if not all(t.is_alive() for t in threads):
                raise RuntimeError("a pipeline thread ended early")
        for thread in threads:
            thread.join(60)
    finally:
        store.close()


def _run_kafka_engine(config: Any, halt: threading.Event) -> None:
    from unified_profile.server.ingest.service import open_store, run_kafka_engine

    store = open_store(config)
    try:
        run_kafka_engine(config, store, halt)
    finally:
        store.close()


def _run_connector(config: Any, halt: threading.Event) -> None:
    from unified_profile.cdc.connector import Connector
    from unified_profile.cdc.kafka import KafkaOffsetStore, KafkaSink

    transport = config.capture.transport
    source = config.capture.sources[0]
    sink = KafkaSink(transport, source.schemas_enable)
    try:
        Connector(source, sink, KafkaOffsetStore(transport)).run(halt)
    finally:
        sink.close()


_ROLES: dict[str, Callable[[Any, threading.Event], None]] = {
    "embedded engine": _run_embedded,
    "engine": _run_kafka_engine,
    "connector": _run_connector,
}


def _wait_for_slot(dsn: str, slot: str, pipeline: _Pipeline, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)
        ).fetchone():
            pipeline.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the connector did not start streaming within {timeout:.0f}s")
            time.sleep(0.2)


def _head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT sequence FROM up_change_log_head").fetchone()
    return int(row[0]) if row is not None else 0


def _wait_for_head(
    dsn: str, head: int, timeout: float, pipeline: _Pipeline, required: bool = True
) -> bool:
    """Wait until the change log reaches ``head``; ``False`` (or an error) when it did not."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            if _head(conn) >= head:
                return True
            pipeline.check()
            if time.monotonic() > deadline:
                if required:
                    raise RuntimeError(
                        f"the change log did not reach {head} within {timeout:.0f}s"
                    )
                return False
            time.sleep(0.1)


def _rows_by_sequence(dsn: str, after: int) -> dict[int, int]:
    """Change sequence → the customer id whose insert caused it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT sequence, (cause -> 0 -> 'key' ->> 'id')::bigint FROM up_change_log "
            "WHERE sequence > %s AND kind = 'CREATED'",
            (after,),
        ).fetchall()
    return {int(s): int(i) for s, i in rows if i is not None}


class _Writer:
    """The source writer process: one per transport, given one paced pass at a time.

    One process for every pass (rather than one per pass) keeps the spawn and imports, seconds
    on a busy machine, out of the run.
    """

    def __init__(self, job: EndToEndJob) -> None:
        self._conn, child_end = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=writer_main, args=(job.dsn, job.seed, child_end), name="bench-source-writer",
            daemon=True,
        )
        self._process.start()
        child_end.close()

    def write(self, rate: float, first_id: int, rows: int) -> array.array[float]:
        """Insert customers ``first_id..first_id + rows - 1``; the ``time.monotonic()`` of each commit.

        Raises:
            RuntimeError: The writer failed or did not finish in time.
        """
        self._conn.send((rate, first_id, rows))
        if not self._conn.poll(60.0 + 2 * rows / rate):
            raise RuntimeError("the source writer did not finish")
        outcome = self._conn.recv()
        if isinstance(outcome, str):
            raise RuntimeError(f"the source writer failed:\n{outcome}")
        assert isinstance(outcome, array.array)
        return outcome

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def writer_main(dsn: str, seed: int, conn: multiprocessing.connection.Connection) -> None:
    """Entry point of the source writer: for each ``(rate, first_id, rows)`` received, insert
    ``rows`` customers one per transaction at ``rate`` per second, and send back when each
    commit returned; ``None`` ends it.

    Row ``i`` is committed no earlier than ``i / rate`` seconds after the start; a writer that
    falls behind catches up rather than skipping rows.
    """
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            while (command := conn.recv()) is not None:
                rate, first_id, rows = command
                values = []
                for customer_id in range(first_id, first_id + rows):
                    c = apply_data.customer(seed, customer_id)
                    values.append((
                        c.id, c.first_name, c.last_name, c.email, c.birth_date, c.owner_email,
                        c.lifecycle_stage, None, c.notes,
                    ))
                times: array.array[float] = array.array("d")
                started = time.monotonic()
                for index, row in enumerate(values):
                    delay = started + index / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    db.execute(_INSERT, row)
                    times.append(time.monotonic())
                conn.send(times)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(traceback.format_exc())
    finally:
        conn.close()


def _latencies(job: EndToEndJob, run: _Pass, row_of: dict[int, int]) -> dict[str, Any]:
    rows = len(run.commit_times)
    first_counted = run.first_id + min(rows - 1, round(job.warmup_s * run.rate))
    end = run.first_id + rows
    latencies: list[float] = []
    for part in run.received:
        for sequence, at in zip(part.sequences, part.times, strict=True):
            row = row_of.get(sequence)
            if row is not None and first_counted <= row < end:
                latencies.append(at - run.commit_times[row - run.first_id])
    expected = (end - first_counted) * job.subscribers
    missing = max(0, expected - len(latencies))
    span = run.commit_times[-1] - run.commit_times[0] if rows > 1 else 0.0
    return {
        "rows": rows,
        "achieved_rate": (rows - 1) / span if span else None,
        "changes": sum(1 for r in row_of.values() if run.first_id <= r < end),
        "deliveries": len(latencies),
        "deliveries_expected": expected,
        # A delivery that never came counts as infinitely late.
        "commit_to_receive": asdict(summarize_seconds(latencies + [math.inf] * missing)),
        "store_caught_up": run.caught_up,
        "catch_up_s": run.catch_up_s,
        "host_cpu_percent": run.host_cpu,
    }


__all__ = [
    "EndToEndJob",
    "measure_end_to_end",
    "pipeline_main",
    "writer_main",
]
