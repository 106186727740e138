"""Unit tests for the value layer of the mapping: Debezium value decoding, transforms, field writers.

Covers ``server/engine/debezium_values.py`` (what our connector and Debezium write, read back),
``server/engine/transforms.py`` (every transform, its options and its errors) and the profile side
of ``server/engine/profile_paths.py`` (field paths, kinds, and how each kind is written).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from unified_profile.cdc.model import UNCHANGED_TOAST, Column, PgType
from unified_profile.cdc.type_encoding import EncodingOptions, build_field_encoder
from unified_profile.server.engine.debezium_values import (
    UNAVAILABLE,
    TimeUnit,
    decimal_from_base64,
    is_unavailable,
    schema_decoder,
    to_date,
    to_datetime,
    to_decimal,
    to_epoch_micros,
)
from unified_profile.server.engine.profile_paths import (
    PROFILE_FIELDS,
    ValueKind,
    field_writer,
    is_valid_path,
    kind_of,
    path_problem,
    to_bool,
)
from unified_profile.server.engine.transforms import (
    TRANSFORM_NAMES,
    TransformError,
    compile_chain,
    parse_json_path,
)


def run(transform: Any, value: Any, **options: Any) -> Any:
    chain, _ = compile_chain(transform, options)
    return chain(value)


def rejects(transform: Any, value: Any, **options: Any) -> TransformError:
    with pytest.raises(TransformError) as info:
        run(transform, value, **options)
    return info.value


def bad_options(transform: Any, **options: Any) -> str:
    with pytest.raises(ValueError) as info:
        compile_chain(transform, options)
    return str(info.value)


# --- Debezium values: what the connector writes, the engine reads back ----------------------

TYPES = {
    "bool": PgType(16, "bool", "B"),
    "int8": PgType(20, "int8", "N"),
    "text": PgType(25, "text", "S"),
    "bytea": PgType(17, "bytea", "U"),
    "jsonb": PgType(3802, "jsonb", "U"),
    "float8": PgType(701, "float8", "N"),
    "numeric": PgType(1700, "numeric", "N"),
    "money": PgType(790, "money", "N"),
    "date": PgType(1082, "date", "D"),
    "time": PgType(1083, "time", "D"),
    "timetz": PgType(1266, "timetz", "D"),
    "timestamp": PgType(1114, "timestamp", "D"),
    "timestamptz": PgType(1184, "timestamptz", "D"),
    "interval": PgType(1186, "interval", "T"),
    "uuid": PgType(2950, "uuid", "U"),
    "hstore": PgType(90001, "hstore", "U"),
    "int4": PgType(23, "int4", "N"),
}
TYPES["_text"] = PgType(1009, "_text", "A", element=TYPES["text"])
TYPES["_int4"] = PgType(1007, "_int4", "A", element=TYPES["int4"])
TYPES["_uuid"] = PgType(2951, "_uuid", "A", element=TYPES["uuid"])
TYPES["_date"] = PgType(1182, "_date", "A", element=TYPES["date"])


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4


def connector_encoding(type_name: str, text: str | object, typmod: int = -1) -> tuple[Any, Any]:
    """What our connector writes for a value: (JSON value, field schema)."""
    column = Column("c", TYPES[type_name].oid, typmod)
    encoder = build_field_encoder(column, TYPES[type_name], EncodingOptions())
    return encoder.encode(text), encoder.schema  # type: ignore[arg-type]


def decoded(type_name: str, text: str, typmod: int = -1) -> Any:
    value, schema = connector_encoding(type_name, text, typmod)
    decoder = schema_decoder(schema)
    return value if decoder is None or value is None else decoder(value)


@pytest.mark.parametrize(
    ("type_name", "text", "typmod", "expected"),
    [
        ("numeric", "12.34", numeric_typmod(10, 2), Decimal("12.34")),
        ("numeric", "-0.05", numeric_typmod(10, 2), Decimal("-0.05")),
        ("numeric", "1234567890123.456789", -1, Decimal("1234567890123.456789")),
        ("numeric", "NaN", numeric_typmod(10, 2), None),  # Debezium writes null
        ("money", "$1,234.56", -1, Decimal("1234.56")),
        ("date", "1986-04-12", -1, date(1986, 4, 12)),
        ("date", "infinity", -1, None),  # Debezium's constant: no finite date
        (
            "timestamp",
            "2025-01-27 17:46:39.123456",
            -1,
            datetime(2025, 1, 27, 17, 46, 39, 123456, UTC),
        ),
        ("timestamp", "2025-01-27 17:46:39.123", 3, datetime(2025, 1, 27, 17, 46, 39, 123000, UTC)),
        ("timestamp", "infinity", -1, None),
        (
            "timestamptz",
            "2024-03-01 10:34:56.5+00",
            -1,
            datetime(2024, 3, 1, 10, 34, 56, 500000, UTC),
        ),
        ("timestamptz", "infinity", -1, None),
        ("time", "12:34:56.5", -1, time(12, 34, 56, 500000)),
        ("time", "12:34:56.5", 3, time(12, 34, 56, 500000)),
        ("timetz", "10:34:56+02", -1, time(8, 34, 56, tzinfo=UTC)),
        ("interval", "1 day 02:00:00", -1, timedelta(days=1, hours=2)),
        ("float8", "NaN", -1, float("nan")),
        ("bool", "t", -1, True),
        ("int8", "42", -1, 42),
        ("text", "hello", -1, "hello"),
        ("jsonb", '{"a": 1}', -1, '{"a": 1}'),
        (
            "uuid",
            "0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0001",
            -1,
            "0c7a8e52-1d8b-4b0e-9a57-3f1f2b6c0001",
        ),
        ("_date", "{1986-04-12,NULL}", -1, [date(1986, 4, 12), None]),
    ],
)
def test_schema_decoding_reads_back_what_the_connector_writes(
    type_name: str, text: str, typmod: int, expected: Any
) -> None:
    result = decoded(type_name, text, typmod)
    if isinstance(expected, float):  # NaN
        assert isinstance(result, float) and result != result
    else:
        assert result == expected


def test_schema_decoding_of_real_debezium_fields() -> None:
    nano = {"type": "int64", "name": "io.debezium.time.NanoTimestamp", "field": "t"}
    micro_time = {"type": "int64", "name": "io.debezium.time.MicroTime", "field": "t"}
    decimal = {
        "type": "bytes",
        "name": "org.apache.kafka.connect.data.Decimal",
        "parameters": {"scale": "2", "connect.decimal.precision": "10"},
    }
    assert schema_decoder(nano)(1737999999123456789) == datetime(  # type: ignore[misc]
        2025, 1, 27, 17, 46, 39, 123456, UTC
    )
    assert schema_decoder(micro_time)(86_399_999_999) == time(23, 59, 59, 999999)  # type: ignore[misc]
    assert schema_decoder(decimal)("BNI=") == Decimal("12.34")  # type: ignore[misc]
    assert schema_decoder({"type": "string", "field": "x"}) is None
    assert schema_decoder({"type": "array", "items": {"type": "string"}}) is None
    with pytest.raises(ValueError, match="scale"):
        schema_decoder({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal"})


@pytest.mark.parametrize(
    ("type_name", "typmod"),
    [
        ("text", -1),
        ("jsonb", -1),
        ("bytea", -1),
        ("hstore", -1),
        ("_text", -1),
        ("_int4", -1),
        ("_uuid", -1),
        ("_date", -1),
    ],
)
def test_every_shape_of_the_toast_placeholder_is_recognised(type_name: str, typmod: int) -> None:
    value, _ = connector_encoding(type_name, UNCHANGED_TOAST, typmod)
    assert is_unavailable(value)


@pytest.mark.parametrize(
    "value", ["__debezium_unavailable_value ", "hello", "", ["a"], [1, 2], None, 0, {"a": 1}]
)
def test_ordinary_values_are_not_the_placeholder(value: Any) -> None:
    assert not is_unavailable(value)


def test_debezium_placeholder_and_marker() -> None:
    assert is_unavailable("__debezium_unavailable_value")
    assert is_unavailable(UNAVAILABLE)
    assert repr(UNAVAILABLE) == "UNAVAILABLE"


def test_schemaless_decimals() -> None:
    assert to_decimal("BNI=", scale=2) == Decimal("12.34")
    assert to_decimal("AeJA", scale=2) == Decimal("1234.56")
    assert to_decimal("/w==", scale=0) == Decimal(-1)  # two's complement
    assert to_decimal({"scale": 3, "value": "AeI="}) == Decimal("0.482")
    assert to_decimal("123.4500") == Decimal("123.4500")  # decimal.handling.mode=string
    assert to_decimal(123.45) == Decimal("123.45")  # decimal.handling.mode=double
    assert to_decimal(7) == Decimal(7)
    assert to_decimal(None) is None
    with pytest.raises(ValueError, match=r"declare the column's scale \(scale = N\)"):
        to_decimal("BNI=")
    with pytest.raises(ValueError, match="not a base64"):
        decimal_from_base64("not base64!", 2)
    with pytest.raises(ValueError, match="boolean"):
        to_decimal(True)
    with pytest.raises(ValueError, match="finite"):
        to_decimal(float("inf"))


def test_schemaless_instants_and_dates() -> None:
    sally = datetime(2025, 1, 27, 17, 46, 39, 123456, UTC)
    assert to_datetime(1737999999123456) == sally  # MicroTimestamp, the default unit
    assert to_datetime(1737999999123, TimeUnit.MS) == sally.replace(microsecond=123000)
    assert to_datetime(1737999999, TimeUnit.S) == sally.replace(microsecond=0)
    assert to_datetime(1737999999123456789, TimeUnit.NS) == sally
    assert to_datetime("2025-01-27T17:46:39.123456Z") == sally  # ZonedTimestamp
    assert to_datetime("2025-01-27T18:46:39.123456+01:00") == sally.astimezone(
        timezone(timedelta(hours=1))
    )
    assert to_datetime("2025-01-27 17:46:39.123456") == sally  # text without zone: UTC
    assert to_datetime("1737999999123456") == sally
    assert to_datetime(date(2025, 1, 27)) == datetime(2025, 1, 27, tzinfo=UTC)
    assert to_datetime("infinity") is None
    with pytest.raises(ValueError, match="ISO-8601"):
        to_datetime("last tuesday")
    assert to_date(20115) == date(2025, 1, 27)  # io.debezium.time.Date
    assert to_date("2025-01-27") == date(2025, 1, 27)
    assert to_date("2025-01-27T23:30:00-02:00") == date(2025, 1, 28)  # its UTC date
    assert to_date(sally) == date(2025, 1, 27)
    with pytest.raises(ValueError, match="ISO-8601 date"):
        to_date("27/01/2025")


def test_version_values_become_microseconds_or_stay_integers() -> None:
    assert to_epoch_micros("2025-01-27T17:46:39.123456Z") == 1737999999123456
    assert to_epoch_micros(datetime(2025, 1, 27, 17, 46, 39, 123456, UTC)) == 1737999999123456
    assert to_epoch_micros(date(1970, 1, 2)) == 86_400_000_000
    assert to_epoch_micros(42) == 42  # a counter stays itself
    assert to_epoch_micros(1737999999123, TimeUnit.MS) == 1737999999123000
    assert to_epoch_micros(Decimal(7)) == 7
    assert to_epoch_micros(None) is None
    with pytest.raises(ValueError):
        to_epoch_micros(True)
    with pytest.raises(ValueError):
        to_epoch_micros(Decimal("1.5"))


# --- transforms --------------------------------------------------------------------------------


def test_every_transform_is_covered_here() -> None:
    covered = {
        "trim",
        "lower",
        "upper",
        "e164",
        "divide",
        "map",
        "null_if",
        "json_path",
        "each",
        "concat",
        "full_name",
        "date",
        "timestamp",
        "decimal",
        "bool",
    }
    assert covered == TRANSFORM_NAMES


def test_trim_lower_upper() -> None:
    assert run("trim", "  Sally \n") == "Sally"
    assert run("lower", "Sally@Example.COM") == "sally@example.com"
    assert run("upper", "ls1 6dt") == "LS1 6DT"
    assert run(["trim", "lower"], "  A@B.C ") == "a@b.c"
    assert run("trim", 42) == 42  # not text: untouched, the field's writer decides
    assert run("trim", None) is None


def test_e164() -> None:
    assert run("e164", "07700 900123", region="GB") == "+447700900123"
    assert run("e164", "(0113) 496 0003", region="gb") == "+441134960003"
    assert run("e164", "+1 (415) 555-2671") == "+14155552671"
    assert run("e164", "+33 6 12 34 56 78", region="GB") == "+33612345678"
    assert run("e164", "   ", region="GB") is None
    error = rejects("e164", "12", region="GB")
    assert error.transform == "e164" and error.value == "12"
    assert "not a valid phone number" in str(error)
    error = rejects("e164", "07700 900123")
    assert "set region for numbers without a country code" in error.reason
    assert rejects("e164", "call me", region="GB").transform == "e164"
    # strict: a number that could exist versus one that is in service
    assert run("e164", "+1 555 555 5555") == "+15555555555"
    assert rejects("e164", "+1 555 555 5555", strict=True).transform == "e164"
    assert "ISO 3166" in bad_options("e164", region="UK")


def test_divide() -> None:
    assert run("divide", 1234, by=100) == Decimal("12.34")
    assert run("divide", 1873450000, by=1_000_000) == Decimal("1873.45")
    assert run("divide", "BNI=", by=100, scale=0) == Decimal("12.34")  # base64 numeric(10,0)
    assert run("divide", Decimal("5"), by=2) == Decimal("2.5")
    assert run("divide", 5, by=0.5) == Decimal(10)
    error = rejects("divide", "twelve", by=100)
    assert error.transform == "divide" and error.value == "twelve"
    assert "non-zero" in bad_options("divide", by=0)
    assert "non-zero" in bad_options("divide")


def test_map() -> None:
    tiers = {"values": {"G": "gold", "S": "silver", "1": "one", "true": "yes"}}
    assert run("map", "G", **tiers) == "gold"
    assert run("map", 1, **tiers) == "one"
    assert run("map", True, **tiers) == "yes"
    assert run("map", "X", **tiers, default="basic") == "basic"
    assert run("map", "X", **tiers, default=None) is None
    error = rejects("map", "X", **tiers)
    assert "no mapping for this value (known: 1, G, S, true; or set `default`)" in str(error)
    assert "needs `values`" in bad_options("map", values={})


def test_null_if() -> None:
    placeholders = {"values": ["", "n/a", "Unknown", -1]}
    assert run("null_if", " N/A ", **placeholders) is None
    assert run("null_if", "unknown", **placeholders) is None
    assert run("null_if", -1, **placeholders) is None
    assert run("null_if", "sally@example.com", **placeholders) == "sally@example.com"
    assert "needs `values`" in bad_options("null_if", values="n/a")


def test_json_path() -> None:
    doc = '{"address": {"city": "Leeds", "lines": ["12 Market St", "Flat 3"]}, "a key": 1}'
    assert run("json_path", doc, path="$.address.city") == "Leeds"
    assert run("json_path", doc, path="$.address.lines[1]") == "Flat 3"
    assert run("json_path", doc, path="$.address.lines[-1]") == "Flat 3"
    assert run("json_path", doc, path="$['a key']") == 1
    assert run("json_path", doc, path="$.address") == {
        "city": "Leeds",
        "lines": ["12 Market St", "Flat 3"],
    }
    assert run("json_path", doc, path="$.address.lines[5]") is None
    assert run("json_path", doc, path="$.missing.deeper") is None
    assert run("json_path", doc, path="$.address.city.deeper") is None
    assert run("json_path", {"already": "parsed"}, path="$.already") == "parsed"
    assert rejects("json_path", "{not json", path="$.a").reason == "not JSON"
    assert parse_json_path('$.a["b c"][0]') == ("a", "b c", 0)
    assert "starts with $" in bad_options("json_path", path="address.city")
    assert "at position 4" in bad_options("json_path", path="$.a..b")
    assert "needs `path`" in bad_options("json_path")


def test_each() -> None:
    assert run("each", '["a@x.com", "b@x.com"]') == ["a@x.com", "b@x.com"]
    assert run("each", ["a", "b"]) == ["a", "b"]  # an SQL array arrives as a list already
    assert run("each", "[]") == []
    assert run("each", '[{"email": "a@x"}, {"kind": "work"}]', path="$.email") == ["a@x", None]
    assert run(["each", "trim", "lower"], '[" A@X.COM ", null]') == ["a@x.com", None]
    assert rejects("each", '{"a": 1}').reason == "not a JSON array"


def test_concat_and_full_name() -> None:
    assert run("concat", ["+44", "7700 900123"], sep=" ") == "+44 7700 900123"
    assert run("concat", ["a", None, "", "b"]) == "ab"
    assert run("concat", [None, "  "]) is None
    assert run("full_name", ["  Sally ", None, "", "Smith"]) == "Sally Smith"
    assert run("full_name", ["Mary  Ann", "Jones"]) == "Mary Ann Jones"
    assert run("full_name", [None, None]) is None
    assert run("full_name", None) is None
    assert run("full_name", "Cher") == "Cher"
    assert "sep must be a string" in bad_options("concat", sep=1)


def test_date_timestamp_decimal_bool_transforms() -> None:
    assert run("date", 20115) == date(2025, 1, 27)
    assert run("timestamp", 1737999999123, unit="ms") == datetime(
        2025, 1, 27, 17, 46, 39, 123000, UTC
    )
    assert run("decimal", "BNI=", scale=2) == Decimal("12.34")
    assert run("bool", "Y") is True
    assert run("bool", "f") is False
    assert run("bool", 0) is False
    assert rejects("date", "tomorrow").transform == "date"
    assert rejects("timestamp", "soon").transform == "timestamp"
    assert rejects("decimal", "BNI=").transform == "decimal"
    error = rejects("bool", "maybe")
    assert error.transform == "bool" and "expected t/f, Y/N" in error.reason
    assert "unit must be one of" in bad_options("timestamp", unit="minutes")
    assert "scale must be an integer" in bad_options("decimal", scale="2")


def test_chains() -> None:
    phone = [{"name": "concat", "sep": " "}, {"name": "e164", "region": "GB"}]
    assert run(phone, ["+44", "7700 900123"]) == "+447700900123"
    # A scalar step applies to each element of a list; NULL elements stay NULL.
    assert run(["trim", "upper"], [" a ", None, "b"]) == ["A", None, "B"]
    # NULL stops the chain before steps that would reject it.
    assert run(["trim", "e164"], None, region="GB") is None
    # The error names the step that failed and the value it was given.
    error = rejects(["trim", "e164"], [" 07700 900123 ", " 12 "], region="GB")
    assert (error.transform, error.value) == ("e164", "12")
    assert str(error) == "e164: not a valid phone number for its country (value '12')"


def test_chain_options_are_checked() -> None:
    _, used = compile_chain(["trim", "e164"], {"region": "GB", "other": 1})
    assert used == {"region"}
    assert bad_options("e165") == "unknown transform 'e165' (did you mean e164?)"
    assert (
        bad_options([{"name": "divide", "by": 2, "scal": 1}])
        == "transform 'divide' has no option 'scal' (did you mean scale?)"
    )
    assert "inline table with `name`" in bad_options([{"by": 2}])
    chain, _ = compile_chain(None, {})
    assert not chain and chain("x") == "x"


# --- profile paths and field writers -----------------------------------------------------------


def test_profile_paths() -> None:
    assert is_valid_path("loyalty.tier")
    assert is_valid_path("consent.sms_marketing.updated_at")
    assert is_valid_path("traits.favourite_store")
    assert is_valid_path("traits.store.city")
    assert not is_valid_path("traits.")
    assert not is_valid_path("traits.bad name")
    assert not is_valid_path("loyalty.teir")
    assert kind_of("loyalty.points_balance") is ValueKind.NUMBER
    assert kind_of("consent.push.granted") is ValueKind.BOOLEAN
    assert kind_of("traits.anything") is ValueKind.ANY
    assert kind_of("contact.address.lines") is ValueKind.LIST
    assert len(PROFILE_FIELDS) == 28
    with pytest.raises(ValueError, match=r"did you mean loyalty\.tier"):
        kind_of("loyalty.teir")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("loyalty.teir", "unknown profile field (did you mean loyalty.tier?)"),
        ("loyality.tier", "unknown profile field (did you mean loyalty.tier?)"),
        ("person.givenname", "unknown profile field (did you mean person.given_name?)"),
        ("contact.adress.city", "unknown profile field (did you mean contact.address.city?)"),
        (
            "identifiers.email",
            "identifiers are declared in the table's `identifiers`, not in `fields`",
        ),
        (
            "consent.email_marketing",
            "consent.email_marketing is a group of fields, map one of them "
            "(consent.email_marketing.granted, consent.email_marketing.updated_at)",
        ),
        (
            "wholly.unrelated",
            "unknown profile field (see the canonical profile's fields, or use traits.<name>)",
        ),
        ("loyalty.tier", None),
    ],
)
def test_path_problems_suggest_the_intended_path(path: str, problem: str | None) -> None:
    assert path_problem(path) == problem


def write(kind: ValueKind, value: Any, **options: Any) -> Any:
    return field_writer(kind, options)(value)


def test_string_fields() -> None:
    assert write(ValueKind.STRING, "Sally") == "Sally"
    assert write(ValueKind.STRING, "") is None
    assert write(ValueKind.STRING, 42) == "42"
    assert write(ValueKind.STRING, Decimal("1E+2")) == "100"
    assert write(ValueKind.STRING, True) == "true"
    assert write(ValueKind.STRING, date(2025, 1, 27)) == "2025-01-27"
    with pytest.raises(ValueError, match="a list is not text"):
        write(ValueKind.STRING, ["a", "b"])


def test_date_and_timestamp_fields() -> None:
    assert write(ValueKind.DATE, 20115) == "2025-01-27"
    assert write(ValueKind.DATE, "2025-01-27") == "2025-01-27"
    assert write(ValueKind.DATE, date(1, 1, 1)) == "0001-01-01"
    assert write(ValueKind.TIMESTAMP, 1737999999123456) == "2025-01-27T17:46:39.123456Z"
    assert write(ValueKind.TIMESTAMP, 1737999999123, unit="ms") == "2025-01-27T17:46:39.123000Z"
    assert write(ValueKind.TIMESTAMP, "2025-01-27T18:46:39+01:00") == "2025-01-27T17:46:39.000000Z"
    assert write(ValueKind.TIMESTAMP, datetime(2025, 1, 27)) == "2025-01-27T00:00:00.000000Z"
    assert write(ValueKind.TIMESTAMP, None) is None
    with pytest.raises(ValueError, match="unit must be one of"):
        field_writer(ValueKind.TIMESTAMP, {"unit": "h"})


def test_number_fields() -> None:
    assert write(ValueKind.NUMBER, Decimal("12.340")) == 12.34
    assert write(ValueKind.NUMBER, Decimal("12.00")) == 12
    assert isinstance(write(ValueKind.NUMBER, Decimal("12.00")), int)
    assert write(ValueKind.NUMBER, "BNI=", scale=2) == 12.34
    assert write(ValueKind.NUMBER, 5230) == 5230
    assert write(ValueKind.INTEGER, "42") == 42
    with pytest.raises(ValueError, match="not a whole number"):
        write(ValueKind.INTEGER, Decimal("4.5"))
    with pytest.raises(ValueError, match="finite"):
        write(ValueKind.NUMBER, float("nan"))


def test_boolean_list_and_free_form_fields() -> None:
    assert write(ValueKind.BOOLEAN, "t") is True
    assert write(ValueKind.BOOLEAN, "N") is False
    with pytest.raises(ValueError, match="not a boolean"):
        write(ValueKind.BOOLEAN, "sometimes")
    assert write(ValueKind.LIST, ["12 Market St", None, "  ", " Flat 3 "]) == [
        "12 Market St",
        "Flat 3",
    ]
    assert write(ValueKind.LIST, '["a", "b"]') == ["a", "b"]
    assert write(ValueKind.LIST, "single line") == ["single line"]
    assert write(ValueKind.ANY, {"spend": Decimal("1.50"), "at": date(2025, 1, 27)}) == {
        "spend": 1.5,
        "at": "2025-01-27",
    }
    assert write(ValueKind.ANY, [Decimal(3), timedelta(seconds=1)]) == [3, 1_000_000]
    assert write(ValueKind.ANY, "") is None
    assert to_bool(None) is None
