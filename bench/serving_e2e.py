"""Source commit → subscriber receive, through the embedded or the Kafka transport.

The whole pipeline on one machine, each part in a process of its own:

* the **sources**: the demo's CRM and loyalty databases (``examples/demo/schema.sql``), seeded
  with the demo's generated population, written to by the demo's customer traffic
  (:class:`~bench.traffic_writer.TrafficWriter`, paced in source row changes per second);
* the **pipeline**: with the embedded transport, a connector and an engine per source in one
  process handing events over in memory (``InMemorySink`` → ``EmbeddedIngest``), as
  ``unified-profile run`` does; with the Kafka transport, a connector process publishing both
  sources to Kafka (``KafkaSink``, as ``unified-profile cdc``) and an engine process consuming as
  a group member (``run_kafka_engine``, as ``unified-profile engine``);
* the **server**: ``serve()`` with its change feed (:class:`~bench.serving_proc.ServerGroup`);
* the **subscribers** (:class:`~bench.serving_subs.SubscriberGroup`).

The pipeline snapshots the seeded sources first. Then one pipeline and server serve every rate
of a transport, lowest first, each to fresh subscribers. A profile change is matched with the
source commit that caused it by PostgreSQL's commit timestamp, which the change log keeps in the
change's cause (the latest one, when several records caused it); subscribers' receive times are
taken on the same machine's clock.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from . import apply_data
from .serving_proc import ServerGroup
from .serving_subs import Received, SubscribeJob, SubscriberGroup, stream_errors
from .timing import (
    backend_cpu,
    backend_cpu_between,
    host_cpu_shares,
    host_cpu_times,
    process_cpu_s,
    process_memory_mib,
    summarize_seconds,
)
from .traffic_writer import TrafficWriter, WrittenPass

Transport = Literal["embedded", "kafka"]
_CONTEXT = multiprocessing.get_context("spawn")
#: The store has caught up once the slots are confirmed past the source and its head has not
#: moved for this long (through Kafka the engine may still be applying what was acknowledged).
_SETTLE_S = 0.5
#: Source row changes of the warm-up, after the snapshot.
_WARMUP_ROWS = 20


@dataclass(frozen=True)
class EndToEndJob:
    """The end-to-end measurements of one transport.

    Attributes:
        dsn: The store's database.
        source_dsns: The ``crm`` and ``loyalty`` databases, seeded with the population.
        config: The service config (as parsed TOML) the server and the pipeline use.
        token: A bearer token with ``profiles.subscribe``.
        names: The run's source names (``names.crm`` is the ``crm`` database's source).
        transport: ``embedded`` or ``kafka``.
        seed: Seeds the population (as seeded) and the traffic.
        people: The seeded population's size.
        rates: Source row changes per second, one measurement each, in this order.
        seconds: How long the writer writes at each rate.
        warmup_s: Changes committed in the first seconds of each rate are not counted.
        catch_up_s: After each rate, how long the store may take to catch up with the sources.
        drain_s: Then, how long the fan-out has to deliver before the next rate.
        subscribers: Streams, spread over two processes.
        slot: Prefix of the replication slots and publications (``<slot>_crm``, ``<slot>_loyalty``).
    """

    dsn: str
    source_dsns: dict[str, str]
    config: dict[str, Any]
    token: str
    names: apply_data.SourceNames
    transport: Transport
    seed: int
    people: int
    rates: tuple[float, ...]
    seconds: float
    warmup_s: float
    catch_up_s: float
    drain_s: float
    subscribers: int
    slot: str

    def rows(self, rate: float) -> int:
        """Source row changes written at ``rate``."""
        return round(rate * self.seconds)

    def slots(self) -> dict[str, str]:
        """Each source database's slot."""
        return {role: f"{self.slot}_{role}" for role in self.source_dsns}


