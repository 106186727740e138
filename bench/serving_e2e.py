"""Source commit → subscriber receive, through the embedded transport.

The whole pipeline on one machine, each part in a process of its own:

* the **source**: the demo's ``crm.customers`` table (``examples/demo/schema.sql``), in the
  scenario's database; a paced writer process inserts new customers, one row per transaction, and
  records when each commit returned;
* the **engine** (:func:`engine_main`): the connector and the engine in one process, handing
  events over in memory (``InMemorySink`` → ``EmbeddedIngest``), as the embedded transport runs;
* the **server**: ``serve()`` with its change feed (:class:`~bench.serving_proc.ServerGroup`);
* the **subscribers** (:class:`~bench.serving_subs.SubscriberGroup`).

Each new customer becomes one CREATED change whose cause names the row (``{"id": N}``), read back
from the change log after the run, so every delivery is matched with its row's commit time.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from . import apply_data
from .serving_proc import ServerGroup
from .serving_subs import Received, SubscribeJob, SubscriberGroup, stream_errors
from .timing import host_cpu_shares, host_cpu_times, summarize_seconds

_CONTEXT = multiprocessing.get_context("spawn")
_DRAIN_S = 20.0
DEMO_SCHEMA = Path(__file__).resolve().parent.parent / "examples" / "demo" / "schema.sql"
_INSERT = (
    "INSERT INTO crm.customers (id, first_name, last_name, email, birth_date, owner_email, "
    "lifecycle_stage, last_contacted_at, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


@dataclass(frozen=True)
class EndToEndJob:
    """One end-to-end measurement.

    Attributes:
        dsn: The scenario's database (store and source).
        config: The service config (as parsed TOML) the server uses.
        token: A bearer token with ``profiles.subscribe``.
        names: The run's source names.
        seed: Seeds the inserted customers.
        first_id: The first new customer id (above the preloaded ones).
        rate: Source commits per second.
        seconds: How long the writer writes.
        warmup_s: Rows committed in the first seconds are not counted.
        subscribers: Streams, spread over two processes.
        slot: Replication slot and publication name.
    """

    dsn: str
    config: dict[str, Any]
    token: str
    names: apply_data.SourceNames
    seed: int
    first_id: int
    rate: float
    seconds: float
    warmup_s: float
    subscribers: int
    slot: str


def measure_end_to_end(job: EndToEndJob) -> dict[str, Any]:
    """Commit → receive latency of every delivery, with what each part cost."""
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('crm.customers')").fetchone() == (None,):
            conn.execute(DEMO_SCHEMA.read_text())
        head = _head(conn)
    engine_config = _engine_config(job)
    stop = _CONTEXT.Event()
    engine_end, child_end = _CONTEXT.Pipe(duplex=False)
    engine = _CONTEXT.Process(
        target=engine_main, args=(engine_config, stop, child_end), name="bench-embedded-engine",
        daemon=True,
    )
    rows = round(job.rate * job.seconds)
    with ServerGroup(job.config, 1) as servers:
        per_process = -(-job.subscribers // 2)
        group = SubscriberGroup([
            SubscribeJob(
                servers.target, job.token, min(per_process, job.subscribers - i * per_process)
            )
            for i in range(2) if job.subscribers - i * per_process > 0
        ])
        try:
            engine.start()
            _wait_for_slot(job.dsn, job.slot, engine)
            group.start()
            cpu_before = host_cpu_times()
            commit_times = _paced_inserts(job, rows)
            written = time.monotonic()
            _wait_for_head(job.dsn, head + rows, timeout=60.0 + rows / 200)
            # Deliveries behind the store (a fan-out that cannot keep up) get a bounded time to
            # arrive; what has not arrived then counts as infinitely late.
            time.sleep(min(_DRAIN_S, max(2.0, job.seconds)))
            drain_s = time.monotonic() - written
            cpu_after = host_cpu_times()
            received = group.stop()
        finally:
            group.kill()
            stop.set()
            engine.join(60)
            if engine.is_alive():
                engine.kill()
    if engine_end.poll(1):
        failure = engine_end.recv()
        if failure:
            raise RuntimeError(f"the embedded engine failed:\n{failure}")
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        # An inactive slot would hold WAL back for the rest of the run.
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (job.slot,),
        )
    row_of = _rows_by_sequence(job.dsn, head)
    return _latencies(job, rows, commit_times, row_of, received) | {
        "drain_s": drain_s,
        "host_cpu_percent": host_cpu_shares(cpu_before, cpu_after),
    }


def _engine_config(job: EndToEndJob) -> dict[str, Any]:
    """The service config with only the CRM source: streams new rows, no snapshot."""
    crm = next(s for s in job.config["sources"] if s["name"] == job.names.crm)
    source = {
        **crm, "snapshot": "never", "slot": job.slot, "publication": job.slot,
        "heartbeat_interval_s": 3_600.0, "status_interval_s": 1.0,
        "tables": [t for t in crm["tables"] if t["table"] == apply_data.CUSTOMERS],
    }
    return {**job.config, "sources": [source]}


def engine_main(
    config_data: dict[str, Any], stop: Any, report: multiprocessing.connection.Connection
) -> None:
    """Entry point of the embedded engine process: connector and engine until ``stop``."""
    failure = ""
    try:
        import logging

        import structlog

        from unified_profile.cdc.connector import Connector
        from unified_profile.cdc.sink import InMemorySink
        from unified_profile.server.config import parse_service_config
        from unified_profile.server.ingest.consumers import EmbeddedIngest
        from unified_profile.server.ingest.service import build_pipeline, open_store
        from unified_profile.server.store.profile_store import StoreOffsetStore

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        config = parse_service_config(config_data, "bench")
        store = open_store(config)
        source = config.capture.sources[0]
        sink = InMemorySink()
        connector = Connector(source, sink, StoreOffsetStore(store))
        batch = config.engine.batch_events
        ingest = EmbeddedIngest(sink, build_pipeline(config, store, "embedded"), source.name, batch)
        halt = threading.Event()
        threads = [
            threading.Thread(target=connector.run, args=(halt,), name="connector"),
            threading.Thread(target=ingest.run, args=(halt,), name="ingest"),
        ]
        for thread in threads:
            thread.start()
        while not stop.wait(0.2):
            if not all(t.is_alive() for t in threads):
                raise RuntimeError("a pipeline thread ended early")
        halt.set()
        for thread in threads:
            thread.join(60)
        store.close()
    except BaseException:
        failure = traceback.format_exc()
    finally:
        with contextlib.suppress(Exception):
            report.send(failure)
        report.close()


def _wait_for_slot(dsn: str, slot: str, engine: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (slot,)
        ).fetchone():
            if not engine.is_alive():
                raise RuntimeError("the embedded engine exited before streaming")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the connector did not start streaming within {timeout:.0f}s")
            time.sleep(0.2)


def _head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT sequence FROM up_change_log_head").fetchone()
    return int(row[0]) if row is not None else 0


def _wait_for_head(dsn: str, head: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            if _head(conn) >= head:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the change log did not reach {head} within {timeout:.0f}s")
            time.sleep(0.2)


def _rows_by_sequence(dsn: str, after: int) -> dict[int, int]:
    """Change sequence → the customer id whose insert caused it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT sequence, (cause -> 0 -> 'key' ->> 'id')::bigint FROM up_change_log "
            "WHERE sequence > %s AND kind = 'CREATED'",
            (after,),
        ).fetchall()
    return {int(s): int(i) for s, i in rows if i is not None}


