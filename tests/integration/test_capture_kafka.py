"""The connector against a real PostgreSQL and a real Kafka-protocol broker.

Each test reads the topics back and checks what a consumer of Debezium events would see.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time

import psycopg
import pytest

from .capture_support import (
    TopicReader,
    capture_config,
    changes,
    execute,
    running_connector,
)

pytestmark = pytest.mark.integration

EPOCH = dt.datetime(1970, 1, 1)

ALL_TYPES_DDL = """
CREATE SCHEMA crm;
CREATE SCHEMA workspace_1;
CREATE TYPE crm.tier AS ENUM ('bronze', 'silver', 'gold');
CREATE TABLE crm.all_types (
    id bigint PRIMARY KEY,
    small smallint, i integer, big bigint,
    exact numeric(10, 2), free numeric,
    r real, d double precision,
    t text, v varchar(20), b boolean,
    u uuid, j json, jb jsonb,
    day date, tod time, ts timestamp, tstz timestamptz,
    tags text[], nums integer[], tier crm.tier, raw bytea
);
ALTER TABLE crm.all_types REPLICA IDENTITY FULL;
CREATE TABLE workspace_1."Person" ("personId" integer PRIMARY KEY, "nameFirstName" text);
ALTER TABLE workspace_1."Person" REPLICA IDENTITY FULL;
"""

INSERT_ALL_TYPES = """
INSERT INTO crm.all_types VALUES (
    1, 2, 3, 4000000000, 12.34, 1.5, 1.5, 2.25, 'hello', 'wörld', true,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}', '{"b": [1, 2]}',
    '2024-03-01', '12:34:56.789', '2024-03-01 12:34:56.789012', '2024-03-01 12:34:56.5+02',
    '{a,"b c",NULL}', '{1,2}', 'gold', '\\x0102ff'
)
"""


def _micros(value: dt.datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _expected_all_types_row() -> dict[str, object]:
    return {
        "id": 1,
        "small": 2,
        "i": 3,
        "big": 4_000_000_000,
        # numeric(10,2): the unscaled integer 1234 as big-endian two's complement, base64.
        "exact": base64.b64encode((1234).to_bytes(2, "big", signed=True)).decode(),
        # numeric without a declared scale: VariableScaleDecimal {scale, value}.
        "free": {"scale": 1, "value": base64.b64encode((15).to_bytes(1, "big")).decode()},
        "r": 1.5,
        "d": 2.25,
        "t": "hello",
        "v": "wörld",
        "b": True,
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": '{"a": 1}',
        "jb": '{"b": [1, 2]}',
        "day": (dt.date(2024, 3, 1) - EPOCH.date()).days,
        "tod": ((12 * 60 + 34) * 60 + 56) * 1_000_000 + 789_000,
        "ts": _micros(dt.datetime(2024, 3, 1, 12, 34, 56, 789_012)),
        # timestamptz(6): Debezium pads the fraction to the column precision.
        "tstz": "2024-03-01T10:34:56.500000Z",
        "tags": ["a", "b c", None],
        "nums": [1, 2],
        "tier": "gold",
        "raw": base64.b64encode(b"\x01\x02\xff").decode(),
    }


def test_every_change_of_every_type_arrives_as_debezium_json(
    new_database, kafka_bootstrap, unique_name
):
    dsn = new_database()
    execute(dsn, ALL_TYPES_DDL)
    name = unique_name("crm")
    config = capture_config(
        name, dsn, kafka_bootstrap, ["crm.all_types", 'workspace_1."Person"']
    )
    types_topic, person_topic = f"{name}.crm.all_types", f"{name}.workspace_1.Person"
    with running_connector(config):
        execute(dsn, INSERT_ALL_TYPES)
        execute(dsn, "UPDATE crm.all_types SET t = 'changed', nums = '{3}' WHERE id = 1")
        execute(dsn, "DELETE FROM crm.all_types WHERE id = 1")
        execute(dsn, """INSERT INTO workspace_1."Person" VALUES (7, 'Zoë')""")
        execute(dsn, """TRUNCATE workspace_1."Person" """)
        reader = TopicReader(kafka_bootstrap, [types_topic, person_topic])
        records = reader.read_until(lambda rs: len(rs) >= 6)
        reader.close()

    by_topic = {t: [r for r in records if r.topic == t] for t in (types_topic, person_topic)}
    create, update, delete, tombstone = by_topic[types_topic]
    expected = _expected_all_types_row()

    assert create.key == {"id": 1}
    assert create.op == "c"
    assert create.value["before"] is None
    assert create.value["after"] == expected
    source = create.value["source"]
    assert source["connector"] == "postgresql"
    assert (source["name"], source["schema"], source["table"]) == (name, "crm", "all_types")
    assert source["snapshot"] == "false"
    assert isinstance(source["txId"], int) and isinstance(source["lsn"], int)
    assert json.loads(source["sequence"])[1] == str(source["lsn"])
    assert source["ts_ms"] == source["ts_us"] // 1000
    assert abs(source["ts_ms"] - time.time() * 1000) < 120_000

    assert update.op == "u"
    assert update.value["before"] == expected  # REPLICA IDENTITY FULL: the whole old row
    assert update.value["after"] == {**expected, "t": "changed", "nums": [3]}
    assert update.value["source"]["lsn"] > source["lsn"]

    assert delete.op == "d"
    assert delete.key == {"id": 1}
    assert delete.value["before"] == {**expected, "t": "changed", "nums": [3]}
    assert delete.value["after"] is None
    assert (tombstone.key, tombstone.value) == ({"id": 1}, None)
    # One row, one partition: every event of the row is on the partition of its key.
    assert len({r.partition for r in (create, update, delete, tombstone)}) == 1

    person_insert, person_truncate = by_topic[person_topic]
    assert person_insert.key == {"personId": 7}
    assert person_insert.value["after"] == {"personId": 7, "nameFirstName": "Zoë"}
    assert person_truncate.key is None
    assert person_truncate.op == "t"
    assert person_truncate.value["before"] is None and person_truncate.value["after"] is None


def test_schemas_enable_wraps_key_and_value_like_the_json_converter(
    new_database, kafka_bootstrap, unique_name
):
    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, born date)",
            "ALTER TABLE customers REPLICA IDENTITY FULL")
    name = unique_name("crm")
    config = capture_config(name, dsn, kafka_bootstrap, ["customers"], schemas_enable=True)
    with running_connector(config):
        execute(dsn, "INSERT INTO customers VALUES (1, 'a@example.com', '1990-05-17')")
        reader = TopicReader(kafka_bootstrap, [f"{name}.public.customers"])
        (record,) = reader.read_until(lambda rs: len(rs) >= 1)
        reader.close()

    assert record.key == {
        "schema": {
            "type": "struct",
            "fields": [{"type": "int32", "optional": False, "field": "id"}],
            "optional": False,
            "name": f"{name}.public.customers.Key",
        },
        "payload": {"id": 1},
    }
    schema, payload = record.value["schema"], record.value["payload"]
    assert schema["name"] == f"{name}.public.customers.Envelope"
    assert [f["field"] for f in schema["fields"]] == [
        "before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"
    ]
    after_schema = schema["fields"][1]
    assert after_schema["name"] == f"{name}.public.customers.Value"
    assert after_schema["fields"] == [
        {"type": "int32", "optional": False, "field": "id"},
        {"type": "string", "optional": False, "field": "email"},
        {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1,
         "field": "born"},
    ]
    assert payload["after"] == {"id": 1, "email": "a@example.com",
                                "born": (dt.date(1990, 5, 17) - EPOCH.date()).days}


def test_snapshot_while_writes_continue_loses_and_repeats_nothing(
    new_database, kafka_bootstrap, unique_name
):
    dsn = new_database()
    rows = 3_000
    execute(
        dsn,
        "CREATE TABLE members (id int PRIMARY KEY, n int NOT NULL)",
        "ALTER TABLE members REPLICA IDENTITY FULL",
        f"INSERT INTO members SELECT g, 0 FROM generate_series(1, {rows}) g",
    )
    name = unique_name("loyalty")
    config = capture_config(name, dsn, kafka_bootstrap, ["members"], snapshot_batch_rows=500)
    stop_writing = threading.Event()
    bumps: dict[int, int] = {}

    def writer() -> None:
        # Each update adds 1 to n, so a row's events must show n = 0, 1, 2, ... with no gap.
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop_writing.is_set():
                key = i % 200 + 1
                conn.execute("UPDATE members SET n = n + 1 WHERE id = %s", (key,))
                bumps[key] = bumps.get(key, 0) + 1
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        with running_connector(config):
            time.sleep(1.0)
            stop_writing.set()
            thread.join()
            total_updates = sum(bumps.values())
            with psycopg.connect(dsn) as conn:
                final = dict(conn.execute("SELECT id, n FROM members").fetchall())
            reader = TopicReader(kafka_bootstrap, [f"{name}.public.members"])
            records = reader.read_until(lambda rs: _caught_up(rs, final), timeout=60)
            reader.close()
    finally:
        stop_writing.set()
        thread.join()

    events = changes(records)
    snapshot = [r for r in events if r.op == "r"]
    assert len(snapshot) == rows
    assert {r.key["id"] for r in snapshot} == set(range(1, rows + 1))
    markers = [r.value["source"]["snapshot"] for r in snapshot]
    # Partitions interleave on read: check the markers, not the order they were read in.
    assert (markers.count("first"), markers.count("last")) == (1, 1)
    assert set(markers) == {"first", "true", "last"}

    per_key: dict[int, list[int]] = {}
    for record in sorted(events, key=lambda r: (r.partition, r.offset)):
        per_key.setdefault(record.key["id"], []).append(record.value["after"]["n"])
    for key, seen in per_key.items():
        # The snapshot shows the row at some point; from there every update appears once, in order.
        assert seen == list(range(seen[0], seen[0] + len(seen))), f"row {key}: {seen}"
        assert seen[-1] == final[key], f"row {key} ends at {seen[-1]}, database has {final[key]}"
    assert total_updates > 0


def _caught_up(records, final: dict[int, int]) -> bool:
    """Every row's newest event shows the value the database ends with."""
    latest = {r.key["id"]: r.value["after"]["n"] for r in records if r.value is not None}
    return latest == final