@dataclass(frozen=True)
class _Pass:
    rate: float
    written: WrittenPass
    caught_up: bool
    catch_up_s: float
    host_cpu: dict[str, float] | None
    received: list[Received]
    # CPU seconds from the writer's start until the store caught up (``None``: unreadable).
    pipeline_cpu_s: float | None = None
    store_cpu_s: float | None = None


def measure_end_to_end(job: EndToEndJob) -> dict[str, Any]:
    """Commit → receive latency of every delivery at each rate, with the processes' peak RSS."""
    config = _pipeline_config(job)
    pipeline = _Pipeline(job.transport, config)
    began = time.monotonic()
    passes: list[_Pass] = []
    rss: dict[str, float | None] = {}
    writer = TrafficWriter(job.source_dsns, job.people, job.seed)
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
            _wait_for_snapshot(job, pipeline, timeout=900.0)
            snapshot_s = time.monotonic() - started
            # A few activities prove the whole path works: the store holds a change they caused
            # (for Kafka: the engine has joined its group).
            _wait_for_a_change_caused_by(job, pipeline, writer, timeout=180.0)
            _wait_until_caught_up(job, pipeline, timeout=180.0)
            ready_s = time.monotonic() - started
            with psycopg.connect(job.dsn, autocommit=True) as conn:
                head = _head(conn)
            for rate in job.rates:
                # Fresh subscribers for every rate: streams still behind on the previous rate's
                # changes would make this rate's latencies theirs.
                group = SubscriberGroup(jobs)
                group.start()
                cpu_before = host_cpu_times()
                pipeline_before, store_before = pipeline.cpu_s(), backend_cpu(job.dsn)
                written = writer.write(rate, job.rows(rate))
                done = time.monotonic()
                caught_up = _wait_until_caught_up(
                    job, pipeline, timeout=job.catch_up_s, required=False
                )
                catch_up_s = max(0.0, time.monotonic() - done - _SETTLE_S)
                pipeline_after, store_after = pipeline.cpu_s(), backend_cpu(job.dsn)
                time.sleep(job.drain_s)
                host_cpu = host_cpu_shares(cpu_before, host_cpu_times())
                if rate == job.rates[-1]:
                    rss = {"server": _peak(servers.pids), **pipeline.peak_rss()}
                passes.append(
                    _Pass(
                        rate, written, caught_up, catch_up_s, host_cpu, group.stop(),
                        pipeline_cpu_s=(
                            None if pipeline_before is None or pipeline_after is None
                            else pipeline_after - pipeline_before
                        ),
                        store_cpu_s=backend_cpu_between(store_before, store_after),
                    )
                )
            measured = time.monotonic()
        finally:
            writer.close()
            if group is not None:
                group.kill()
            failure = pipeline.stop()
    if failure:
        raise RuntimeError(f"the {job.transport} pipeline failed:\n{failure}")
    # An inactive slot would hold WAL back for the rest of the run.
    for role, slot in job.slots().items():
        with psycopg.connect(job.source_dsns[role], autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (slot,),
            )
    times = _change_times(job.dsn, head)
    # Subscribers time deliveries with time.monotonic() (one clock for every process on the
    # machine); the change log has PostgreSQL's wall-clock commit times.
    clock_offset = time.time() - time.monotonic()
    return {
        "transport": job.transport,
        "subscribers": job.subscribers,
        "snapshot_s": snapshot_s,
        "ready_s": ready_s,
        # Where the wall time went: start-up, the passes, stopping every process.
        "wall_s": time.monotonic() - began,
        "passes_s": measured - began - ready_s,
        "stop_s": time.monotonic() - measured,
        "pipeline_stop_s": pipeline.stop_s,
        "peak_rss_mib": rss,
        "errors": stream_errors([r for p in passes for r in p.received]),
        "rates": {
            f"{p.rate:g}": _latencies(job, p, times, clock_offset)
            for p in passes
        },
    }


