"""The embedded transport: events handed over in memory, the slot confirmed only on acknowledge."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from unified_profile.cdc.connector import Connector
from unified_profile.cdc.offsets import InMemoryOffsetStore
from unified_profile.cdc.sink import InMemorySink

from .capture_support import capture_config, execute

pytestmark = pytest.mark.integration


def _confirmed_lsn(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn) as conn:
        (lsn,) = conn.execute(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return int(lsn)


def test_slot_moves_only_after_the_consumer_acknowledges(new_database, unique_name):
    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY, email text)",
            "ALTER TABLE customers REPLICA IDENTITY FULL",
            "INSERT INTO customers VALUES (1, 'snap@example.com')")
    name = unique_name("crm")
    config = capture_config(name, dsn, "unused:9092", ["customers"])
    source = config.sources[0]
    sink = InMemorySink(capacity=100)
    connector = Connector(source, sink, InMemoryOffsetStore())
    stop = threading.Event()
    thread = threading.Thread(target=connector.run, args=(stop,), daemon=True)

    # The snapshot row must be acknowledged before the connector starts streaming.
    thread.start()
    snapshot, taken = sink.take(10, timeout=30)
    assert [(e.value["op"], e.key) for e in snapshot] == [("r", {"id": 1})]
    assert snapshot[0].value["source"]["snapshot"] == "last"  # the only row is first and last
    sink.acknowledge(taken)
    assert connector.ready.wait(30)

    try:
        execute(dsn, "INSERT INTO customers VALUES (2, 'a@example.com')")
        with psycopg.connect(dsn) as conn:
            (written,) = conn.execute("SELECT (pg_current_wal_lsn() - '0/0')::bigint").fetchone()
        events, taken = sink.take(10, timeout=30)
        assert [(e.value["op"], e.value["after"]) for e in events] == [
            ("c", {"id": 2, "email": "a@example.com"})
        ]
        # Several status intervals pass: still unacknowledged, so the slot must not reach the
        # change. (Before it, the slot may move: with nothing in flight the connector confirms
        # WAL that other databases on the shared server wrote.)
        time.sleep(4 * source.status_interval_s)
        assert _confirmed_lsn(dsn, source.slot_name) <= events[0].lsn

        sink.acknowledge(taken)
        deadline = time.monotonic() + 10
        while _confirmed_lsn(dsn, source.slot_name) < written:
            assert time.monotonic() < deadline, "slot did not advance after acknowledge"
            time.sleep(0.1)
    finally:
        stop.set()
        # A clean stop waits for the consumer to acknowledge what it was given (heartbeats too).
        while thread.is_alive():
            _, taken = sink.take(100, timeout=0.1)
            sink.acknowledge(taken)
        sink.close()