def _paced_inserts(job: EndToEndJob, rows: int) -> array.array[float]:
    """Run the paced writer in its own process; the ``time.monotonic()`` of each commit."""
    parent_end, child_end = _CONTEXT.Pipe(duplex=False)
    writer = _CONTEXT.Process(
        target=writer_main, args=(job, rows, child_end), name="bench-source-writer", daemon=True
    )
    writer.start()
    child_end.close()
    try:
        if not parent_end.poll(60.0 + 2 * job.seconds):
            raise RuntimeError("the source writer did not finish")
        outcome = parent_end.recv()
        if isinstance(outcome, str):
            raise RuntimeError(f"the source writer failed:\n{outcome}")
        assert isinstance(outcome, array.array)
        return outcome
    finally:
        writer.join(10)
        if writer.is_alive():
            writer.kill()


def writer_main(job: EndToEndJob, rows: int, report: multiprocessing.connection.Connection) -> None:
    """Entry point of the source writer: ``rows`` single-row inserts at ``job.rate`` per second."""
    try:
        values = []
        for customer_id in range(job.first_id, job.first_id + rows):
            c = apply_data.customer(job.seed, customer_id)
            values.append((
                c.id, c.first_name, c.last_name, c.email, c.birth_date, c.owner_email,
                c.lifecycle_stage, None, c.notes,
            ))
        times: array.array[float] = array.array("d")
        with psycopg.connect(job.dsn, autocommit=True) as conn:
            started = time.monotonic()
            for index, row in enumerate(values):
                delay = started + index / job.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                conn.execute(_INSERT, row)
                times.append(time.monotonic())
        report.send(times)
    except BaseException:
        with contextlib.suppress(Exception):
            report.send(traceback.format_exc())
    finally:
        report.close()


def _latencies(
    job: EndToEndJob, rows: int, commit_times: array.array[float], row_of: dict[int, int],
    received: list[Received],
) -> dict[str, Any]:
    first_counted = job.first_id + round(job.warmup_s * job.rate)
    latencies: list[float] = []
    for part in received:
        for sequence, at in zip(part.sequences, part.times, strict=True):
            row = row_of.get(sequence)
            if row is not None and first_counted <= row < job.first_id + rows:
                latencies.append(at - commit_times[row - job.first_id])
    counted_rows = job.first_id + rows - first_counted
    expected = counted_rows * job.subscribers
    missing = max(0, expected - len(latencies))
    span = commit_times[-1] - commit_times[0] if len(commit_times) > 1 else 0.0
    return {
        "rows": rows,
        "achieved_rate": (len(commit_times) - 1) / span if span else None,
        "changes": len(row_of),
        "deliveries": len(latencies),
        "deliveries_expected": expected,
        # A delivery that never came counts as infinitely late.
        "commit_to_receive": asdict(summarize_seconds(latencies + [math.inf] * missing)),
        "errors": stream_errors(received),
    }


__all__ = ["EndToEndJob", "engine_main", "measure_end_to_end", "writer_main"]