def _pipeline_config(job: EndToEndJob) -> dict[str, Any]:
    """The service config with this job's slots: snapshot first, then stream.

    Heartbeats every second let an idle source's slot be confirmed past WAL that other databases
    on the server wrote, which is how :func:`_wait_until_caught_up` knows the pipeline has read
    everything.
    """
    roles = {job.names.crm: "crm", job.names.loyalty: "loyalty"}
    slots = job.slots()
    sources = [
        {
            **source, "snapshot": "initial", "slot": slots[roles[source["name"]]],
            "publication": slots[roles[source["name"]]],
            "heartbeat_interval_s": 1.0, "status_interval_s": 0.5,
        }
        for source in job.config["sources"]
    ]
    return {**job.config, "sources": sources}


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
        _wait_for_slots(job, self)

    def check(self) -> None:
        """Raise if a process has ended."""
        for role, child, _ in self._children:
            if not child.is_alive():
                raise RuntimeError(f"the {role} process exited early:\n{self.stop()}")

    def peak_rss(self) -> dict[str, float | None]:
        return {role: process_memory_mib(int(c.pid)) for role, c, _ in self._children}

    def cpu_s(self) -> float | None:
        """CPU seconds the pipeline's processes have used (``None``: one is unreadable)."""
        used = [process_cpu_s(int(c.pid)) for _, c, _ in self._children]
        return None if None in used else sum(u for u in used if u is not None)

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
    topics = [
        topic
        for source in config.capture.sources
        for topic in (
            *(table_topic(source.name, t.table) for t in source.tables),
            f"__debezium-heartbeat.{source.name}",
        )
    ]
    ensure_topics(transport, topics, [transport.offsets_topic])


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

        from unified_profile.server.collector import settle_after_start
        from unified_profile.server.config import parse_service_config

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        logging.getLogger("kafka").setLevel(logging.ERROR)
        config = parse_service_config(config_data, "bench")
        body = _ROLES[role]
        settle_after_start()  # as the unified-profile commands do once started
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
    from unified_profile.server.allinone import Workers
    from unified_profile.server.ingest.service import open_store

    store = open_store(config)
    workers = Workers()
    try:
        # A connector thread per source and one engine thread, as `unified-profile run` starts them.
        workers.start_embedded(config, store)
        while not halt.wait(0.2):
            if workers.failure is not None:
                raise RuntimeError("the embedded pipeline failed") from workers.failure
    finally:
        workers.stop()
        store.close()


def _run_kafka_engine(config: Any, halt: threading.Event) -> None:
    from unified_profile.server.ingest.service import open_store, run_kafka_engine

    store = open_store(config)
    try:
        run_kafka_engine(config, store, halt)
    finally:
        store.close()


def _run_connector(config: Any, halt: threading.Event) -> None:
    from unified_profile.server.capture import CaptureService

    # Every source's connector publishing to Kafka, as `unified-profile cdc` runs them.
    service = CaptureService(config.capture, list(config.capture.sources))
    service.start()
    try:
        while not halt.wait(0.2):
            if service.failure is not None:
                raise RuntimeError("the connectors failed") from service.failure
    finally:
        service.stop()
        service.wait(60)


_ROLES: dict[str, Callable[[Any, threading.Event], None]] = {
    "embedded engine": _run_embedded,
    "engine": _run_kafka_engine,
    "connector": _run_connector,
}


def _wait_for_slots(job: EndToEndJob, pipeline: _Pipeline, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for role, slot in job.slots().items():
        with psycopg.connect(job.source_dsns[role], autocommit=True) as conn:
            while not conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)
            ).fetchone():
                pipeline.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {role} connector did not start streaming within {timeout:.0f}s"
                    )
                time.sleep(0.2)


def _head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT sequence FROM up_change_log_head").fetchone()
    return int(row[0]) if row is not None else 0