def test_schema_changes_while_streaming_use_the_new_shape(
    new_database, kafka_bootstrap, unique_name
):
    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY, email text, score int)",
            "ALTER TABLE customers REPLICA IDENTITY FULL")
    name = unique_name("crm")
    config = capture_config(name, dsn, kafka_bootstrap, ["customers"])
    with running_connector(config):
        execute(dsn, "INSERT INTO customers VALUES (1, 'a@example.com', 5)")
        execute(dsn, "ALTER TABLE customers ADD COLUMN phone text",
                "INSERT INTO customers VALUES (2, 'b@example.com', 6, '+4420')")
        execute(dsn, "ALTER TABLE customers DROP COLUMN email",
                "INSERT INTO customers VALUES (3, 7, '+4421')")
        execute(dsn, "ALTER TABLE customers ALTER COLUMN score TYPE numeric(6, 1)",
                "INSERT INTO customers VALUES (4, 8.5, '+4422')")
        reader = TopicReader(kafka_bootstrap, [f"{name}.public.customers"])
        records = reader.read_until(lambda rs: len(rs) >= 4)
        reader.close()

    after = {r.key["id"]: r.value["after"] for r in records}
    assert after[1] == {"id": 1, "email": "a@example.com", "score": 5}
    assert after[2] == {"id": 2, "email": "b@example.com", "score": 6, "phone": "+4420"}
    assert after[3] == {"id": 3, "score": 7, "phone": "+4421"}
    assert after[4] == {"id": 4, "score": base64.b64encode((85).to_bytes(1, "big")).decode(),
                        "phone": "+4422"}


