"""Unit tests for cdc/envelope.py: building, serialising and reading Debezium change events.

The ``DEBEZIUM_*`` fixtures reproduce what Debezium's PostgreSQL connector (2.x and 3.x) writes with
Kafka Connect's JsonConverter: compact JSON, every struct field present (``null`` included), the
value envelope wrapped as ``{"schema", "payload"}`` when ``schemas.enable=true``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from unified_profile.cdc.envelope import (
    SourceInfo,
    TableEventBuilder,
    decode_event,
    encode_decoded,
    serialize,
)
from unified_profile.cdc.errors import EnvelopeError
from unified_profile.cdc.model import UNCHANGED_TOAST, Column, PgType, TableShape
from unified_profile.cdc.type_encoding import EncodingOptions

INT4 = PgType(23, "int4", "N")
TEXT = PgType(25, "text", "S")
NUMERIC = PgType(1700, "numeric", "N")
TIMESTAMP = PgType(1114, "timestamp", "D")
TIMESTAMPTZ = PgType(1184, "timestamptz", "D")
TYPES = {t.oid: t for t in (INT4, TEXT, NUMERIC, TIMESTAMP, TIMESTAMPTZ)}


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4


SHAPE = TableShape(
    "public",
    "customers",
    (
        Column("id", 23, part_of_key=True, optional=False),
        Column("name", 25),
        Column("price", 1700, numeric_typmod(10, 2)),
        Column("created", 1114),
        Column("updated", 1184),
    ),
    TYPES,
)

ROW_TEXT = ("1", "Anne", "12.34", "2024-03-01 12:34:56.123456", "2024-03-01 12:34:56.789+00")
CREATED_US = int(datetime(2024, 3, 1, 12, 34, 56, 123456, tzinfo=UTC).timestamp() * 1_000_000)
PRICE_B64 = base64.b64encode((1234).to_bytes(2, "big", signed=True)).decode()  # "BNI="
ROW = {
    "id": 1,
    "name": "Anne",
    "price": PRICE_B64,
    "created": CREATED_US,
    "updated": "2024-03-01T12:34:56.789000Z",
}
COMMIT_US = 1_700_000_000_123_456
NOW_US = 1_700_000_000_999_999

SOURCE = SourceInfo(
    name="crm",
    db="crmdb",
    schema="public",
    table="customers",
    ts_us=COMMIT_US,
    tx_id=555,
    lsn=24023128,
    last_commit_lsn=24023119,
)
SOURCE_PAYLOAD = {
    "version": "unified-profile-0.1.0",
    "connector": "postgresql",
    "name": "crm",
    "ts_ms": 1_700_000_000_123,
    "snapshot": "false",
    "db": "crmdb",
    "sequence": '["24023119","24023128"]',
    "ts_us": COMMIT_US,
    "ts_ns": COMMIT_US * 1000,
    "schema": "public",
    "table": "customers",
    "txId": 555,
    "lsn": 24023128,
    "xmin": None,
}

ID_FIELD = {"type": "int32", "optional": False, "field": "id"}
ROW_FIELDS = [
    ID_FIELD,
    {"type": "string", "optional": True, "field": "name"},
    {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "field": "price",
    },
    {
        "type": "int64",
        "optional": True,
        "name": "io.debezium.time.MicroTimestamp",
        "version": 1,
        "field": "created",
    },
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.time.ZonedTimestamp",
        "version": 1,
        "field": "updated",
    },
]
KEY_SCHEMA = {
    "type": "struct",
    "fields": [ID_FIELD],
    "optional": False,
    "name": "crm.public.customers.Key",
}


def dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


@pytest.fixture
def builder() -> TableEventBuilder:
    return TableEventBuilder("crm", SHAPE, EncodingOptions())


# --- SourceInfo -----------------------------------------------------------------------------


def test_source_payload_in_debezium_3_order() -> None:
    payload = SOURCE.as_payload()
    assert payload == SOURCE_PAYLOAD
    assert list(payload) == [
        "version",
        "connector",
        "name",
        "ts_ms",
        "snapshot",
        "db",
        "sequence",
        "ts_us",
        "ts_ns",
        "schema",
        "table",
        "txId",
        "lsn",
        "xmin",
    ]


def test_sequence_is_a_json_string_of_two_lsn_strings() -> None:
    assert json.loads(SOURCE.as_payload()["sequence"]) == ["24023119", "24023128"]


def test_sequence_before_any_commit_has_null_last_commit() -> None:
    source = SourceInfo("crm", "crmdb", "public", "customers", COMMIT_US, lsn=42)
    assert source.as_payload()["sequence"] == '[null,"42"]'


def test_snapshot_source_without_lsn() -> None:
    source = SourceInfo("crm", "crmdb", "public", "customers", 1_000_999, snapshot="first")
    payload = source.as_payload()
    assert payload["snapshot"] == "first"
    assert payload["ts_ms"] == 1_000
    assert payload["sequence"] is None
    assert payload["txId"] is None
    assert payload["lsn"] is None


# --- TableEventBuilder ----------------------------------------------------------------------


def test_topic_and_key_schema(builder: TableEventBuilder) -> None:
    assert builder.topic == "crm.public.customers"
    assert builder.key_schema == KEY_SCHEMA


def test_row_encoding(builder: TableEventBuilder) -> None:
    assert builder.row(ROW_TEXT) == ROW
    assert builder.row(("2", None, None, None, None)) == {
        "id": 2,
        "name": None,
        "price": None,
        "created": None,
        "updated": None,
    }


def test_unchanged_toast_is_the_placeholder(builder: TableEventBuilder) -> None:
    row = builder.row(("1", UNCHANGED_TOAST, "1.00", None, None))
    assert row["name"] == "__debezium_unavailable_value"


def test_key_only_row_nulls_the_other_columns(builder: TableEventBuilder) -> None:
    assert builder.key_only_row(("7", None, None, None, None)) == {
        "id": 7,
        "name": None,
        "price": None,
        "created": None,
        "updated": None,
    }


def test_row_with_wrong_column_count(builder: TableEventBuilder) -> None:
    with pytest.raises(EnvelopeError, match="tuple has 2 columns, table has 5"):
        builder.row(("1", "Anne"))


def test_table_without_primary_key_is_refused() -> None:
    shape = TableShape("public", "log", (Column("msg", 25),), TYPES)
    with pytest.raises(EnvelopeError, match=r"table public\.log has no primary key"):
        TableEventBuilder("crm", shape, EncodingOptions())


def test_composite_key_in_table_order() -> None:
    shape = TableShape(
        "crm",
        "Order Lines",
        (
            Column("order_id", 23, part_of_key=True, optional=False),
            Column("note", 25),
            Column("line", 23, part_of_key=True, optional=False),
        ),
        TYPES,
    )
    builder = TableEventBuilder("crm", shape, EncodingOptions())
    event = builder.event("c", None, builder.row(("10", "x", "2")), SOURCE, NOW_US)
    assert event.topic == "crm.crm.Order Lines"
    assert serialize(event, False)[0] == b'{"order_id":10,"line":2}'


def test_create_event_exact_json(builder: TableEventBuilder) -> None:
    event = builder.event("c", None, builder.row(ROW_TEXT), SOURCE, NOW_US)
    key, value = serialize(event, schemas_enable=False)
    assert key == b'{"id":1}'
    assert value == (
        b'{"before":null,"after":{"id":1,"name":"Anne","price":"BNI=","created":1709296496123456,'
        b'"updated":"2024-03-01T12:34:56.789000Z"},"source":{"version":"unified-profile-0.1.0",'
        b'"connector":"postgresql","name":"crm","ts_ms":1700000000123,"snapshot":"false",'
        b'"db":"crmdb","sequence":"[\\"24023119\\",\\"24023128\\"]","ts_us":1700000000123456,'
        b'"ts_ns":1700000000123456000,"schema":"public","table":"customers","txId":555,'
        b'"lsn":24023128,"xmin":null},"transaction":null,"op":"c","ts_ms":1700000000999,'
        b'"ts_us":1700000000999999,"ts_ns":1700000000999999000}'
    )
    assert event.lsn == 24023128
    assert not event.is_tombstone


def test_schemas_enable_wraps_key_and_value(builder: TableEventBuilder) -> None:
    event = builder.event("u", builder.row(ROW_TEXT), builder.row(ROW_TEXT), SOURCE, NOW_US)
    key, value = serialize(event, schemas_enable=True)
    assert key is not None
    assert value is not None
    key_doc = json.loads(key)
    value_doc = json.loads(value)
    assert list(key_doc) == ["schema", "payload"]
    assert list(value_doc) == ["schema", "payload"]
    assert key_doc == {"schema": KEY_SCHEMA, "payload": {"id": 1}}
    assert value_doc["payload"] == json.loads(serialize(event, schemas_enable=False)[1] or b"")

    schema = value_doc["schema"]
    assert schema["name"] == "crm.public.customers.Envelope"
    assert schema["optional"] is False
    assert [f["field"] for f in schema["fields"]] == [
        "before",
        "after",
        "source",
        "transaction",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
    ]
    before, after, source, transaction = schema["fields"][:4]
    for row_schema, field in ((before, "before"), (after, "after")):
        assert row_schema == {
            "type": "struct",
            "fields": ROW_FIELDS,
            "optional": True,
            "name": "crm.public.customers.Value",
            "field": field,
        }
    assert source["name"] == "io.debezium.connector.postgresql.Source"
    assert [f["field"] for f in source["fields"]] == list(SOURCE_PAYLOAD)
    assert transaction["name"] == "event.block"
    assert [f["field"] for f in transaction["fields"]] == [
        "id",
        "total_order",
        "data_collection_order",
    ]


def test_delete_then_tombstone(builder: TableEventBuilder) -> None:
    before = builder.key_only_row(("1", None, None, None, None))
    delete = builder.event("d", before, None, SOURCE, NOW_US)
    tombstone = builder.tombstone(delete)

    assert serialize(delete, False)[0] == b'{"id":1}'
    assert json.loads(serialize(delete, False)[1] or b"")["op"] == "d"
    assert tombstone.is_tombstone
    assert tombstone.topic == "crm.public.customers"
    assert tombstone.lsn == delete.lsn
    assert serialize(tombstone, False) == (b'{"id":1}', None)
    assert serialize(tombstone, True) == (dumps({"schema": KEY_SCHEMA, "payload": {"id": 1}}), None)


@pytest.mark.parametrize("schemas_enable", [False, True])
def test_truncate_has_null_key(builder: TableEventBuilder, schemas_enable: bool) -> None:
    truncate = builder.truncate(SOURCE, NOW_US)
    key, value = serialize(truncate, schemas_enable)
    assert key is None
    assert value is not None
    payload = json.loads(value)["payload"] if schemas_enable else json.loads(value)
    assert payload == {
        "before": None,
        "after": None,
        "source": SOURCE_PAYLOAD,
        "transaction": None,
        "op": "t",
        "ts_ms": 1_700_000_000_999,
        "ts_us": NOW_US,
        "ts_ns": NOW_US * 1000,
    }


def test_transaction_block_is_written(builder: TableEventBuilder) -> None:
    block = {"id": "555:24023200", "total_order": 3, "data_collection_order": 2}
    event = builder.event("c", None, builder.row(ROW_TEXT), SOURCE, NOW_US, block)
    assert json.loads(serialize(event, False)[1] or b"")["transaction"] == block


def test_non_ascii_is_written_as_utf8(builder: TableEventBuilder) -> None:
    row = builder.row(("1", "Zoë 名前", None, None, None))
    _, value = serialize(builder.event("c", None, row, SOURCE, NOW_US), False)
    assert value is not None
    assert "Zoë 名前".encode() in value


# --- decoding our own events ----------------------------------------------------------------


def _life_of_a_row(builder: TableEventBuilder) -> tuple[Any, Any, list[Any]]:
    """Insert, update, delete, tombstone and truncate of one row: (old row, new row, events)."""
    old = builder.row(("1", "Anne", "10.00", None, None))
    new = builder.row(ROW_TEXT)
    events = [
        builder.event("c", None, old, SOURCE, NOW_US),
        builder.event("u", old, new, SOURCE, NOW_US),
        builder.event("d", new, None, SOURCE, NOW_US),
    ]
    events.append(builder.tombstone(events[-1]))
    events.append(builder.truncate(SOURCE, NOW_US))
    return old, new, events


@pytest.mark.parametrize("schemas_enable", [False, True])
def test_a_decoded_event_encodes_back_to_bytes_that_decode_the_same(
    builder: TableEventBuilder, schemas_enable: bool
) -> None:
    _, _, events = _life_of_a_row(builder)
    for event in events:
        decoded = decode_event(event.topic, *serialize(event, schemas_enable))
        assert decode_event(event.topic, *encode_decoded(decoded)) == decoded


@pytest.mark.parametrize("schemas_enable", [False, True])
def test_our_events_round_trip(builder: TableEventBuilder, schemas_enable: bool) -> None:
    old = builder.row(("1", "Anne", "10.00", None, None))
    new = builder.row(ROW_TEXT)
    events = [
        builder.event("c", None, old, SOURCE, NOW_US),
        builder.event("u", old, new, SOURCE, NOW_US),
        builder.event("d", new, None, SOURCE, NOW_US),
    ]
    events.append(builder.tombstone(events[-1]))
    events.append(builder.truncate(SOURCE, NOW_US))

    decoded = [decode_event(e.topic, *serialize(e, schemas_enable)) for e in events]

    assert [d.op for d in decoded] == ["c", "u", "d", None, "t"]
    assert [d.key for d in decoded] == [{"id": 1}, {"id": 1}, {"id": 1}, {"id": 1}, None]
    assert [(d.before, d.after) for d in decoded] == [
        (None, old),
        (old, new),
        (new, None),
        (None, None),
        (None, None),
    ]
    assert [d.is_tombstone for d in decoded] == [False, False, False, True, False]
    assert all(d.topic == "crm.public.customers" for d in decoded)
    for d in decoded[:3] + decoded[4:]:
        assert d.source == SOURCE_PAYLOAD
        assert d.lsn == 24023128
        assert d.ts_ms == 1_700_000_000_999
    assert decoded[3].lsn is None
    expected_schema = {f["field"]: f for f in ROW_FIELDS} if schemas_enable else None
    assert decoded[0].row_schema == expected_schema


# --- decoding real Debezium events ----------------------------------------------------------

DBZ_ROW_FIELDS: list[dict[str, Any]] = [
    {"type": "int32", "optional": False, "default": 0, "field": "id"},
    {"type": "string", "optional": True, "field": "first_name"},
    {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "field": "balance",
    },
    {
        "type": "struct",
        "fields": [
            {"type": "int32", "optional": False, "field": "scale"},
            {"type": "bytes", "optional": False, "field": "value"},
        ],
        "optional": True,
        "name": "io.debezium.data.VariableScaleDecimal",
        "version": 1,
        "doc": "Variable scaled decimal",
        "field": "score",
    },
    {
        "type": "int64",
        "optional": True,
        "name": "io.debezium.time.MicroTimestamp",
        "version": 1,
        "field": "created_at",
    },
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.time.ZonedTimestamp",
        "version": 1,
        "field": "updated_at",
    },
    {"type": "string", "optional": True, "field": "bio"},
]

DBZ_SOURCE_FIELDS_3: list[dict[str, Any]] = [
    {"type": "string", "optional": False, "field": "version"},
    {"type": "string", "optional": False, "field": "connector"},
    {"type": "string", "optional": False, "field": "name"},
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.data.Enum",
        "version": 1,
        "parameters": {
            "allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
        },
        "default": "false",
        "field": "snapshot",
    },
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "int64", "optional": True, "field": "ts_us"},
    {"type": "int64", "optional": True, "field": "ts_ns"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
]


def dbz3_value_schema(topic: str) -> dict[str, Any]:
    row = {"type": "struct", "fields": DBZ_ROW_FIELDS, "optional": True, "name": f"{topic}.Value"}
    return {
        "type": "struct",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {
                "type": "struct",
                "fields": DBZ_SOURCE_FIELDS_3,
                "optional": False,
                "name": "io.debezium.connector.postgresql.Source",
                "field": "source",
            },
            {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": False, "field": "id"},
                    {"type": "int64", "optional": False, "field": "total_order"},
                    {"type": "int64", "optional": False, "field": "data_collection_order"},
                ],
                "optional": True,
                "name": "event.block",
                "version": 1,
                "field": "transaction",
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{topic}.Envelope",
        "version": 2,
    }


DBZ_TOPIC = "dbserver1.inventory.customers"
DBZ_KEY_SCHEMA = {
    "type": "struct",
    "fields": [{"type": "int32", "optional": False, "default": 0, "field": "id"}],
    "optional": False,
    "name": f"{DBZ_TOPIC}.Key",
}

DBZ_AFTER = {
    "id": 1001,
    "first_name": "Sally",
    "balance": "BNI=",  # 12.34 as Decimal(10, 2)
    "score": {"scale": 3, "value": "AeI="},  # 0.482
    "created_at": 1737999999123456,
    "updated_at": "2025-01-27T17:46:39.123456Z",
    "bio": "long text",
}


def dbz3_source(lsn: int, last_commit: int | None, snapshot: str = "false") -> dict[str, Any]:
    last = "null" if last_commit is None else f'"{last_commit}"'
    return {
        "version": "3.0.7.Final",
        "connector": "postgresql",
        "name": "dbserver1",
        "ts_ms": 1737999999123,
        "snapshot": snapshot,
        "db": "postgres",
        "sequence": f'[{last},"{lsn}"]',
        "ts_us": 1737999999123456,
        "ts_ns": 1737999999123456000,
        "schema": "inventory",
        "table": "customers",
        "txId": 771,
        "lsn": lsn,
        "xmin": None,
    }


def dbz3_payload(op: str, before: Any, after: Any, lsn: int) -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "source": dbz3_source(lsn, 34495424),
        "transaction": None,
        "op": op,
        "ts_ms": 1737999999500,
        "ts_us": 1737999999500123,
        "ts_ns": 1737999999500123000,
    }


def dbz3_wrapped(payload: dict[str, Any]) -> bytes:
    return dumps({"schema": dbz3_value_schema(DBZ_TOPIC), "payload": payload})


DBZ_KEY_WRAPPED = dumps({"schema": DBZ_KEY_SCHEMA, "payload": {"id": 1001}})

# Debezium 2.1 with schemas.enable=false: no ts_us/ts_ns, transaction last, snapshot read.
DEBEZIUM_2_SNAPSHOT_READ = (
    b'{"before":null,"after":{"id":1001,"first_name":"Sally","balance":"BNI=",'
    b'"score":{"scale":3,"value":"AeI="},"created_at":1737999999123456,'
    b'"updated_at":"2025-01-27T17:46:39.123456Z","bio":"long text"},'
    b'"source":{"version":"2.1.4.Final","connector":"postgresql","name":"dbserver1",'
    b'"ts_ms":1737999990000,"snapshot":"first","db":"postgres","sequence":"[null,\\"23893952\\"]",'
    b'"schema":"inventory","table":"customers","txId":767,"lsn":23893952,"xmin":null},'
    b'"op":"r","ts_ms":1737999990123,"transaction":null}'
)


def test_debezium_3_create_with_schema_wrapper() -> None:
    event = decode_event(
        DBZ_TOPIC, DBZ_KEY_WRAPPED, dbz3_wrapped(dbz3_payload("c", None, DBZ_AFTER, 34495480))
    )
    assert event.op == "c"
    assert event.key == {"id": 1001}
    assert event.before is None
    assert event.after == DBZ_AFTER
    assert event.source == dbz3_source(34495480, 34495424)
    assert event.lsn == 34495480
    assert event.ts_ms == 1737999999500
    assert event.row_schema is not None
    assert list(event.row_schema) == [
        "id",
        "first_name",
        "balance",
        "score",
        "created_at",
        "updated_at",
        "bio",
    ]
    assert event.row_schema["balance"]["name"] == "org.apache.kafka.connect.data.Decimal"
    assert event.row_schema["balance"]["parameters"] == {
        "scale": "2",
        "connect.decimal.precision": "10",
    }
    assert event.row_schema["created_at"]["name"] == "io.debezium.time.MicroTimestamp"
    assert event.row_schema["updated_at"]["name"] == "io.debezium.time.ZonedTimestamp"


def test_debezium_3_create_without_schema_wrapper() -> None:
    payload = dbz3_payload("c", None, DBZ_AFTER, 34495480)
    event = decode_event(DBZ_TOPIC, b'{"id":1001}', dumps(payload))
    assert event.op == "c"
    assert event.key == {"id": 1001}
    assert event.after == DBZ_AFTER
    assert event.lsn == 34495480
    assert event.row_schema is None


def test_debezium_2_snapshot_read_without_schema_wrapper() -> None:
    event = decode_event(DBZ_TOPIC, b'{"id":1001}', DEBEZIUM_2_SNAPSHOT_READ)
    assert event.op == "r"
    assert event.after == DBZ_AFTER
    assert event.source["snapshot"] == "first"
    assert event.source["version"] == "2.1.4.Final"
    assert event.lsn == 23893952
    assert event.ts_ms == 1737999990123


def test_debezium_update_with_unavailable_toast_value() -> None:
    before = {**DBZ_AFTER, "first_name": "Sally"}
    after = {**DBZ_AFTER, "first_name": "Sarah", "bio": "__debezium_unavailable_value"}
    event = decode_event(
        DBZ_TOPIC, DBZ_KEY_WRAPPED, dbz3_wrapped(dbz3_payload("u", before, after, 34495600))
    )
    assert event.op == "u"
    assert event.before == before
    assert event.after is not None
    assert event.after["bio"] == "__debezium_unavailable_value"
    assert event.after["first_name"] == "Sarah"


@pytest.mark.parametrize("tombstone_value", [None, b""])
@pytest.mark.parametrize("wrapped", [False, True])
def test_debezium_delete_then_tombstone(tombstone_value: bytes | None, wrapped: bool) -> None:
    # REPLICA IDENTITY DEFAULT: the old row carries only the key.
    before = {k: (v if k == "id" else None) for k, v in DBZ_AFTER.items()}
    payload = dbz3_payload("d", before, None, 34495700)
    key = DBZ_KEY_WRAPPED if wrapped else b'{"id":1001}'
    value = dbz3_wrapped(payload) if wrapped else dumps(payload)

    delete = decode_event(DBZ_TOPIC, key, value)
    tombstone = decode_event(DBZ_TOPIC, key, tombstone_value)

    assert delete.op == "d"
    assert delete.key == {"id": 1001}
    assert delete.before == before
    assert delete.after is None
    assert not delete.is_tombstone
    assert tombstone.is_tombstone
    assert tombstone.op is None
    assert tombstone.key == {"id": 1001}
    assert (tombstone.before, tombstone.after, tombstone.lsn) == (None, None, None)


@pytest.mark.parametrize("wrapped", [False, True])
def test_debezium_truncate_with_null_key(wrapped: bool) -> None:
    payload = dbz3_payload("t", None, None, 34495800)
    value = dbz3_wrapped(payload) if wrapped else dumps(payload)
    event = decode_event(DBZ_TOPIC, None, value)
    assert event.op == "t"
    assert event.key is None
    assert (event.before, event.after) == (None, None)
    assert event.lsn == 34495800


def test_debezium_truncate_as_documented_without_row_fields() -> None:
    # The documentation's truncate example lists only source, op and ts_ms.
    value = dumps({"source": dbz3_source(46523128, 30662296), "op": "t", "ts_ms": 1559033904961})
    event = decode_event(DBZ_TOPIC, None, value)
    assert event.op == "t"
    assert event.key is None
    assert event.lsn == 46523128


# --- not change events ----------------------------------------------------------------------

OK_SOURCE = {"lsn": 1}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (b'{"id":1}', b"\x80\x81garbage", "t: record value is not JSON: "),
        (b'{"id":1}', b"not json", "t: record value is not JSON: "),
        (b"not json", b'{"op":"c"}', "t: record key is not JSON: "),
        (b'{"id":1}', b"[1,2]", "t: value is list, expected an object"),
        (b'{"id":1}', b'"c"', "t: value is str, expected an object"),
        (b"[1]", None, "t: key is list, expected an object"),
        (None, None, "t: record has neither key nor value"),
        (b'{"id":1}', b"{}", "t: value.op is None, expected one of c, u, d, r, t"),
        (
            b'{"id":1}',
            b'{"op":"x","source":{"lsn":1}}',
            "t: value.op is 'x', expected one of c, u, d, r, t",
        ),
        (
            b'{"id":1}',
            b'{"op":"c","after":{"id":1}}',
            "t: value.source is missing or not an object",
        ),
        (
            b'{"id":1}',
            b'{"op":"c","after":{"id":1},"source":"pg"}',
            "t: value.source is missing or not an object",
        ),
        (b'{"id":1}', b'{"op":"c","source":{"lsn":1}}', "t: op 'c' without value.after"),
        (
            b'{"id":1}',
            b'{"op":"u","before":{"id":1},"after":null,"source":{"lsn":1}}',
            "t: op 'u' without value.after",
        ),
        (b'{"id":1}', b'{"op":"r","source":{"lsn":1}}', "t: op 'r' without value.after"),
        (
            b'{"id":1}',
            b'{"op":"c","after":[1],"source":{"lsn":1}}',
            "t: value.after is list, expected an object",
        ),
        (None, b'{"op":"d","source":{"lsn":1}}', "t: delete without value.before or key"),
    ],
)
def test_not_a_change_event(key: bytes | None, value: bytes | None, message: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_event("t", key, value)
    assert str(info.value).startswith(message)