def _wait_until_caught_up(
    job: EndToEndJob, pipeline: _Pipeline, timeout: float, required: bool = True
) -> bool:
    """Wait until the store holds every change committed so far in the sources.

    That is: each slot is confirmed at or past its source's current WAL position (the pipeline
    has read and handed on everything; heartbeats move an idle source's slot too), and the
    change log's head has then not moved for ``_SETTLE_S`` (through Kafka, the engine may still
    be applying what the broker acknowledged). ``False`` (or an error) when it did not in time.
    """
    deadline = time.monotonic() + timeout
    slots = job.slots()
    with contextlib.ExitStack() as stack:
        sources = {
            role: stack.enter_context(psycopg.connect(dsn, autocommit=True))
            for role, dsn in job.source_dsns.items()
        }
        store = stack.enter_context(psycopg.connect(job.dsn, autocommit=True))
        targets = {
            role: _one(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone())
            for role, conn in sources.items()
        }
        confirmed = False
        head, moved = -1, time.monotonic()
        while True:
            confirmed = confirmed or all(
                conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (targets[role], slots[role]),
                ).fetchone() == (True,)
                for role, conn in sources.items()
            )
            now_head = _head(store)
            if now_head != head:
                head, moved = now_head, time.monotonic()
            if confirmed and time.monotonic() - moved >= _SETTLE_S:
                return True
            pipeline.check()
            if time.monotonic() > deadline:
                if required:
                    raise RuntimeError(
                        f"the store did not catch up with the sources within {timeout:.0f}s"
                    )
                return False
            time.sleep(0.1)


def _wait_for_snapshot(job: EndToEndJob, pipeline: _Pipeline, timeout: float) -> None:
    """Wait until the store holds a record (or a dead letter) for every row of the sources.

    Counting is exact where watching the slots is not: through Kafka the engine reads each
    table's topic on its own, so changes of one table may be applied while another's snapshot
    is still on its way.
    """
    deadline = time.monotonic() + timeout
    rows = 0
    for role, dsn in job.source_dsns.items():
        name = getattr(job.names, role)
        source = next(s for s in job.config["sources"] if s["name"] == name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in source["tables"]:
                schema, relation = table["table"].split(".")
                rows += _one(conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, relation))
                ).fetchone())
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        while _one(conn.execute(
            "SELECT (SELECT count(*) FROM up_source_records)"
            " + (SELECT count(*) FROM up_dead_letters)"
        ).fetchone()) < rows:
            pipeline.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the snapshot was not applied within {timeout:.0f}s")
            time.sleep(0.2)