def test_unchanged_toasted_value_becomes_debeziums_placeholder(
    new_database, kafka_bootstrap, unique_name
):
    dsn = new_database()
    execute(
        dsn,
        "CREATE TABLE notes (id int PRIMARY KEY, body text, views int)",
        "ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL",
    )
    name = unique_name("crm")
    # Default replica identity: the old row is not logged, so the unchanged TOAST value is unknown.
    execute(dsn, "ALTER TABLE notes REPLICA IDENTITY FULL")
    config = capture_config(name, dsn, kafka_bootstrap, ["notes"])
    body = "x" * 100_000
    with running_connector(config):
        execute(dsn, "INSERT INTO notes VALUES (1, %s, 0)", params=(body,))
        execute(dsn, "UPDATE notes SET views = 1 WHERE id = 1")
        reader = TopicReader(kafka_bootstrap, [f"{name}.public.notes"])
        create, update = reader.read_until(lambda rs: len(rs) >= 2)
        reader.close()
    assert create.value["after"]["body"] == body
    assert update.value["after"] == {"id": 1, "body": "__debezium_unavailable_value", "views": 1}


def test_primary_key_change_is_a_delete_and_a_create(new_database, kafka_bootstrap, unique_name):
    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY, email text)",
            "ALTER TABLE customers REPLICA IDENTITY FULL")
    name = unique_name("crm")
    with running_connector(capture_config(name, dsn, kafka_bootstrap, ["customers"])):
        execute(dsn, "INSERT INTO customers VALUES (1, 'a@example.com')")
        execute(dsn, "UPDATE customers SET id = 2 WHERE id = 1")
        reader = TopicReader(kafka_bootstrap, [f"{name}.public.customers"])
        records = reader.read_until(lambda rs: len(rs) >= 4)
        reader.close()
    ordered = sorted(records, key=lambda r: r.value["source"]["lsn"] if r.value else 0)
    assert [(r.op, r.key) for r in records if r.value is not None] == [
        ("c", {"id": 1}), ("d", {"id": 1}), ("c", {"id": 2})
    ]
    assert any(r.value is None and r.key == {"id": 1} for r in ordered)


