"""Unit tests for cdc/changes.py: from decoded pgoutput messages to Debezium change events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unified_profile.cdc.changes import ChangeTranslator, CommittedTransaction, TranslatorConfig
from unified_profile.cdc.envelope import ChangeEvent, serialize
from unified_profile.cdc.model import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputMessage,
    PgType,
    Relation,
    RelationColumn,
    TableShape,
    Truncate,
    Update,
)

TYPES = {23: PgType(23, "int4", "N"), 25: PgType(25, "text", "S")}

CUSTOMERS = 16384
ORDERS = 16400
AUDIT = 16500  # not captured

COMMIT_US = 1_700_000_000_123_456
NOW_US = 1_700_000_005_000_000


def relation(oid: int, name: str, *columns: tuple[str, int, bool]) -> Relation:
    return Relation(
        oid,
        "public",
        name,
        "d",
        tuple(RelationColumn(1 if key else 0, n, t, -1) for n, t, key in columns),
    )


CUSTOMERS_REL = relation(CUSTOMERS, "customers", ("id", 23, True), ("name", 25, False))
ORDERS_REL = relation(ORDERS, "orders", ("id", 23, True), ("total", 23, False))
AUDIT_REL = relation(AUDIT, "audit", ("id", 23, True))


def resolve(message: Relation) -> TableShape | None:
    if message.name == "audit":
        return None
    columns = tuple(
        Column(c.name, c.type_oid, c.type_modifier, part_of_key=bool(c.flags & 1))
        for c in message.columns
    )
    return TableShape(message.schema, message.name, columns, TYPES)


class Stream:
    """Feeds messages at increasing LSNs and collects events as the connector would see them."""

    def __init__(self, **config: Any) -> None:
        self.translator = ChangeTranslator(TranslatorConfig("crm", "crmdb", **config), resolve)
        self.events: list[ChangeEvent] = []
        self.committed: list[CommittedTransaction] = []

    def send(self, message: PgOutputMessage, lsn: int) -> list[ChangeEvent]:
        out: list[ChangeEvent] = []
        done = self.translator.translate(message, lsn, NOW_US, out)
        if done is not None:
            self.committed.append(done)
        self.events.extend(out)
        return out


def key_of(event: ChangeEvent) -> Any:
    key, _ = serialize(event, False)
    return None if key is None else json.loads(key)


def value_of(event: ChangeEvent) -> Any:
    _, value = serialize(event, False)
    return None if value is None else json.loads(value)


def records(events: list[ChangeEvent]) -> list[tuple[str, Any, Any]]:
    """(topic, key, op / None for a tombstone) as a consumer sees them."""
    out = []
    for e in events:
        value = value_of(e)
        out.append((e.topic, key_of(e), None if value is None else value.get("op")))
    return out


def source(lsn: int, last_commit: int | None = None, table: str = "customers") -> dict[str, Any]:
    last = "null" if last_commit is None else f'"{last_commit}"'
    return {
        "version": "unified-profile-0.1.0",
        "connector": "postgresql",
        "name": "crm",
        "ts_ms": COMMIT_US // 1000,
        "snapshot": "false",
        "db": "crmdb",
        "sequence": f'[{last},"{lsn}"]',
        "ts_us": COMMIT_US,
        "ts_ns": COMMIT_US * 1000,
        "schema": "public",
        "table": table,
        "txId": 555,
        "lsn": lsn,
        "xmin": None,
    }


def envelope(op: str, before: Any, after: Any, src: dict[str, Any], tx: Any = None) -> Any:
    return {
        "before": before,
        "after": after,
        "source": src,
        "transaction": tx,
        "op": op,
        "ts_ms": NOW_US // 1000,
        "ts_us": NOW_US,
        "ts_ns": NOW_US * 1000,
    }


def begin(stream: Stream, final_lsn: int = 2000, xid: int = 555) -> None:
    stream.send(Begin(final_lsn, COMMIT_US, xid), final_lsn - 1000)


def commit(stream: Stream, commit_lsn: int = 2000) -> None:
    stream.send(Commit(0, commit_lsn, commit_lsn + 8, COMMIT_US), commit_lsn)


# --- one operation at a time ----------------------------------------------------------------


def test_insert_is_a_create_event() -> None:
    stream = Stream()
    begin(stream)
    assert stream.send(CUSTOMERS_REL, 1001) == []
    (event,) = stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)

    assert event.topic == "crm.public.customers"
    assert event.lsn == 1010
    assert key_of(event) == {"id": 1}
    assert value_of(event) == envelope("c", None, {"id": 1, "name": "Anne"}, source(1010))


def test_update_without_old_tuple() -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    (event,) = stream.send(Update(CUSTOMERS, ("1", "Anna")), 1020)
    assert key_of(event) == {"id": 1}
    assert value_of(event) == envelope("u", None, {"id": 1, "name": "Anna"}, source(1020))


def test_update_with_full_old_row() -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    (event,) = stream.send(Update(CUSTOMERS, ("1", "Anna"), ("1", "Anne"), "O"), 1020)
    assert value_of(event) == envelope(
        "u", {"id": 1, "name": "Anne"}, {"id": 1, "name": "Anna"}, source(1020)
    )


def test_update_with_unchanged_toast_column() -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    (event,) = stream.send(Update(CUSTOMERS, ("1", UNCHANGED_TOAST)), 1020)
    assert value_of(event)["after"] == {"id": 1, "name": "__debezium_unavailable_value"}


@pytest.mark.parametrize(
    ("old", "old_kind", "before"),
    [
        (("1", None), "K", {"id": 1, "name": None}),
        (("1", "Anne"), "O", {"id": 1, "name": "Anne"}),
    ],
)
def test_delete_is_followed_by_a_tombstone(
    old: tuple[str | None, ...], old_kind: str, before: dict[str, Any]
) -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    delete, tombstone = stream.send(Delete(CUSTOMERS, old, old_kind), 1030)

    assert key_of(delete) == {"id": 1}
    assert value_of(delete) == envelope("d", before, None, source(1030))
    assert tombstone.topic == "crm.public.customers"
    assert serialize(tombstone, False) == (b'{"id":1}', None)
    assert tombstone.lsn == 1030


def test_no_tombstone_when_disabled() -> None:
    stream = Stream(tombstones_on_delete=False)
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    events = stream.send(Delete(CUSTOMERS, ("1", None), "K"), 1030)
    assert records(events) == [("crm.public.customers", {"id": 1}, "d")]


@pytest.mark.parametrize(
    ("old", "old_kind", "before"),
    [
        (("1", None), "K", {"id": 1, "name": None}),
        (("1", "Anne"), "O", {"id": 1, "name": "Anne"}),
    ],
)
def test_primary_key_change_is_delete_tombstone_create(
    old: tuple[str | None, ...], old_kind: str, before: dict[str, Any]
) -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    events = stream.send(Update(CUSTOMERS, ("2", "Anne"), old, old_kind), 1040)

    assert records(events) == [
        ("crm.public.customers", {"id": 1}, "d"),
        ("crm.public.customers", {"id": 1}, None),
        ("crm.public.customers", {"id": 2}, "c"),
    ]
    assert value_of(events[0]) == envelope("d", before, None, source(1040))
    assert value_of(events[2]) == envelope("c", None, {"id": 2, "name": "Anne"}, source(1040))


def test_primary_key_change_without_tombstones() -> None:
    stream = Stream(tombstones_on_delete=False)
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    events = stream.send(Update(CUSTOMERS, ("2", "Anne"), ("1", None), "K"), 1040)
    assert [op for _, _, op in records(events)] == ["d", "c"]


def test_truncate_has_a_null_key_per_captured_table() -> None:
    stream = Stream()
    begin(stream)
    for rel in (CUSTOMERS_REL, AUDIT_REL, ORDERS_REL):
        stream.send(rel, 1001)
    events = stream.send(Truncate((CUSTOMERS, AUDIT, ORDERS), False, False), 1050)

    assert records(events) == [
        ("crm.public.customers", None, "t"),
        ("crm.public.orders", None, "t"),
    ]
    assert value_of(events[0]) == envelope("t", None, None, source(1050))
    assert value_of(events[1]) == envelope("t", None, None, source(1050, table="orders"))


def test_uncaptured_relation_produces_nothing() -> None:
    stream = Stream(provide_transaction_metadata=False)
    begin(stream)
    assert stream.send(AUDIT_REL, 1001) == []
    assert stream.send(Insert(AUDIT, ("1",)), 1010) == []
    assert stream.send(Update(AUDIT, ("1",), ("1",), "O"), 1020) == []
    assert stream.send(Delete(AUDIT, ("1",), "K"), 1030) == []
    assert stream.send(Truncate((AUDIT,), False, False), 1040) == []
    commit(stream)
    assert stream.events == []
    assert stream.committed == [CommittedTransaction(2008, COMMIT_US, 0)]


def test_messages_that_carry_no_rows_produce_nothing() -> None:
    stream = Stream()
    begin(stream)
    assert stream.send(Origin(999, "node_a"), 1001) == []
    assert stream.send(LogicalMessage(True, 1002, "app", b"hello"), 1002) == []


# --- shapes change --------------------------------------------------------------------------


def test_new_relation_message_changes_the_shape_of_later_events() -> None:
    stream = Stream(tombstones_on_delete=False)
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    (first,) = stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)
    widened = relation(
        CUSTOMERS, "customers", ("id", 23, True), ("name", 25, False), ("email", 25, False)
    )
    stream.send(widened, 1011)
    (second,) = stream.send(Insert(CUSTOMERS, ("2", "Bob", "bob@example.com")), 1020)

    assert value_of(first)["after"] == {"id": 1, "name": "Anne"}
    assert value_of(second)["after"] == {"id": 2, "name": "Bob", "email": "bob@example.com"}
    _, wrapped = serialize(second, True)
    assert wrapped is not None
    after_schema = json.loads(wrapped)["schema"]["fields"][1]
    assert [f["field"] for f in after_schema["fields"]] == ["id", "name", "email"]
    # The first event keeps the shape it was built with.
    _, old_wrapped = serialize(first, True)
    assert old_wrapped is not None
    old_schema = json.loads(old_wrapped)["schema"]["fields"][1]
    assert [f["field"] for f in old_schema["fields"]] == ["id", "name"]


def test_relation_that_stops_being_captured() -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    assert len(stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)) == 1
    renamed = Relation(CUSTOMERS, "public", "audit", "d", CUSTOMERS_REL.columns)
    stream.send(renamed, 1011)
    assert stream.send(Insert(CUSTOMERS, ("2", "Bob")), 1020) == []


# --- transactions ---------------------------------------------------------------------------


def test_source_position_and_sequence_across_transactions() -> None:
    stream = Stream()
    stream.send(Begin(2000, COMMIT_US, 555), 1000)
    stream.send(CUSTOMERS_REL, 1001)
    (first,) = stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)
    stream.send(Commit(0, 2000, 2008, COMMIT_US), 2000)

    later_us = COMMIT_US + 5_000_000
    stream.send(Begin(3000, later_us, 556), 2100)
    (second,) = stream.send(Insert(CUSTOMERS, ("2", "Bob")), 2110)
    stream.send(Commit(0, 3000, 3008, later_us), 3000)

    assert value_of(first)["source"] == source(1010)
    second_source = value_of(second)["source"]
    assert second_source["sequence"] == '["2000","2110"]'
    assert second_source["lsn"] == 2110
    assert second_source["txId"] == 556
    assert second_source["ts_us"] == later_us
    assert second_source["ts_ms"] == later_us // 1000
    assert second_source["ts_ns"] == later_us * 1000
    assert [(c.end_lsn, c.commit_time_us) for c in stream.committed] == [
        (2008, COMMIT_US),
        (3008, later_us),
    ]


def test_in_transaction() -> None:
    stream = Stream()
    assert not stream.translator.in_transaction
    begin(stream)
    assert stream.translator.in_transaction
    commit(stream)
    assert not stream.translator.in_transaction


def test_commit_returns_the_transaction_to_confirm() -> None:
    stream = Stream()
    begin(stream, final_lsn=2000)
    stream.send(CUSTOMERS_REL, 1001)
    stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)
    out: list[ChangeEvent] = []
    done = stream.translator.translate(Commit(0, 2000, 2008, COMMIT_US), 2000, NOW_US, out)
    assert out == []
    assert done is not None
    assert (done.end_lsn, done.commit_time_us) == (2008, COMMIT_US)


def test_committed_transaction_counts_its_events_without_metadata() -> None:
    stream = Stream(provide_transaction_metadata=False)
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)
    stream.send(Update(CUSTOMERS, ("1", "Anna")), 1020)
    commit(stream)
    assert stream.committed == [CommittedTransaction(2008, COMMIT_US, 2)]


def test_transaction_metadata() -> None:
    stream = Stream(provide_transaction_metadata=True)
    begin(stream, final_lsn=2000, xid=555)
    stream.send(CUSTOMERS_REL, 1001)
    stream.send(ORDERS_REL, 1002)
    stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)
    stream.send(Insert(ORDERS, ("7", "100")), 1020)
    stream.send(Update(CUSTOMERS, ("1", "Anna")), 1030)
    commit(stream, commit_lsn=2000)

    events = stream.events
    assert records(events) == [
        ("crm.transaction", {"id": "555:2000"}, None),
        ("crm.public.customers", {"id": 1}, "c"),
        ("crm.public.orders", {"id": 7}, "c"),
        ("crm.public.customers", {"id": 1}, "u"),
        ("crm.transaction", {"id": "555:2000"}, None),
    ]
    assert serialize(events[0], False) == (
        b'{"id":"555:2000"}',
        b'{"status":"BEGIN","id":"555:2000","event_count":null,"data_collections":null,'
        b'"ts_ms":1700000000123}',
    )
    assert [value_of(e)["transaction"] for e in events[1:4]] == [
        {"id": "555:2000", "total_order": 1, "data_collection_order": 1},
        {"id": "555:2000", "total_order": 2, "data_collection_order": 1},
        {"id": "555:2000", "total_order": 3, "data_collection_order": 2},
    ]
    assert value_of(events[4]) == {
        "status": "END",
        "id": "555:2000",
        "event_count": 3,
        "data_collections": [
            {"data_collection": "public.customers", "event_count": 2},
            {"data_collection": "public.orders", "event_count": 1},
        ],
        "ts_ms": COMMIT_US // 1000,
    }
    assert stream.committed == [CommittedTransaction(2008, COMMIT_US, 3)]


def test_transaction_markers_with_schemas() -> None:
    stream = Stream(provide_transaction_metadata=True)
    begin(stream)
    commit(stream)
    begin_event, end_event = stream.events
    key, value = serialize(end_event, True)
    assert key is not None
    assert value is not None
    key_doc, value_doc = json.loads(key), json.loads(value)
    assert key_doc["schema"]["name"] == "io.debezium.connector.common.TransactionMetadataKey"
    assert key_doc["payload"] == {"id": "555:2000"}
    assert value_doc["schema"]["name"] == "io.debezium.connector.common.TransactionMetadataValue"
    assert [f["field"] for f in value_doc["schema"]["fields"]] == [
        "status",
        "id",
        "event_count",
        "data_collections",
        "ts_ms",
    ]
    assert value_doc["payload"] == {
        "status": "END",
        "id": "555:2000",
        "event_count": 0,
        "data_collections": [],
        "ts_ms": COMMIT_US // 1000,
    }
    assert begin_event.topic == end_event.topic == "crm.transaction"


def test_no_transaction_events_without_metadata() -> None:
    stream = Stream()
    begin(stream)
    stream.send(CUSTOMERS_REL, 1001)
    stream.send(Insert(CUSTOMERS, ("1", "Anne")), 1010)
    commit(stream)
    assert records(stream.events) == [("crm.public.customers", {"id": 1}, "c")]
    assert value_of(stream.events[0])["transaction"] is None
