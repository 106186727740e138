"""Unit tests for server/engine/mapping.py: Debezium change events → source records, and config.

Events are built as the bytes Kafka would hold (Debezium 3 shapes, with and without the
``{"schema", "payload"}`` wrapper) and read with the real ``decode_event``.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from unified_profile.cdc.config import parse_capture_config, read_config_file
from unified_profile.cdc.envelope import DecodedEvent, decode_event
from unified_profile.cdc.errors import ConfigError
from unified_profile.cdc.identifiers import TableName
from unified_profile.server.engine.mapping import (
    UNAVAILABLE,
    MappingError,
    TableMapping,
    fill_unavailable,
)
from unified_profile.server.engine.mapping_config import (
    MappingConfig,
    load_mapping_config,
    parse_mapping_config,
)
from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TOPIC = "crm.crm.customers"
PLACEHOLDER = "__debezium_unavailable_value"

# --- events ------------------------------------------------------------------------------------


def _logical(type_: str, name: str, field: str, **parameters: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": type_, "optional": True, "name": name, "version": 1}
    if parameters:
        schema["parameters"] = parameters
    return {**schema, "field": field}


ROW_FIELDS: list[dict[str, Any]] = [
    {"type": "int64", "optional": False, "field": "id"},
    {"type": "string", "optional": True, "field": "first_name"},
    {"type": "string", "optional": True, "field": "last_name"},
    {"type": "string", "optional": True, "field": "email"},
    _logical("string", "io.debezium.data.Json", "emails"),
    {"type": "string", "optional": True, "field": "phone"},
    _logical("int32", "io.debezium.time.Date", "birth_date"),
    _logical(
        "bytes",
        "org.apache.kafka.connect.data.Decimal",
        "balance",
        scale="2",
        **{"connect.decimal.precision": "10"},
    ),
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
    _logical("int64", "io.debezium.time.MicroTimestamp", "last_seen"),
    _logical("int64", "io.debezium.time.Timestamp", "created_ms"),
    _logical("string", "io.debezium.time.ZonedTimestamp", "updated_at"),
    _logical("string", "io.debezium.time.ZonedTimestamp", "deleted_at"),
    {"type": "boolean", "optional": True, "field": "active"},
    {"type": "string", "optional": True, "field": "tier"},
    {"type": "string", "optional": True, "field": "notes"},
    _logical("string", "io.debezium.data.Json", "profile"),
]

SALLY: dict[str, Any] = {
    "id": 1001,
    "first_name": " Sally ",
    "last_name": "Smith",
    "email": " Sally.Smith@Example.com ",
    "emails": '["sally@home.example", "N/A", "SALLY@work.example"]',
    "phone": "07700 900123",
    "birth_date": (date(1986, 4, 12) - date(1970, 1, 1)).days,
    "balance": "BNI=",  # 12.34 as numeric(10,2)
    "score": {"scale": 3, "value": "AeI="},  # 0.482
    "last_seen": 1737999999123456,
    "created_ms": 1737999999123,
    "updated_at": "2025-01-27T17:46:39.123456Z",
    "deleted_at": None,
    "active": True,
    "tier": "G",
    "notes": "Prefers phone calls.",
    "profile": '{"address": {"city": "Leeds"}, "tags": ["vip"]}',
}

COMMIT_US = 1737999999500123
LSN = 34495480


def source_block(lsn: int | None = LSN, ts_us: bool = True) -> dict[str, Any]:
    block: dict[str, Any] = {
        "version": "3.0.7.Final",
        "connector": "postgresql",
        "name": "crm",
        "ts_ms": COMMIT_US // 1000,
        "snapshot": "false",
        "db": "crm",
        "sequence": f'["34495424","{lsn}"]',
        "schema": "crm",
        "table": "customers",
        "txId": 771,
        "lsn": lsn,
        "xmin": None,
    }
    if ts_us:
        block["ts_us"] = COMMIT_US
        block["ts_ns"] = COMMIT_US * 1000
    return block


def value_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    row = {"type": "struct", "fields": fields, "optional": True, "name": f"{TOPIC}.Value"}
    return {
        "type": "struct",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "field": "source"},
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
        ],
        "optional": False,
        "name": f"{TOPIC}.Envelope",
        "version": 2,
    }


def event(
    op: str | None,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    *,
    schemas: bool = False,
    key: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> DecodedEvent:
    """A change event as Kafka holds it, decoded by the real decoder."""
    key = key if key is not None else {"id": (after or before or {"id": 1001})["id"]}
    key_schema = {"type": "struct", "fields": ROW_FIELDS[:1], "optional": False}
    key_bytes = json.dumps({"schema": key_schema, "payload": key} if schemas else key).encode()
    if op is None:
        return decode_event(TOPIC, key_bytes, None)
    payload = {
        "before": before,
        "after": after,
        "source": source or source_block(),
        "transaction": None,
        "op": op,
        "ts_ms": COMMIT_US // 1000 + 5,
    }
    wrapped = {"schema": value_schema(ROW_FIELDS), "payload": payload} if schemas else payload
    return decode_event(TOPIC, key_bytes, json.dumps(wrapped).encode())


# --- the mapping under test --------------------------------------------------------------------

IDENTITY: dict[str, Any] = {
    "crm_id": {"max_per_profile": 1},
    "email": {"normalize": ["trim", "lower"], "blocked": ["", "n/a"]},
    "phone": {},
}

TABLE: dict[str, Any] = {
    "table": "crm.customers",
    "version_column": "updated_at",
    "soft_delete": {"column": "deleted_at", "when": "not_null"},
    "identifiers": {
        "crm_id": "id",
        "email": ["email", {"column": "emails", "transform": "each"}],
        "mobile": {"column": "phone", "transform": "e164", "region": "GB", "type": "phone"},
    },
    "fields": {
        "person.given_name": {"column": "first_name", "transform": "trim"},
        "person.full_name": {"columns": ["first_name", "last_name"], "transform": "full_name"},
        "person.birth_date": "birth_date",
        "contact.email": {"column": "email", "transform": ["trim", "lower"]},
        "contact.phone": {"column": "phone", "transform": "e164", "region": "GB"},
        "contact.address.city": {
            "column": "profile",
            "transform": "json_path",
            "path": "$.address.city",
        },
        "crm.customer_id": "id",
        "crm.last_interaction_at": "last_seen",
        "loyalty.points_balance": {"column": "balance", "scale": 2},
        "loyalty.tier": {"column": "tier", "transform": "map", "values": {"G": "gold"}},
        "loyalty.enrolled_at": {"column": "created_ms", "unit": "ms"},
        "traits.score": {"column": "score", "transform": "decimal"},
        "traits.tags": {"column": "profile", "transform": "json_path", "path": "$.tags"},
        "traits.notes": "notes",
    },
}


def config(
    table: dict[str, Any] | None = None, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    # A deep copy: tests edit what they get.
    return copy.deepcopy(
        {
            "sources": [{"name": "crm", "dsn": "host=db", "tables": [table or TABLE]}],
            "identity": IDENTITY if identity is None else identity,
        }
    )


def mapping_of(table: dict[str, Any] | None = None) -> TableMapping:
    compiled = parse_mapping_config(config(table))
    return compiled.tables[("crm", TableName("crm", "customers"))]


def changed_table(**changes: Any) -> dict[str, Any]:
    table = copy.deepcopy(TABLE)
    table.update(changes)
    return table


EXPECTED_FIELDS: dict[str, Any] = {
    "person.given_name": "Sally",
    "person.full_name": "Sally Smith",
    "person.birth_date": "1986-04-12",
    "contact.email": "sally.smith@example.com",
    "contact.phone": "+447700900123",
    "contact.address.city": "Leeds",
    "crm.customer_id": "1001",
    "crm.last_interaction_at": "2025-01-27T17:46:39.123456Z",
    "loyalty.points_balance": 12.34,
    "loyalty.tier": "gold",
    "loyalty.enrolled_at": "2025-01-27T17:46:39.123000Z",
    "traits.score": 0.482,
    "traits.tags": ["vip"],
    "traits.notes": "Prefers phone calls.",
}
EXPECTED_IDENTIFIERS = frozenset(
    {
        Identifier("crm_id", "1001"),
        Identifier("email", "sally.smith@example.com"),
        Identifier("email", "sally@home.example"),
        Identifier("email", "sally@work.example"),  # "N/A" is blocked
        Identifier("phone", "+447700900123"),
    }
)
KEY = RecordKey("crm", "crm.customers", '{"id":1001}')
VERSION = 1737999999123456


# --- live records ------------------------------------------------------------------------------


@pytest.mark.parametrize("schemas", [False, True], ids=["plain", "schema-wrapper"])
@pytest.mark.parametrize("op", ["c", "r", "u"])
def test_a_row_becomes_a_record_with_or_without_schemas(op: str, schemas: bool) -> None:
    before = {**SALLY, "first_name": "Sal"} if op == "u" else None
    record = mapping_of().map_event("crm", event(op, SALLY, before, schemas=schemas))

    assert record == SourceRecord(
        key=KEY,
        fields=EXPECTED_FIELDS,
        identifiers=EXPECTED_IDENTIFIERS,
        version=VERSION,
        commit_time_us=COMMIT_US,
        position=LSN,
        deleted=False,
    )
    json.dumps(record.fields)  # a profile holds only JSON values


def test_commit_time_falls_back_to_milliseconds_and_position_to_zero() -> None:
    # Debezium 2 writes no ts_us; a snapshot read may carry no LSN.
    record = mapping_of().map_event(
        "crm", event("r", SALLY, source=source_block(None, ts_us=False))
    )
    assert (record.commit_time_us, record.position) == (COMMIT_US // 1000 * 1000, 0)


@pytest.mark.parametrize(
    ("version_column", "column", "value", "expected"),
    [
        ("updated_at", "updated_at", "2025-01-27T18:46:39.123456+01:00", VERSION),
        ("last_seen", "last_seen", 1737999999123456, VERSION),  # MicroTimestamp
        ({"column": "created_ms", "unit": "ms"}, "created_ms", 1737999999123, 1737999999123000),
        ("id", "id", 1001, 1001),  # an integer version counter
        ("updated_at", "updated_at", None, None),
    ],
)
def test_version_column(version_column: Any, column: str, value: Any, expected: int | None) -> None:
    mapping = mapping_of(changed_table(version_column=version_column))
    record = mapping.map_event("crm", event("u", {**SALLY, column: value}))
    assert record.version == expected


def test_timestamp_ms_version_is_decoded_by_its_schema() -> None:
    # With schemas the Timestamp logical type says "milliseconds"; no unit needed in the config.
    mapping = mapping_of(changed_table(version_column="created_ms"))
    record = mapping.map_event("crm", event("u", SALLY, schemas=True))
    assert record.version == 1737999999123000


def test_nulls_and_empty_values() -> None:
    row = {
        **SALLY,
        "first_name": None,
        "last_name": "",
        "phone": None,
        "emails": None,
        "email": "n/a",
        "balance": None,
        "profile": "{}",
    }
    record = mapping_of().map_event("crm", event("c", row))
    assert record.fields["person.given_name"] is None
    assert record.fields["person.full_name"] is None
    assert record.fields["contact.phone"] is None
    assert record.fields["contact.address.city"] is None
    assert record.fields["loyalty.points_balance"] is None
    assert record.identifiers == {Identifier("crm_id", "1001")}


# --- deletes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("schemas", [False, True])
def test_delete_gives_a_deleted_record(schemas: bool) -> None:
    record = mapping_of().map_event("crm", event("d", None, SALLY, schemas=schemas))
    assert record == SourceRecord(
        KEY, version=VERSION, commit_time_us=COMMIT_US, position=LSN, deleted=True
    )


def test_delete_with_a_key_only_old_row() -> None:
    # REPLICA IDENTITY DEFAULT: only the key columns are set, so no version is known.
    before = {name: (1001 if name == "id" else None) for name in SALLY}
    record = mapping_of().map_event("crm", event("d", None, before))
    assert (record.deleted, record.version, record.fields, record.identifiers) == (
        True,
        None,
        {},
        frozenset(),
    )


@pytest.mark.parametrize("schemas", [False, True])
def test_tombstone_gives_a_deleted_record_that_supersedes_nothing(schemas: bool) -> None:
    tombstone = event(None, key={"id": 1001}, schemas=schemas)
    assert mapping_of().map_event("crm", tombstone) == SourceRecord(KEY, deleted=True)


@pytest.mark.parametrize(
    ("soft_delete", "row_changes", "deleted"),
    [
        (
            {"column": "deleted_at", "when": "not_null"},
            {"deleted_at": "2025-01-28T00:00:00Z"},
            True,
        ),
        ({"column": "deleted_at", "when": "not_null"}, {}, False),
        ({"column": "active", "when": "false"}, {"active": False}, True),
        ({"column": "active", "when": "false"}, {"active": None}, False),
        ({"column": "tier", "when": "true"}, {"tier": "Y"}, True),
        ({"column": "tier", "equals": ["X", "archived"]}, {"tier": "archived"}, True),
        ({"column": "tier", "equals": "archived"}, {}, False),
        ({"column": "id", "equals": 1001}, {}, True),
    ],
)
def test_soft_delete(
    soft_delete: dict[str, Any], row_changes: dict[str, Any], deleted: bool
) -> None:
    mapping = mapping_of(changed_table(soft_delete=soft_delete))
    record = mapping.map_event("crm", event("u", {**SALLY, **row_changes}))
    assert record.deleted is deleted
    if deleted:
        assert (record.fields, record.identifiers) == ({}, frozenset())
        assert (record.version, record.position) == (VERSION, LSN)


def test_soft_delete_flag_that_is_not_a_boolean() -> None:
    mapping = mapping_of(changed_table(soft_delete={"column": "tier", "when": "true"}))
    with pytest.raises(MappingError, match="soft_delete") as info:
        mapping.map_event("crm", event("u", SALLY))
    assert (info.value.column, info.value.value) == ("tier", "G")


# --- unchanged TOAST ---------------------------------------------------------------------------


def test_unchanged_toast_is_read_from_the_full_old_row() -> None:
    after = {**SALLY, "notes": PLACEHOLDER, "emails": PLACEHOLDER, "first_name": "Sal"}
    record = mapping_of().map_event("crm", event("u", after, SALLY))
    assert record.fields["traits.notes"] == "Prefers phone calls."
    assert record.identifiers == EXPECTED_IDENTIFIERS


@pytest.mark.parametrize("schemas", [False, True])
def test_unchanged_toast_without_old_row_is_marked_unavailable(schemas: bool) -> None:
    after = {**SALLY, "notes": PLACEHOLDER, "emails": PLACEHOLDER, "profile": PLACEHOLDER}
    key_only = {name: (1001 if name == "id" else None) for name in SALLY}
    record = mapping_of().map_event("crm", event("u", after, key_only, schemas=schemas))

    assert record.fields["traits.notes"] is UNAVAILABLE
    assert record.fields["contact.address.city"] is UNAVAILABLE
    assert record.fields["identifiers.email"] is UNAVAILABLE
    assert record.fields["person.given_name"] == "Sally"
    # The primary email column was sent; the jsonb array of extra emails was not.
    assert {i for i in record.identifiers if i.type == "email"} == {
        Identifier("email", "sally.smith@example.com")
    }
    with pytest.raises(TypeError):  # a store that forgets to merge fails loudly
        json.dumps(record.fields)


def test_fill_unavailable_keeps_the_previous_image() -> None:
    mapping = mapping_of()
    previous = mapping.map_event("crm", event("r", SALLY))
    after = {**SALLY, "notes": PLACEHOLDER, "emails": PLACEHOLDER, "email": "sally@new.example"}
    update = mapping.map_event("crm", event("u", after))

    filled = fill_unavailable(update, previous)

    assert filled.fields == {
        **EXPECTED_FIELDS,
        "contact.email": "sally@new.example",
        "traits.notes": "Prefers phone calls.",
    }
    assert filled.identifiers == (
        EXPECTED_IDENTIFIERS - {Identifier("email", "sally.smith@example.com")}
    ) | {
        Identifier("email", "sally@new.example"),
        # Kept: the type's previous identifiers stand in for the array that was not sent, the
        # old primary email among them (the documented approximation).
        Identifier("email", "sally.smith@example.com"),
    }
    assert (filled.version, filled.position) == (update.version, update.position)
    # Nothing stored before: the unavailable paths are left out, not nulled.
    fresh = fill_unavailable(update, None)
    assert "traits.notes" not in fresh.fields and "identifiers.email" not in fresh.fields
    assert fill_unavailable(previous, None) is previous


# --- errors at run time ------------------------------------------------------------------------


def test_a_rejected_value_names_source_table_key_column_transform_and_value() -> None:
    with pytest.raises(MappingError) as info:
        mapping_of().map_event("crm", event("u", {**SALLY, "phone": "12"}))
    error = info.value
    assert (error.source, error.table, error.key) == ("crm", "crm.customers", '{"id":1001}')
    assert (error.column, error.transform, error.value) == ("phone", "e164", "12")
    assert str(error) == (
        "crm/crm.customers, key {\"id\":1001}, column 'phone', transform e164: "
        "not a valid phone number for its country (value '12')"
    )


def test_on_invalid_null_keeps_the_record() -> None:
    table = copy.deepcopy(TABLE)
    table["fields"]["contact.phone"]["on_invalid"] = "null"
    table["identifiers"]["mobile"]["on_invalid"] = "null"
    record = mapping_of(table).map_event("crm", event("u", {**SALLY, "phone": "12"}))
    assert record.fields["contact.phone"] is None
    assert Identifier("phone", "+447700900123") not in record.identifiers


def test_a_schemaless_base64_decimal_needs_its_scale() -> None:
    table = copy.deepcopy(TABLE)
    table["fields"]["loyalty.points_balance"] = "balance"
    with pytest.raises(MappingError, match=r"declare the column's scale") as info:
        mapping_of(table).map_event("crm", event("u", SALLY))
    assert (info.value.column, info.value.transform) == ("balance", "as number")
    # With the schema wrapper the scale comes from the event.
    record = mapping_of(table).map_event("crm", event("u", SALLY, schemas=True))
    assert record.fields["loyalty.points_balance"] == 12.34


def test_a_value_that_does_not_match_its_schema() -> None:
    with pytest.raises(MappingError) as info:
        mapping_of().map_event("crm", event("u", {**SALLY, "balance": "not base64!"}, schemas=True))
    assert info.value.transform == "decode org.apache.kafka.connect.data.Decimal"
    assert info.value.column == "balance"


def test_an_unknown_map_value_and_a_missing_column() -> None:
    with pytest.raises(MappingError, match="no mapping for this value") as info:
        mapping_of().map_event("crm", event("u", {**SALLY, "tier": "P"}))
    assert info.value.transform == "map"
    row = {k: v for k, v in SALLY.items() if k != "first_name"}
    with pytest.raises(MappingError, match=r"'first_name'.*not in the event's row"):
        mapping_of().map_event("crm", event("u", row))


def test_truncate_is_not_a_record() -> None:
    payload = {"before": None, "after": None, "source": source_block(), "op": "t", "ts_ms": 1}
    truncate = decode_event(TOPIC, None, json.dumps(payload).encode())
    with pytest.raises(MappingError, match="truncate"):
        mapping_of().map_event("crm", truncate)


# --- configuration errors ----------------------------------------------------------------------


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_mapping_config(data, file="unified-profile.toml")
    assert info.value.file == "unified-profile.toml"
    return info.value.problems


def test_an_unknown_field_path_is_reported_with_its_key_path_and_a_suggestion() -> None:
    data = config()
    data["sources"].insert(0, {"name": "loyalty", "dsn": "x", "tables": [{"table": "members"}]})
    data["sources"][1]["tables"][0]["fields"]["loyalty.teir"] = "tier"
    with pytest.raises(ConfigError) as info:
        parse_mapping_config(data, file="unified-profile.toml")
    assert str(info.value) == (
        'invalid configuration\n  unified-profile.toml: sources[1].tables[0].fields."loyalty.teir": '
        "unknown profile field (did you mean loyalty.tier?)"
    )


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        (
            {"fields": {"contact.phone": {"column": "phone", "transform": "e164", "regoin": "GB"}}},
            'fields."contact.phone".regoin',
            "unknown option (did you mean region?)",
        ),
        (
            {"fields": {"contact.email": {"column": "email", "transform": ["trim", "lowr"]}}},
            'fields."contact.email"',
            "unknown transform 'lowr' (did you mean lower?)",
        ),
        (
            {"fields": {"person.full_name": {"columns": ["first_name", "last_name"]}}},
            'fields."person.full_name"',
            "several columns need a transform that combines them (concat, full_name)",
        ),
        (
            {"fields": {"contact.email": {"column": "emails", "transform": "each"}}},
            'fields."contact.email"',
            "each gives a list, and this field holds one string",
        ),
        (
            {"fields": {"loyalty.points_balance": {"column": "p", "transform": "divide"}}},
            'fields."loyalty.points_balance"',
            "transform 'divide': `by` must be a non-zero number (got None)",
        ),
        (
            {"fields": {"person.given_name": {"column": "a", "columns": ["b"]}}},
            'fields."person.given_name"',
            "set exactly one of column or columns",
        ),
        (
            {"fields": {"person.given_name": 5}},
            'fields."person.given_name"',
            "must be a column name or a table with column or columns",
        ),
        (
            {"fields": {"person.given_name": {"column": "a", "on_invalid": "skip"}}},
            'fields."person.given_name".on_invalid',
            'must be "reject" or "null"',
        ),
        (
            {"fields": {"person.given_name": {"column": "a", "type": "email"}}},
            'fields."person.given_name".type',
            "only identifiers have a type (a declared type's name)",
        ),
        (
            {"fields": {"consent.push": "push"}},
            'fields."consent.push"',
            "consent.push is a group of fields, map one of them (consent.push.granted, "
            "consent.push.updated_at)",
        ),
        (
            {"identifiers": {"emial": "email"}},
            "identifiers.emial",
            "unknown identifier type 'emial' (did you mean email?); declare it as [identity.emial]",
        ),
        (
            {"identifiers": {"email": ["email", {"column": "emails", "transform": "eech"}]}},
            "identifiers.email[1]",
            "unknown transform 'eech' (did you mean each?)",
        ),
        (
            {"identifiers": {"email": []}},
            "identifiers.email",
            "an empty list maps nothing",
        ),
    ],
)
def test_column_spec_problems(change: dict[str, Any], path: str, problem: str) -> None:
    table = {"table": "crm.customers", **change}
    assert problems(config(table)) == [(f"sources[0].tables[0].{path}", problem)]


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        (
            {"soft_delete": {"column": "deleted_at"}},
            "soft_delete",
            'set exactly one of when ("not_null", "true", "false") or equals',
        ),
        (
            {"soft_delete": {"column": "d", "when": "yes"}},
            "soft_delete.when",
            "Input should be 'not_null', 'true' or 'false'",
        ),
        (
            {"soft_delete": {"column": "d", "equals": [1.5]}},
            "soft_delete",
            "equals must be a string, an integer, a boolean, or a list of them",
        ),
        (
            {"version_column": {"column": "v", "unti": "ms"}},
            "version_column.unti",
            "unknown key (check its spelling and the README's configuration reference)",
        ),
        (
            {"version_column": {"column": "v", "unit": "h"}},
            "version_column.unit",
            "Input should be 's', 'ms', 'us' or 'ns'",
        ),
        (
            {"feilds": {}},
            "feilds",
            "unknown key (check its spelling and the README's configuration reference)",
        ),
    ],
)
def test_table_key_problems(change: dict[str, Any], path: str, problem: str) -> None:
    table = {"table": "crm.customers", **change}
    assert problems(config(table)) == [(f"sources[0].tables[0].{path}", problem)]


def test_identity_section_problems() -> None:
    identity = {
        "email": {"normalize": ["trim", "lowercase"]},
        "phone": {"max_per_profile": 0},
    }
    assert problems(config({"table": "t"}, identity)) == [
        ("identity.phone.max_per_profile", "Input should be greater than or equal to 1")
    ]
    identity = {"email": {"normalize": ["trim", "lowercase"]}, "crm_id": {"blocked": ["^[0-"]}}
    found = problems(config({"table": "t", "identifiers": {"email": "email"}}, identity))
    assert found[0] == ("identity.email", "unknown normalize step(s) ['lowercase']")
    assert found[1][0] == "identity.crm_id" and "blocked regex" in found[1][1]
    assert len(found) == 2  # the table's use of the invalid type is not reported again


def test_several_problems_are_reported_together() -> None:
    table = {
        "table": "crm.customers",
        "identifiers": {"emial": "email"},
        "fields": {
            "loyalty.teir": "tier",
            "person.given_name": {"column": "f", "transform": "trm"},
        },
    }
    assert [path for path, _ in problems(config(table))] == [
        'sources[0].tables[0].fields."loyalty.teir"',
        'sources[0].tables[0].fields."person.given_name"',
        "sources[0].tables[0].identifiers.emial",
    ]


def test_identity_types_are_built_with_the_identity_modules_defaults() -> None:
    compiled = parse_mapping_config(config())
    email = compiled.identity_types["email"]
    assert (email.name, email.normalize, email.blocked) == ("email", ("trim", "lower"), ("", "n/a"))
    phone = compiled.identity_types["phone"]
    assert phone.normalize == ("trim",) and phone.is_blocked("anonymous")
    assert compiled.identity_types["crm_id"].max_per_profile == 1


def test_quoted_names_and_topic_lookup() -> None:
    table = {
        "table": 'workspace_7f3a."person"',
        "version_column": '"updatedAt"',
        "identifiers": {"crm_id": '"id"'},
        "fields": {"person.given_name": '"nameFirstName"'},
    }
    compiled = parse_mapping_config(config(table))
    found = compiled.for_topic("crm.workspace_7f3a.person")
    assert found is not None and found[0] == "crm"
    assert compiled.for_topic("crm.workspace_7f3a.Person") is None
    assert isinstance(compiled, MappingConfig)


# --- the shipped examples ----------------------------------------------------------------------


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "UP_STORE_DSN",
        "UP_CRM_DSN",
        "UP_LOYALTY_DSN",
        "UP_ACME_DSN",
        "UP_TOKEN_LOYALTY",
        "UP_TOKEN_CRM",
    ):
        monkeypatch.setenv(name, "host=127.0.0.1 dbname=example")


@pytest.mark.usefixtures("example_env")
@pytest.mark.parametrize(
    ("example", "tables"),
    [
        (
            "demo",
            {
                ("crm", "crm.customers"),
                ("crm", "crm.contact_details"),
                ("crm", "crm.consents"),
                ("crm", "crm.service_cases"),
                ("loyalty", "loyalty.members"),
                ("loyalty", "loyalty.points_ledger"),
                ("loyalty", "loyalty.redemptions"),
            },
        ),
        (
            "acme",
            {("acme", "workspace_7f3a.person"), ("acme", "workspace_7f3a.marketingPreference")},
        ),
    ],
)
def test_example_configs_are_valid(example: str, tables: set[tuple[str, str]]) -> None:
    path = EXAMPLES / example / "unified-profile.toml"
    compiled = load_mapping_config(path)
    assert {(source, str(table)) for source, table in compiled.tables} == tables
    # Capture reads the same file: its sections must validate too.
    capture = parse_capture_config(read_config_file(path), file=str(path))
    assert {(s.name, str(t.table)) for s in capture.sources for t in s.tables} == tables
    for name in ("schema.sql", "seed.sql"):
        assert (EXAMPLES / example / name).stat().st_size > 0


@pytest.mark.usefixtures("example_env")
@pytest.mark.parametrize("schemas", [False, True])
def test_acme_person_maps_camel_case_composite_columns(schemas: bool) -> None:
    compiled = load_mapping_config(EXAMPLES / "acme" / "unified-profile.toml")
    found = compiled.for_topic("acme.workspace_7f3a.person")
    assert found is not None
    source, mapping = found
    person = {
        "id": "0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0002",
        "nameFirstName": "Raj",
        "nameLastName": " Mehta",
        "emailsPrimaryEmail": "raj@mehta.example",
        "emailsAdditionalEmails": '["raj.mehta@oldjob.example", "RAJ@Personal.example"]',
        "phonesPrimaryPhoneNumber": "20 7946 0002",
        "phonesPrimaryPhoneCallingCode": "+44",
        "addressAddressStreet1": "5 Canal Wharf",
        "addressAddressStreet2": None,
        "addressAddressCity": "London",
        "addressAddressState": None,
        "addressAddressPostcode": "e14 5ab",
        "addressAddressCountry": "Atlantis",
        "jobTitle": "",
        "customFields": '{"birthday": "1990-02-28", "tags": ["vip", "b2b"]}',
        "lifetimeValueAmountMicros": 250000000,
        "lifetimeValueCurrencyCode": "GBP",
        "position": 2.0,
        "createdAt": "2024-01-10T12:00:00Z",
        "updatedAt": "2024-12-01T12:00:00.000000Z",
        "deletedAt": None,
    }
    fields = [{"type": "string", "optional": True, "field": name} for name in person]
    payload = {"before": None, "after": person, "source": source_block(), "op": "c", "ts_ms": 1}
    value = {"schema": value_schema(fields), "payload": payload} if schemas else payload
    decoded = decode_event(
        "acme.workspace_7f3a.person",
        json.dumps({"id": person["id"]}).encode(),
        json.dumps(value).encode(),
    )

    record = mapping.map_event(source, decoded)

    assert record.fields == {
        "person.given_name": "Raj",
        "person.family_name": "Mehta",
        "person.full_name": "Raj Mehta",
        "person.birth_date": "1990-02-28",
        "contact.email": "raj@mehta.example",
        "contact.phone": "+442079460002",
        "contact.address.lines": ["5 Canal Wharf"],
        "contact.address.city": "London",
        "contact.address.region": None,
        "contact.address.postal_code": "E14 5AB",
        "contact.address.country": None,  # not in the map, and on_invalid = "null"
        "crm.customer_id": "0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0002",
        "traits.job_title": None,
        "traits.preferred_store": None,
        "traits.tags": ["vip", "b2b"],
        "traits.lifetime_value": 250,
        "traits.lifetime_value_currency": "GBP",
    }
    assert record.identifiers == {
        Identifier("acme_person_id", "0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0002"),
        Identifier("email", "raj@mehta.example"),
        Identifier("email", "raj.mehta@oldjob.example"),
        Identifier("email", "raj@personal.example"),
        Identifier("phone", "+442079460002"),
    }
    assert record.version == 1733054400000000
    deleted = {**person, "deletedAt": "2025-01-01T00:00:00Z"}
    payload = {**payload, "op": "u", "after": deleted}
    soft = decode_event("acme.workspace_7f3a.person", b'{"id":"x"}', json.dumps(payload).encode())
    assert mapping.map_event(source, soft).deleted