def test_idle_slot_advances_and_heartbeats_are_published(
    new_database, kafka_bootstrap, unique_name
):
    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY)",
            "ALTER TABLE customers REPLICA IDENTITY FULL",
            "CREATE TABLE audit (id serial PRIMARY KEY, payload text)")
    name = unique_name("crm")
    config = capture_config(name, dsn, kafka_bootstrap, ["customers"])
    slot = config.sources[0].slot_name
    with running_connector(config):
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = conn.execute(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            ).fetchone()[0]
            # Only an uncaptured table is written: without care the slot would pin this WAL.
            conn.execute("INSERT INTO audit (payload) SELECT repeat('x', 1000) "
                         "FROM generate_series(1, 2000)")
            written = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            deadline = time.monotonic() + 30
            while True:
                confirmed = conn.execute(
                    "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                ).fetchone()[0]
                if confirmed >= written or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        reader = TopicReader(kafka_bootstrap, [f"__debezium-heartbeat.{name}"])
        (heartbeat, *_) = reader.read_until(lambda rs: len(rs) >= 1, timeout=15)
        reader.close()
    assert confirmed >= written > start
    assert heartbeat.key == {"serverName": name}
    assert abs(heartbeat.value["ts_ms"] - time.time() * 1000) < 60_000


def test_a_kafka_client_we_did_not_write_reads_the_events(
    new_database, kafka_bootstrap, unique_name
):
    # librdkafka (through confluent-kafka) is the C client most Kafka tooling is built on.
    from confluent_kafka import Consumer, TopicPartition

    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY, email text)",
            "ALTER TABLE customers REPLICA IDENTITY FULL")
    name = unique_name("crm")
    topic = f"{name}.public.customers"
    with running_connector(capture_config(name, dsn, kafka_bootstrap, ["customers"])):
        execute(dsn, "INSERT INTO customers VALUES (1, 'a@example.com')")
        (ours,) = TopicReader(kafka_bootstrap, [topic]).read_until(lambda rs: len(rs) >= 1)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": name,
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, ours.partition, 0)])
        message = consumer.poll(30)
    finally:
        consumer.close()
    assert message is not None and message.error() is None
    assert json.loads(message.key()) == {"id": 1}
    value = json.loads(message.value())
    assert value["op"] == "c"
    assert value["after"] == {"id": 1, "email": "a@example.com"}
    assert value["source"]["table"] == "customers"


def test_lost_slot_initial_refuses_and_when_needed_resnapshots(
    new_database, kafka_bootstrap, unique_name
):
    from unified_profile.cdc.errors import PreflightError

    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY, email text)",
            "ALTER TABLE customers REPLICA IDENTITY FULL",
            "INSERT INTO customers VALUES (1, 'a@example.com')")
    name = unique_name("crm")
    topic = f"{name}.public.customers"
    config = capture_config(name, dsn, kafka_bootstrap, ["customers"])
    with running_connector(config):
        pass
    slot = config.sources[0].slot_name
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The server releases the slot a moment after the connector disconnects.
        deadline = time.monotonic() + 10
        while conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    execute(dsn, "INSERT INTO customers VALUES (2, 'written while the slot was gone')")

    with pytest.raises(PreflightError) as refused, running_connector(config):
        pass
    assert f"replication slot {slot!r} is gone" in str(refused.value)
    assert 'snapshot = "when_needed"' in refused.value.fix

    again = capture_config(name, dsn, kafka_bootstrap, ["customers"], snapshot="when_needed")
    with running_connector(again):
        reader = TopicReader(kafka_bootstrap, [topic])
        records = reader.read_until(lambda rs: len(rs) >= 3)
        reader.close()
    reads = [(r.op, r.key["id"]) for r in records]
    # The first snapshot saw row 1; the re-snapshot sees both rows, nothing was silently skipped.
    assert reads == [("r", 1), ("r", 1), ("r", 2)]


def test_a_second_connector_on_the_same_slot_is_refused(
    new_database, kafka_bootstrap, unique_name
):
    from unified_profile.cdc.errors import PreflightError

    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY)",
            "ALTER TABLE customers REPLICA IDENTITY FULL")
    config = capture_config(unique_name("crm"), dsn, kafka_bootstrap, ["customers"])
    with running_connector(config), pytest.raises(PreflightError) as refused, \
            running_connector(config):
        pass
    assert "is in use by server process" in str(refused.value)
    assert "another connector" in str(refused.value)