def _wait_for_a_change_caused_by(
    job: EndToEndJob, pipeline: _Pipeline, writer: TrafficWriter, timeout: float
) -> None:
    """Write a few activities at a time until the change log holds a change they caused."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        after = _head(conn)
    while True:
        written = writer.write(rate=50.0, rows=_WARMUP_ROWS)
        for _ in range(50):
            source_commits = _change_times(job.dsn, after).source_commit
            if any(at >= written.first_commit for at in source_commits.values()):
                return
            pipeline.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no change reached the store within {timeout:.0f}s")
            time.sleep(0.1)


def _one(row: tuple[Any, ...] | None) -> Any:
    assert row is not None
    return row[0]


@dataclass(frozen=True)
class _ChangeTimes:
    """When each change after a sequence was caused, begun and committed (``time.time()`` s).

    Attributes:
        source_commit: The source commit that caused it; a change caused by several records (a
            merge, a batch) counts from the latest of them: it could not have been made before.
        store_began: When the store transaction that logged it began (the change log's
            ``committed_at`` is PostgreSQL's ``now()``, the transaction's start).
        store_committed: When that transaction committed; empty unless the store's server has
            ``track_commit_timestamp`` on (the bench's own server has).
    """

    source_commit: dict[int, float]
    store_began: dict[int, float]
    store_committed: dict[int, float]


def _change_times(dsn: str, after: int) -> _ChangeTimes:
    """:class:`_ChangeTimes` of every change after ``after``.

    Source commit → store transaction start is how long a change waited for the engine
    (capture, transport, the engine's queue); start → store commit is the applying transaction;
    store commit → receive is the change feed and the fan-out.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        tracked = _one(conn.execute("SHOW track_commit_timestamp").fetchone()) == "on"
        committed = (
            "extract(epoch FROM pg_xact_commit_timestamp(xmin))" if tracked else "NULL::float8"
        )
        rows = conn.execute(
            "SELECT sequence, (SELECT max((c ->> 'commit_time_us')::bigint)"
            " FROM jsonb_array_elements(cause) AS c), extract(epoch FROM committed_at), "
            + committed
            + " FROM up_change_log WHERE sequence > %s",
            (after,),
        ).fetchall()
    return _ChangeTimes(
        source_commit={int(sequence): us / 1e6 for sequence, us, _, _ in rows if us},
        store_began={int(sequence): float(began) for sequence, _, began, _ in rows},
        store_committed={int(sequence): float(at) for sequence, _, _, at in rows if at},
    )


def _latencies(
    job: EndToEndJob, run: _Pass, times: _ChangeTimes, clock_offset: float
) -> dict[str, Any]:
    """Commit → receive of every delivery of a change whose source commit falls in the pass
    (after its warm-up seconds), and that latency's parts (see :func:`_change_times`);
    ``clock_offset`` turns a receive time into ``time.time()``."""
    written = run.written
    counted_from = written.first_commit + job.warmup_s
    counted = {
        sequence: at
        for sequence, at in times.source_commit.items()
        if counted_from <= at <= written.last_commit
    }
    store_committed = times.store_committed
    latencies: list[float] = []
    fan_out: list[float] = []
    for part in run.received:
        for sequence, received in zip(part.sequences, part.times, strict=True):
            committed = counted.get(sequence)
            if committed is not None:
                latencies.append(received + clock_offset - committed)
                if sequence in store_committed:
                    fan_out.append(received + clock_offset - store_committed[sequence])
    expected = len(counted) * job.subscribers
    missing = max(0, expected - len(latencies))
    return {
        "rows": written.rows,
        "transactions": written.transactions,
        "activities": written.activities,
        "failed_activities": written.failed,
        "achieved_rate": written.achieved_rate,
        "changes": sum(
            1
            for at in times.source_commit.values()
            if written.first_commit <= at <= written.last_commit
        ),
        "changes_counted": len(counted),
        "deliveries": len(latencies),
        "deliveries_expected": expected,
        # A delivery that never came counts as infinitely late.
        "commit_to_receive": asdict(summarize_seconds(latencies + [math.inf] * missing)),
        "commit_to_store_transaction": asdict(summarize_seconds(
            [times.store_began[s] - at for s, at in counted.items() if s in times.store_began]
        )),
        "store_transaction_to_commit": (
            asdict(summarize_seconds([
                store_committed[s] - times.store_began[s]
                for s in counted
                if s in store_committed and s in times.store_began
            ]))
            if store_committed else None
        ),
        "store_commit_to_receive": (
            asdict(summarize_seconds(fan_out)) if store_committed else None
        ),
        "store_caught_up": run.caught_up,
        "catch_up_s": run.catch_up_s,
        "host_cpu_percent": run.host_cpu,
        # From the writer's start until the store caught up, per source row change written.
        "pipeline_cpu_us_per_row": _per_row_us(run.pipeline_cpu_s, written.rows),
        "store_cpu_us_per_row": _per_row_us(run.store_cpu_s, written.rows),
    }


def _per_row_us(cpu_s: float | None, rows: int) -> float | None:
    return None if cpu_s is None or not rows else cpu_s / rows * 1e6


__all__ = [
    "EndToEndJob",
    "measure_end_to_end",
    "pipeline_main",
]
