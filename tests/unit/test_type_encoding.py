"""Unit tests for cdc/type_encoding.py (and the text parsers in cdc/pg_text.py).

Expected values are computed independently of the module where possible (two's complement via
int.to_bytes at increasing widths, days via datetime, Java's nameUUIDFromBytes by hand), or taken
from Debezium's own PostgreSQL connector tests (AbstractRecordsProducerTest) where noted.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unified_profile.cdc.errors import DecodeError
from unified_profile.cdc.model import UNCHANGED_TOAST, Column, PgType
from unified_profile.cdc.pg_text import parse_array, parse_hstore
from unified_profile.cdc.type_encoding import (
    DecimalHandling,
    EncodingOptions,
    FieldEncoder,
    build_field_encoder,
)

PLACEHOLDER = "__debezium_unavailable_value"
PLACEHOLDER_B64 = base64.b64encode(PLACEHOLDER.encode()).decode()

# --- helpers ------------------------------------------------------------------------------------

T = {  # built-in types as the catalog describes them
    "bool": PgType(16, "bool", "B"),
    "bytea": PgType(17, "bytea", "U"),
    "char": PgType(18, "char", "Z"),
    "name": PgType(19, "name", "S", element=PgType(18, "char", "Z")),  # typelem is set on name
    "int8": PgType(20, "int8", "N"),
    "int2": PgType(21, "int2", "N"),
    "int4": PgType(23, "int4", "N"),
    "text": PgType(25, "text", "S"),
    "oid": PgType(26, "oid", "N"),
    "json": PgType(114, "json", "U"),
    "xml": PgType(142, "xml", "U"),
    "box": PgType(603, "box", "G"),
    "cidr": PgType(650, "cidr", "I"),
    "float4": PgType(700, "float4", "N"),
    "float8": PgType(701, "float8", "N"),
    "macaddr8": PgType(774, "macaddr8", "U"),
    "money": PgType(790, "money", "N"),
    "macaddr": PgType(829, "macaddr", "U"),
    "inet": PgType(869, "inet", "I"),
    "bpchar": PgType(1042, "bpchar", "S"),
    "varchar": PgType(1043, "varchar", "S"),
    "date": PgType(1082, "date", "D"),
    "time": PgType(1083, "time", "D"),
    "timestamp": PgType(1114, "timestamp", "D"),
    "timestamptz": PgType(1184, "timestamptz", "D"),
    "interval": PgType(1186, "interval", "T"),
    "timetz": PgType(1266, "timetz", "D"),
    "bit": PgType(1560, "bit", "V"),
    "varbit": PgType(1562, "varbit", "V"),
    "numeric": PgType(1700, "numeric", "N"),
    "uuid": PgType(2950, "uuid", "U"),
    "tsvector": PgType(3614, "tsvector", "U"),
    "jsonb": PgType(3802, "jsonb", "U"),
    "int4range": PgType(3904, "int4range", "R"),
    "pg_lsn": PgType(3220, "pg_lsn", "U"),
}
MOOD = PgType(16500, "mood", "E", enum_labels=("sad", "ok", "happy"))
CITEXT = PgType(16600, "citext", "S")
HSTORE = PgType(16700, "hstore", "U")
LTREE = PgType(16800, "ltree", "U")
GEOMETRY = PgType(16900, "geometry", "U")


def array_of(element: PgType, oid: int = 90000) -> PgType:
    return PgType(oid, "_" + element.name, "A", element=element)


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def encoder(
    pg_type: PgType,
    typmod: int = -1,
    *,
    optional: bool = True,
    name: str = "c",
    options: EncodingOptions | None = None,
) -> FieldEncoder:
    column = Column(name=name, type_oid=pg_type.oid, type_modifier=typmod, optional=optional)
    return build_field_encoder(column, pg_type, options or EncodingOptions())


def encode(pg_type: PgType, text: str, typmod: int = -1, **kwargs: object) -> object:
    return encoder(pg_type, typmod, **kwargs).encode(text)  # type: ignore[arg-type]


def twos_complement_b64(n: int) -> str:
    """Shortest big-endian two's complement, found by trying widths (BigInteger.toByteArray)."""
    width = 1
    while True:
        try:
            return base64.b64encode(n.to_bytes(width, "big", signed=True)).decode()
        except OverflowError:
            width += 1


def epoch_days(d: date) -> int:
    return (d - date(1970, 1, 1)).days


# --- API basics ---------------------------------------------------------------------------------


def test_options_defaults_match_debezium() -> None:
    options = EncodingOptions()
    assert options.decimal_handling is DecimalHandling.PRECISE
    assert options.unavailable_value_placeholder == PLACEHOLDER
    assert [mode.value for mode in DecimalHandling] == ["precise", "string", "double"]
    assert DecimalHandling("string") == "string"


def test_encoder_exposes_name_and_full_field_schema() -> None:
    enc = encoder(T["int4"], name="Customer Id", optional=False)
    assert enc.name == "Customer Id"
    assert enc.schema == {"type": "int32", "optional": False, "field": "Customer Id"}
    assert "Customer Id" in repr(enc)


def test_schema_keys_in_json_converter_order() -> None:
    decimal = encoder(T["numeric"], numeric_typmod(10, 2)).schema
    assert list(decimal) == ["type", "optional", "name", "version", "parameters", "field"]
    array = encoder(array_of(T["int4"])).schema
    assert list(array) == ["type", "items", "optional", "field"]
    variable = encoder(T["numeric"]).schema
    assert list(variable) == ["type", "fields", "optional", "name", "version", "doc", "field"]


# --- schemas, type by type ----------------------------------------------------------------------

SCHEMAS = [
    (T["int2"], -1, {"type": "int16"}),
    (T["int4"], -1, {"type": "int32"}),
    (T["int8"], -1, {"type": "int64"}),
    (T["oid"], -1, {"type": "int64"}),
    (T["float4"], -1, {"type": "float"}),
    (T["float8"], -1, {"type": "double"}),
    (T["bool"], -1, {"type": "boolean"}),
    (T["text"], -1, {"type": "string"}),
    (T["varchar"], 24, {"type": "string"}),
    (T["bpchar"], 8, {"type": "string"}),
    (T["char"], -1, {"type": "string"}),
    (T["name"], -1, {"type": "string"}),
    (CITEXT, -1, {"type": "string"}),
    (T["inet"], -1, {"type": "string"}),
    (T["cidr"], -1, {"type": "string"}),
    (T["macaddr"], -1, {"type": "string"}),
    (T["macaddr8"], -1, {"type": "string"}),
    (T["int4range"], -1, {"type": "string"}),
    (T["bytea"], -1, {"type": "bytes"}),
    (T["uuid"], -1, {"type": "string", "name": "io.debezium.data.Uuid", "version": 1}),
    (T["json"], -1, {"type": "string", "name": "io.debezium.data.Json", "version": 1}),
    (T["jsonb"], -1, {"type": "string", "name": "io.debezium.data.Json", "version": 1}),
    (HSTORE, -1, {"type": "string", "name": "io.debezium.data.Json", "version": 1}),
    (T["xml"], -1, {"type": "string", "name": "io.debezium.data.Xml", "version": 1}),
    (T["tsvector"], -1, {"type": "string", "name": "io.debezium.data.Tsvector", "version": 1}),
    (LTREE, -1, {"type": "string", "name": "io.debezium.data.Ltree", "version": 1}),
    (T["date"], -1, {"type": "int32", "name": "io.debezium.time.Date", "version": 1}),
    (T["time"], -1, {"type": "int64", "name": "io.debezium.time.MicroTime", "version": 1}),
    (T["time"], 6, {"type": "int64", "name": "io.debezium.time.MicroTime", "version": 1}),
    (T["time"], 4, {"type": "int64", "name": "io.debezium.time.MicroTime", "version": 1}),
    (T["time"], 3, {"type": "int32", "name": "io.debezium.time.Time", "version": 1}),
    (T["time"], 0, {"type": "int32", "name": "io.debezium.time.Time", "version": 1}),
    (T["timetz"], -1, {"type": "string", "name": "io.debezium.time.ZonedTime", "version": 1}),
    (T["timestamp"], -1,
     {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1}),
    (T["timestamp"], 4, {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1}),
    (T["timestamp"], 3, {"type": "int64", "name": "io.debezium.time.Timestamp", "version": 1}),
    (T["timestamp"], 0, {"type": "int64", "name": "io.debezium.time.Timestamp", "version": 1}),
    (T["timestamptz"], -1,
     {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "version": 1}),
    (T["interval"], -1, {"type": "int64", "name": "io.debezium.time.MicroDuration", "version": 1}),
    (T["numeric"], numeric_typmod(10, 2),
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
      "parameters": {"scale": "2", "connect.decimal.precision": "10"}}),
    (T["numeric"], numeric_typmod(5, 0),
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
      "parameters": {"scale": "0", "connect.decimal.precision": "5"}}),
    (T["numeric"], -1,
     {"type": "struct",
      "fields": [{"type": "int32", "optional": False, "field": "scale"},
                 {"type": "bytes", "optional": False, "field": "value"}],
      "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
      "doc": "Variable scaled decimal"}),
    (T["money"], -1,
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
      "parameters": {"scale": "2"}}),
    (MOOD, -1,
     {"type": "string", "name": "io.debezium.data.Enum", "version": 1,
      "parameters": {"allowed": "sad,ok,happy"}}),
    (T["bit"], -1, {"type": "boolean"}),
    (T["bit"], 1, {"type": "boolean"}),
    (T["varbit"], 1, {"type": "boolean"}),
    (T["bit"], 24,
     {"type": "bytes", "name": "io.debezium.data.Bits", "version": 1,
      "parameters": {"length": "24"}}),
    (T["varbit"], -1,
     {"type": "bytes", "name": "io.debezium.data.Bits", "version": 1,
      "parameters": {"length": "2147483647"}}),
    (T["pg_lsn"], -1, {"type": "string"}),  # unknown to Debezium: kept as a string
    (GEOMETRY, -1, {"type": "string"}),
]  # fmt: skip


@pytest.mark.parametrize(("pg_type", "typmod", "expected"), SCHEMAS)
def test_field_schema(pg_type: PgType, typmod: int, expected: dict[str, object]) -> None:
    schema = encoder(pg_type, typmod, name="f").schema
    assert schema == {**expected, "optional": True, "field": "f"}
    assert encoder(pg_type, typmod, name="f", optional=False).schema["optional"] is False


@pytest.mark.parametrize(
    ("mode", "typmod", "expected"),
    [
        (DecimalHandling.STRING, numeric_typmod(10, 2), {"type": "string"}),
        (DecimalHandling.STRING, -1, {"type": "string"}),
        (DecimalHandling.DOUBLE, numeric_typmod(10, 2), {"type": "double"}),
        (DecimalHandling.DOUBLE, -1, {"type": "double"}),
    ],
)
def test_numeric_schema_in_other_decimal_modes(
    mode: DecimalHandling, typmod: int, expected: dict[str, object]
) -> None:
    options = EncodingOptions(decimal_handling=mode)
    for pg_type in (T["numeric"], T["money"]):
        tm = typmod if pg_type is T["numeric"] else -1
        assert encoder(pg_type, tm, options=options).schema == {
            **expected, "optional": True, "field": "c"}  # fmt: skip


def test_array_schemas() -> None:
    assert encoder(array_of(T["int4"])).schema == {
        "type": "array", "items": {"type": "int32", "optional": True},
        "optional": True, "field": "c"}  # fmt: skip
    assert encoder(array_of(T["numeric"]), numeric_typmod(5, 2)).schema["items"] == {
        "type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1, "parameters": {"scale": "2", "connect.decimal.precision": "5"}}  # fmt: skip
    assert encoder(array_of(T["timestamp"]), 3).schema["items"] == {
        "type": "int64", "optional": True, "name": "io.debezium.time.Timestamp", "version": 1}
    assert encoder(array_of(T["uuid"])).schema["items"] == {
        "type": "string", "optional": True, "name": "io.debezium.data.Uuid", "version": 1}
    # Debezium builds enum[] items without .optional(), unlike every other element schema.
    assert encoder(array_of(MOOD)).schema["items"] == {
        "type": "string", "optional": False, "name": "io.debezium.data.Enum", "version": 1,
        "parameters": {"allowed": "sad,ok,happy"}}  # fmt: skip


def test_array_detected_by_name_when_category_missing() -> None:
    arr = PgType(1007, "_int4", element=T["int4"])  # category left at its default
    assert encoder(arr).encode("{1,2}") == [1, 2]


# --- NULL -----------------------------------------------------------------------------------------

ALL_TYPES = [(t, -1) for t in T.values()] + [
    (MOOD, -1), (CITEXT, -1), (HSTORE, -1), (LTREE, -1), (T["numeric"], numeric_typmod(8, 3)),
    (array_of(T["int4"]), -1), (array_of(T["text"]), -1), (array_of(T["bytea"]), -1),
]  # fmt: skip


@pytest.mark.parametrize(("pg_type", "typmod"), ALL_TYPES)
def test_null_is_none(pg_type: PgType, typmod: int) -> None:
    assert encoder(pg_type, typmod).encode(None) is None
    assert encoder(pg_type, typmod, options=EncodingOptions(DecimalHandling.STRING)).encode(
        None) is None  # fmt: skip


# --- integers, floats, booleans, strings ---------------------------------------------------------


def test_integers() -> None:
    assert encode(T["int2"], "-32768") == -32768
    assert encode(T["int4"], "2147483647") == 2147483647
    assert encode(T["int8"], "-9223372036854775808") == -9223372036854775808
    assert encode(T["oid"], "4294967295") == 4294967295


def test_floats() -> None:
    assert encode(T["float8"], "1.5") == 1.5
    assert encode(T["float8"], "1e+20") == 1e20
    assert encode(T["float8"], "-2.2250738585072014e-308") == -2.2250738585072014e-308
    assert encode(T["float4"], "1.2345675e+06") == 1234567.5
    assert encode(T["float4"], "0.1") == 0.1
    # Kafka's JsonConverter (Jackson) writes non-finite numbers as quoted strings.
    for pg_type in (T["float4"], T["float8"]):
        assert encode(pg_type, "NaN") == "NaN"
        assert encode(pg_type, "Infinity") == "Infinity"
        assert encode(pg_type, "-Infinity") == "-Infinity"


def test_booleans() -> None:
    assert encode(T["bool"], "t") is True
    assert encode(T["bool"], "f") is False
    with pytest.raises(DecodeError):
        encode(T["bool"], "true")  # boolout prints t/f only; 'true' is the text cast


@pytest.mark.parametrize(
    ("pg_type", "text"),
    [
        (T["text"], "hello, world"),
        (T["text"], ""),
        (T["varchar"], "ünïcødé ✓"),
        (T["bpchar"], "ab  "),  # char(n) padding is kept, as Debezium does
        (T["char"], "a"),
        (T["name"], "pg_class"),
        (CITEXT, "MiXeD"),
        (T["uuid"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (T["json"], '{"a": [1, 2]}'),
        (T["jsonb"], '{"a": [1, 2]}'),
        (T["xml"], "<a>b</a>"),
        (T["inet"], "10.0.0.1/8"),
        (T["cidr"], "10.0.0.0/8"),
        (T["macaddr"], "08:00:2b:01:02:03"),
        (T["macaddr8"], "08:00:2b:01:02:03:04:05"),
        (T["tsvector"], "'cat':1 'fat':2"),
        (T["int4range"], "[1,5)"),
        (LTREE, "Top.Science"),
        (MOOD, "happy"),
        (T["pg_lsn"], "0/16B3748"),
        (GEOMETRY, "0101000000000000000000F03F000000000000F03F"),
    ],
)
def test_string_like_values_pass_through(pg_type: PgType, text: str) -> None:
    assert encode(pg_type, text) == text


def test_domain_is_encoded_as_its_base_type() -> None:
    posint = PgType(17000, "posint", "N", base=T["int4"])
    email = PgType(17001, "email", "S", base=PgType(17002, "short_text", "S", base=T["text"]))
    assert encoder(posint).schema == {"type": "int32", "optional": True, "field": "c"}
    assert encode(posint, "7") == 7
    assert encode(email, "a@b.c") == "a@b.c"
    assert encode(array_of(posint), "{1,NULL}") == [1, None]


# --- bytea and bits -------------------------------------------------------------------------------


def test_bytea() -> None:
    assert encode(T["bytea"], "\\x0102ff") == base64.b64encode(b"\x01\x02\xff").decode()
    assert encode(T["bytea"], "\\x") == ""
    big = bytes(range(256)) * 10
    assert encode(T["bytea"], "\\x" + big.hex()) == base64.b64encode(big).decode()


@pytest.mark.parametrize("text", ["0102", "\\x0", "\\xzz", "\\001\\002"])
def test_bytea_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["bytea"], text)


@pytest.mark.parametrize(
    ("typmod", "text", "expected"),
    [  # from Debezium's AbstractRecordsProducerTest (bitbin_table)
        (2, "11", bytes([3])),
        (7, "1000000", bytes([64])),
        (2, "00", b""),
        (24, "000000110000001000000001", bytes([1, 2, 3])),
        (64, "1" + "0" * 63, bytes([0, 0, 0, 0, 0, 0, 0, 128])),
        (-1, "101", bytes([5])),
        (-1, "111011010001000110000001000000001", bytes([1, 2, 35, 0xDA, 1])),
    ],
)
def test_bits(typmod: int, text: str, expected: bytes) -> None:
    pg_type = T["bit"] if typmod > 0 else T["varbit"]
    assert encode(pg_type, text, typmod) == base64.b64encode(expected).decode()


def test_single_bits_are_booleans() -> None:
    assert encode(T["bit"], "1", 1) is True
    assert encode(T["bit"], "0") is False
    assert encode(T["varbit"], "1", 1) is True
    with pytest.raises(DecodeError):
        encode(T["bit"], "2", 1)
    with pytest.raises(DecodeError):
        encode(T["bit"], "102", 3)


# --- numeric and money ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unscaled"),
    [
        ("123.45", 12345),
        ("-123.45", -12345),
        ("0.00", 0),
        ("-0.01", -1),
        ("1.28", 128),  # needs a leading 0x00 sign byte
        ("-1.28", -128),  # fits in one byte
        ("-1.29", -129),
        ("2.55", 255),
        ("99999999999999999999999999999999999999.99", 9999999999999999999999999999999999999999),
        ("-99999999999999999999999999999999999999.99", -9999999999999999999999999999999999999999),
    ],
)
def test_decimal_precise(text: str, unscaled: int) -> None:
    typmod = numeric_typmod(40, 2)
    assert encode(T["numeric"], text, typmod) == twos_complement_b64(unscaled)


def test_decimal_known_java_bytes() -> None:
    typmod = numeric_typmod(10, 0)
    assert encode(T["numeric"], "12345", typmod) == "MDk="  # 0x3039
    assert encode(T["numeric"], "-1", typmod) == "/w=="  # 0xff
    assert encode(T["numeric"], "128", typmod) == "AIA="  # 0x0080
    assert encode(T["numeric"], "-128", typmod) == "gA=="  # 0x80
    assert encode(T["numeric"], "0", typmod) == "AA=="  # 0x00


def test_decimal_rescales_to_the_column_scale() -> None:
    # numeric_out always prints `scale` digits; other spellings are rescaled exactly.
    assert encode(T["numeric"], "5", numeric_typmod(10, 2)) == twos_complement_b64(500)
    assert encode(T["numeric"], "12300", numeric_typmod(5, -2)) == twos_complement_b64(123)
    assert encoder(T["numeric"], numeric_typmod(5, -2)).schema["parameters"] == {
        "scale": "-2", "connect.decimal.precision": "5"}  # fmt: skip
    with pytest.raises(DecodeError):
        encode(T["numeric"], "1.234", numeric_typmod(10, 2))


@pytest.mark.parametrize(
    ("text", "scale", "unscaled"),
    [
        ("123.4500", 2, 12345),  # trailing zeros stripped
        ("100", 0, 100),  # ... but never to a negative scale
        ("100.000", 0, 100),
        ("0.000", 0, 0),
        ("-0.001", 3, -1),
        ("-123", 0, -123),
        ("3.14159265358979323846264338327950288419716939937510", 49,
         31415926535897932384626433832795028841971693993751),
    ],
)
def test_variable_scale_decimal(text: str, scale: int, unscaled: int) -> None:
    assert encode(T["numeric"], text) == {"scale": scale, "value": twos_complement_b64(unscaled)}


@pytest.mark.parametrize("special", ["NaN", "Infinity", "-Infinity"])
def test_numeric_special_values(special: str) -> None:
    # Precise mode cannot express them: Debezium's conversion fails and it emits null.
    assert encode(T["numeric"], special) is None
    assert encode(T["numeric"], special, numeric_typmod(10, 2)) is None
    # String mode prints SpecialValueDecimal's enum names; double mode the (quoted) double.
    string = EncodingOptions(decimal_handling=DecimalHandling.STRING)
    expected = {"NaN": "NAN", "Infinity": "POSITIVE_INFINITY", "-Infinity": "NEGATIVE_INFINITY"}
    assert encode(T["numeric"], special, options=string) == expected[special]
    double = EncodingOptions(decimal_handling=DecimalHandling.DOUBLE)
    assert encode(T["numeric"], special, options=double) == special


def test_numeric_string_and_double_modes() -> None:
    string = EncodingOptions(decimal_handling=DecimalHandling.STRING)
    double = EncodingOptions(decimal_handling=DecimalHandling.DOUBLE)
    assert encode(T["numeric"], "123.4500", options=string) == "123.4500"
    assert encode(T["numeric"], "-0.50", numeric_typmod(4, 2), options=string) == "-0.50"
    assert encode(T["numeric"], "123.4500", options=double) == 123.45
    assert encode(T["numeric"], "-7", numeric_typmod(4, 0), options=double) == -7.0
    with pytest.raises(DecodeError):
        encode(T["numeric"], "12a", options=string)


@pytest.mark.parametrize("text", ["1.2.3", "abc", "", "--1", "1e5"])
def test_numeric_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["numeric"], text)
    with pytest.raises(DecodeError):
        encode(T["numeric"], text, numeric_typmod(10, 2))


@pytest.mark.parametrize(
    ("text", "cents", "plain", "double"),
    [
        ("$1,234.56", 123456, "1234.56", 1234.56),
        ("-$12.34", -1234, "-12.34", -12.34),
        ("($5.00)", -500, "-5.00", -5.0),
        ("$0.00", 0, "0.00", 0.0),
        ("$92,233,720,368,547,758.07", 9223372036854775807, "92233720368547758.07",
         92233720368547758.07),
    ],
)
def test_money(text: str, cents: int, plain: str, double: float) -> None:
    assert encode(T["money"], text) == twos_complement_b64(cents)
    string = EncodingOptions(decimal_handling=DecimalHandling.STRING)
    assert encode(T["money"], text, options=string) == plain
    as_double = EncodingOptions(decimal_handling=DecimalHandling.DOUBLE)
    assert encode(T["money"], text, options=as_double) == double


def test_money_rounds_half_up_to_two_digits() -> None:
    assert encode(T["money"], "$1.005") == twos_complement_b64(101)
    assert encode(T["money"], "-$1.005") == twos_complement_b64(-101)
    assert encode(T["money"], "$1.004") == twos_complement_b64(100)
    with pytest.raises(DecodeError):
        encode(T["money"], "$")


@given(st.integers(min_value=-(10**40), max_value=10**40), st.integers(min_value=0, max_value=12))
def test_decimal_matches_independent_twos_complement(unscaled: int, scale: int) -> None:
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    text = ("-" if unscaled < 0 else "") + (digits[:-scale] + "." + digits[-scale:] if scale else digits)
    assert encode(T["numeric"], text, numeric_typmod(60, scale)) == twos_complement_b64(unscaled)
    # The variable-scale struct decodes back to the same number.
    value = encode(T["numeric"], text)
    assert isinstance(value, dict)
    decoded = int.from_bytes(base64.b64decode(value["value"]), "big", signed=True)
    assert decoded * 10 ** (scale - value["scale"]) == unscaled


# --- dates and times ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01", 0),
        ("1969-12-31", -1),
        ("2024-03-01", epoch_days(date(2024, 3, 1))),
        ("2016-11-04", epoch_days(date(2016, 11, 4))),
        ("0001-01-01", epoch_days(date(1, 1, 1))),
        ("9999-12-31", epoch_days(date(9999, 12, 31))),
        ("0001-12-31 BC", epoch_days(date(1, 1, 1)) - 1),  # 1 BC is the year before AD 1
        ("0044-03-15 BC", -735160),
        ("10000-01-01", epoch_days(date(9999, 12, 31)) + 1),
        ("5874897-12-31", 2145042905),  # PostgreSQL's last date
        ("4714-11-24 BC", -2440588),  # PostgreSQL's first date: Julian day 0
    ],
)
def test_date(text: str, expected: int) -> None:
    assert encode(T["date"], text) == expected


def test_date_infinity_follows_debezium() -> None:
    # PostgresValueConverter.POSITIVE/NEGATIVE_INFINITY_LOCAL_DATE (-5877611-06-21/22).
    assert encode(T["date"], "infinity") == -2147472693
    assert encode(T["date"], "-infinity") == -2147472692


@pytest.mark.parametrize("text", ["2024-13-01", "2024-02-30", "24-03-01", "2024-03-01 AD", "x"])
def test_date_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["date"], text)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("00:00:00", 0),
        ("12:34:56", 45296_000_000),
        ("12:34:56.5", 45296_500_000),
        ("13:51:30.123456", 49890_123_456),
        ("23:59:59.999999", 86_399_999_999),
        ("24:00:00", 86_400_000_000),  # PostgreSQL's end of day (Debezium test 'ttf')
    ],
)
def test_time(text: str, micros: int) -> None:
    assert encode(T["time"], text) == micros
    assert encode(T["time"], text, 6) == micros
    assert encode(T["time"], text, 3) == micros // 1000


@pytest.mark.parametrize("text", ["25:00", "12:34", "12:34:56+02", "1:02:03", "12:34:56.1234567"])
def test_time_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["time"], text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12:34:56+02", "10:34:56Z"),
        ("10:15:30.5+00", "10:15:30.5Z"),
        ("13:51:30.123789+02", "11:51:30.123789Z"),  # Debezium test 'ttz'
        ("13:51:30.123+02", "11:51:30.123Z"),  # Debezium test 'tptz'
        ("00:30:00+01", "23:30:00Z"),
        ("23:30:00-02", "01:30:00Z"),
        ("12:00:00+05:30", "06:30:00Z"),
        ("12:00:00-00:09:21", "12:09:21Z"),
        ("00:00:00+00", "00:00:00Z"),
        ("24:00:00+00", "24:00:00Z"),  # the end-of-day boundary survives in UTC
        ("24:00:00+02", "22:00:00Z"),
    ],
)
def test_timetz(text: str, expected: str) -> None:
    assert encode(T["timetz"], text) == expected


@pytest.mark.parametrize("text", ["12:34:56", "12:34:56+2", "12:34:56 +02", "x"])
def test_timetz_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["timetz"], text)


def micros_since_epoch(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1)) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1970-01-01 00:00:00", 0),
        ("2024-03-01 12:34:56.789", micros_since_epoch(datetime(2024, 3, 1, 12, 34, 56, 789000))),
        ("2016-11-04 13:51:30.123456",
         micros_since_epoch(datetime(2016, 11, 4, 13, 51, 30, 123456))),
        # before 1970: negative, and the fraction still counts forward from the whole second
        ("1969-12-31 23:59:59.5", -500_000),
        ("1936-10-25 22:10:12.608", micros_since_epoch(datetime(1936, 10, 25, 22, 10, 12, 608000))),
        ("0001-01-01 00:00:00", micros_since_epoch(datetime(1, 1, 1))),
        # Debezium's own expectations for the extremes (ts_max, ts_min):
        ("294247-01-01 23:59:59.999999", 9223371331200000000 - 1),
        ("4713-12-31 23:59:59.999999 BC", -210831897600000001),
        ("infinity", 9223372036825200000),  # pgjdbc's DATE_POSITIVE_INFINITY
        ("-infinity", -9223372036832400000),
    ],
)  # fmt: skip
def test_timestamp(text: str, micros: int) -> None:
    assert encode(T["timestamp"], text) == micros
    assert encode(T["timestamp"], text, 3) == micros // 1000


def test_timestamp_millis_floor_before_epoch() -> None:
    assert encode(T["timestamp"], "1969-12-31 23:59:59.999", 3) == -1
    assert encode(T["timestamp"], "1936-10-25 22:10:12.608", 3) == -1047174587392


@pytest.mark.parametrize(
    "text", ["2024-03-01", "2024-03-01 12:34:56+00", "2024-03-01T12:34:56", "2024-02-30 00:00:00",
             "2024-03-01 12:34:56 AD", "Infinity", "2024-03-01 12", "2024-03-01 24:00:00"],
)  # fmt: skip
def test_timestamp_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["timestamp"], text)


@pytest.mark.parametrize(
    ("text", "typmod", "expected"),
    [
        # Debezium >= 2.2 pads the fraction to the column precision (6 when unspecified) ...
        ("2024-03-01 12:34:56.789+00", -1, "2024-03-01T12:34:56.789000Z"),
        ("2024-03-01 12:34:56+00", -1, "2024-03-01T12:34:56.000000Z"),
        ("2024-03-01 12:34:56.5+00", 3, "2024-03-01T12:34:56.500Z"),
        ("2024-03-01 12:34:56.123456+00", 6, "2024-03-01T12:34:56.123456Z"),
        # ... and precision 0 falls back to ISO_OFFSET_DATE_TIME (no fraction when zero).
        ("2024-03-01 12:34:56+00", 0, "2024-03-01T12:34:56Z"),
        # Values in other zones (not produced with TimeZone=UTC, but valid text) move to UTC.
        ("2016-11-04 13:51:30.123456+02", -1, "2016-11-04T11:51:30.123456Z"),  # Debezium 'tz'
        ("2024-03-01 00:30:00+05:30", -1, "2024-02-29T19:00:00.000000Z"),
        ("1900-01-01 00:00:00+00:09:21", 0, "1899-12-31T23:50:39Z"),
        ("1900-01-01 00:00:00.25-00:09:21", 0, "1900-01-01T00:09:21.25Z"),
        ("1960-06-15 08:00:00.1+00", 2, "1960-06-15T08:00:00.10Z"),
        # Debezium's own expectations for large and BC years (tz_large, tz_zero, tz_max, tz_min).
        ("21016-11-04 06:51:30.123456+00", -1, "+21016-11-04T06:51:30.123456Z"),
        ("21016-11-04 06:51:30+00", -1, "+21016-11-04T06:51:30.000000Z"),
        ("294247-01-01 23:59:59.999999+00", -1, "+294247-01-01T23:59:59.999999Z"),
        ("4714-12-31 23:59:59.999999+00 BC", -1, "-4713-12-31T23:59:59.999999Z"),
        ("0001-01-01 00:00:00+00 BC", 0, "0000-01-01T00:00:00Z"),
        ("0002-06-01 12:00:00+00 BC", 0, "-0001-06-01T12:00:00Z"),
        ("infinity", -1, "infinity"),
        ("-infinity", -1, "-infinity"),
    ],
)
def test_timestamptz(text: str, typmod: int, expected: str) -> None:
    assert encode(T["timestamptz"], text, typmod) == expected


@pytest.mark.parametrize(
    "text", ["2024-03-01 12:34:56", "2024-03-01 12:34:56+0", "2024-03-01T12:34:56+00", "x"]
)
def test_timestamptz_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["timestamptz"], text)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_temporal_agree_with_datetime(dt: datetime) -> None:
    text = dt.isoformat(sep=" ")  # PostgreSQL prints the same shape (trailing zeros aside)
    micros = micros_since_epoch(dt)
    assert encode(T["timestamp"], text) == micros
    assert encode(T["timestamp"], text, 3) == micros // 1000
    assert encode(T["date"], dt.date().isoformat()) == epoch_days(dt.date())
    assert encode(T["time"], dt.time().isoformat()) == micros % 86_400_000_000
    zoned = encode(T["timestamptz"], text + "+00")
    assert zoned == f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S.%f}Z"
    # Through the general path (non-zero offset) the instant must be the same.
    shifted = (dt + timedelta(hours=3)).isoformat(sep=" ") + "+03"
    assert encode(T["timestamptz"], shifted) == zoned


# --- intervals ------------------------------------------------------------------------------------


def java_duration_micros(y: int, mo: int, d: int, h: int, mi: int, seconds: float) -> int:
    """MicroDuration.durationMicros(y, mo, d, h, mi, seconds, DAYS_PER_MONTH_AVG), restated."""
    number_of_days = float(y * 12 + mo) * (365.25 / 12) + d
    number_of_seconds = ((number_of_days * 24 + h) * 60 + mi) * 60 + seconds
    return int(number_of_seconds * 1e6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:00", 0),
        ("1 day", 86_400_000_000),
        ("1 mon", 2_629_800_000_000),  # 30.4375 days
        ("1 year", 31_557_600_000_000),  # 365.25 days
        ("1 year 2 mons 3 days 04:05:06.5", 37_091_106_500_000),
        ("-1 years -2 mons +3 days -04:05:06.5", -36_572_706_500_000),
        ("-1 days +02:03:00", -79_020_000_000),
        ("1 mon -1 days", 2_543_400_000_000),
        ("-00:00:00.5", -500_000),
        ("838:59:59.999999", java_duration_micros(0, 0, 0, 838, 59, 59.999999)),
        ("178000000 years", java_duration_micros(178000000, 0, 0, 0, 0, 0.0)),
        ("1 year 2 mons 3 days 04:05:06.78",
         java_duration_micros(1, 2, 3, 4, 5, 6.78)),  # Debezium test 'it' (P1Y2M3DT4H5M6.78S)
    ],
)  # fmt: skip
def test_interval(text: str, expected: int) -> None:
    assert encode(T["interval"], text) == expected


@pytest.mark.parametrize("text", ["", "1", "1 fortnight", "1 year 2", "P1Y", "04:05", "1 day x"])
def test_interval_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(T["interval"], text)


# --- enums and extension types --------------------------------------------------------------------


def test_enum_allowed_values_keep_sort_order() -> None:
    enum_type = PgType(17100, "level", "E", enum_labels=("low", "mid", "high"))
    schema = encoder(enum_type).schema
    assert schema["parameters"] == {"allowed": "low,mid,high"}
    assert encode(enum_type, "mid") == "mid"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"a"=>"1", "b"=>NULL', {"a": "1", "b": None}),
        ("", {}),
        ('"k \\"q\\""=>"v\\\\w"', {'k "q"': "v\\w"}),
        ('"ü"=>"=>, "', {"ü": "=>, "}),
    ],
)
def test_hstore_as_json(text: str, expected: dict[str, object]) -> None:
    value = encode(HSTORE, text)
    assert isinstance(value, str)
    assert json.loads(value) == expected
    assert parse_hstore(text) == expected


@pytest.mark.parametrize("text", ['"a"=>"1",', '"a"=>1', 'a=>"1"', '"a"=>"1" "b"=>"2"'])
def test_hstore_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(HSTORE, text)


# --- arrays -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "typmod", "text", "expected"),
    [
        (T["int4"], -1, "{1,2,NULL}", [1, 2, None]),
        (T["int4"], -1, "{}", []),
        (T["int4"], -1, "{NULL}", [None]),
        (T["int4"], -1, "[0:1]={1,2}", [1, 2]),  # non-default lower bound prefix
        (T["int2"], -1, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (T["int8"], -1, "{{{1},{2}},{{3},{NULL}}}", [[[1], [2]], [[3], [None]]]),
        (T["text"], -1, '{"a b","c\\"d",NULL,"NULL","","x\\\\y","{}",plain,"a,b"}',
         ["a b", 'c"d', None, "NULL", "", "x\\y", "{}", "plain", "a,b"]),
        (T["text"], -1, '{{"a b",NULL},{"}",c}}', [["a b", None], ["}", "c"]]),
        (T["text"], -1, '{é," lead","tab\tx","new\nline"}', ["é", " lead", "tab\tx", "new\nline"]),
        (T["varchar"], 10, "{a,B}", ["a", "B"]),
        (T["bool"], -1, "{t,f,NULL}", [True, False, None]),
        (T["float8"], -1, "{1.5,NaN,-Infinity}", [1.5, "NaN", "-Infinity"]),
        (T["bytea"], -1, '{"\\\\x0102",NULL,"\\\\x"}', ["AQI=", None, ""]),
        (T["numeric"], numeric_typmod(5, 2), "{1.50,-2.00,NULL}",
         [twos_complement_b64(150), twos_complement_b64(-200), None]),
        (T["numeric"], -1, "{1.50,NaN}", [{"scale": 1, "value": twos_complement_b64(15)}, None]),
        (T["date"], -1, "{1970-01-02,NULL}", [1, None]),
        (T["time"], 3, "{00:00:01.5}", [1500]),
        (T["timetz"], -1, '{"12:00:00+02"}', ["10:00:00Z"]),
        (T["timestamp"], -1, '{"1970-01-01 00:00:01"}', [1_000_000]),
        (T["timestamptz"], -1, '{"2020-04-01 11:51:02+00",infinity}',
         ["2020-04-01T11:51:02.000000Z", "infinity"]),  # Debezium test 'timestamptza'
        (T["interval"], -1, '{"1 day",00:00:01}', [86_400_000_000, 1_000_000]),
        (T["uuid"], -1, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
         ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        (T["jsonb"], -1, '{"{\\"a\\": 1}",NULL}', ['{"a": 1}', None]),
        (T["money"], -1, '{"$1.00"}', [twos_complement_b64(100)]),
        (MOOD, -1, "{sad,happy}", ["sad", "happy"]),
        (T["box"], -1, "{(1,1),(0,0);(2,2),(1,1)}", ["(1,1),(0,0)", "(2,2),(1,1)"]),
        (GEOMETRY, -1, "{0101,NULL}", ["0101", None]),
    ],
)  # fmt: skip
def test_arrays(element: PgType, typmod: int, text: str, expected: list[object]) -> None:
    assert encode(array_of(element), text, typmod) == expected


@pytest.mark.parametrize(
    "text",
    ["", "1,2", "{1,2", "1,2}", "{1,,2}", "{,1}", "{1,}", '{"a"b}', '{"a}', "{{1},{2}", "{1}}",
     "{a b}", "{1}{2}", "[0:1]{1,2}", '{"a",,"b"}', "{{1}2}"],
)  # fmt: skip
def test_array_parse_errors(text: str) -> None:
    with pytest.raises(DecodeError):
        encode(array_of(T["text"]), text)


def test_array_element_errors_are_reported() -> None:
    with pytest.raises(DecodeError, match="_int4"):
        encode(array_of(T["int4"]), "{1,x}")


def array_out(items: list[str | None]) -> str:
    """PostgreSQL's array_out quoting rules, restated for the round-trip property below."""

    def element(item: str | None) -> str:
        if item is None:
            return "NULL"
        if item == "" or item.upper() == "NULL" or any(c in item for c in '{},"\\ \t\n\r\v\f'):
            return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return item

    return "{" + ",".join(element(item) for item in items) + "}"


@given(st.lists(st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"])))))
def test_text_array_round_trip(items: list[str | None]) -> None:
    text = array_out(items)
    assert parse_array(text) == items
    assert encode(array_of(T["text"]), text) == items


# --- unchanged TOAST ------------------------------------------------------------------------------


def java_name_uuid_from_bytes(data: bytes) -> str:
    """java.util.UUID.nameUUIDFromBytes, restated: MD5 with version 3 and the IETF variant."""
    md5 = bytearray(hashlib.md5(data, usedforsecurity=False).digest())
    md5[6] = (md5[6] & 0x0F) | 0x30
    md5[8] = (md5[8] & 0x3F) | 0x80
    h = md5.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@pytest.mark.parametrize(
    ("pg_type", "typmod", "expected"),
    [
        (T["text"], -1, PLACEHOLDER),
        (T["varchar"], 20, PLACEHOLDER),
        (T["json"], -1, PLACEHOLDER),
        (T["jsonb"], -1, PLACEHOLDER),
        (T["xml"], -1, PLACEHOLDER),
        (MOOD, -1, PLACEHOLDER),
        (GEOMETRY, -1, PLACEHOLDER),
        (T["bytea"], -1, PLACEHOLDER_B64),
        (HSTORE, -1, json.dumps({PLACEHOLDER: PLACEHOLDER}, separators=(",", ":"))),
        # Debezium's conversion of the placeholder fails for these and it emits null.
        (T["numeric"], -1, None),
        (T["numeric"], numeric_typmod(10, 2), None),
        (T["int4"], -1, None),
        # Arrays: UnchangedToastedReplicationMessageColumn's per-type placeholders.
        (array_of(T["text"]), -1, [PLACEHOLDER]),
        (array_of(T["varchar"]), -1, [PLACEHOLDER]),
        (array_of(T["bpchar"]), -1, [PLACEHOLDER]),
        (array_of(T["jsonb"]), -1, [PLACEHOLDER]),
        (array_of(T["bytea"]), -1, [PLACEHOLDER_B64]),
        (array_of(T["int4"]), -1, list(PLACEHOLDER.encode())),
        (array_of(T["int8"]), -1, list(PLACEHOLDER.encode())),
        (array_of(T["date"]), -1, list(PLACEHOLDER.encode())),
        (array_of(T["uuid"]), -1, [java_name_uuid_from_bytes(PLACEHOLDER.encode())]),
        (array_of(MOOD), -1, [PLACEHOLDER]),  # string items: kept recognisable
        (array_of(T["float8"]), -1, None),  # Debezium: failed conversion, null
        (array_of(T["numeric"]), -1, None),
    ],
)
def test_unchanged_toast(pg_type: PgType, typmod: int, expected: object) -> None:
    assert encoder(pg_type, typmod).encode(UNCHANGED_TOAST) == expected


def test_unchanged_toast_in_string_decimal_mode() -> None:
    options = EncodingOptions(decimal_handling=DecimalHandling.STRING)
    assert encoder(T["numeric"], options=options).encode(UNCHANGED_TOAST) == PLACEHOLDER


def test_unchanged_toast_custom_placeholder_and_fresh_lists() -> None:
    options = EncodingOptions(unavailable_value_placeholder="<gone>")
    assert encoder(T["text"], options=options).encode(UNCHANGED_TOAST) == "<gone>"
    assert encoder(T["bytea"], options=options).encode(UNCHANGED_TOAST) == "PGdvbmU+"
    arrays = encoder(array_of(T["text"]), options=options)
    first = arrays.encode(UNCHANGED_TOAST)
    assert first == ["<gone>"]
    assert isinstance(first, list)
    first.append("mutated")
    assert arrays.encode(UNCHANGED_TOAST) == ["<gone>"]


def test_unchanged_toast_non_ascii_placeholder_bytes_are_signed() -> None:
    options = EncodingOptions(unavailable_value_placeholder="é")
    assert encoder(array_of(T["int4"]), options=options).encode(UNCHANGED_TOAST) == [-61, -87]


# --- errors -----------------------------------------------------------------------------------------


def test_decode_error_names_column_type_and_value() -> None:
    with pytest.raises(DecodeError) as info:
        encoder(T["int4"], name="age").encode("forty")
    message = str(info.value)
    assert "'age'" in message
    assert "int4" in message
    assert "'forty'" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_decode_error_truncates_long_values() -> None:
    with pytest.raises(DecodeError) as info:
        encoder(T["date"], name="d").encode("x" * 10_000)
    assert len(str(info.value)) < 200
    assert "..." in str(info.value)


def test_binary_values_are_rejected() -> None:
    with pytest.raises(DecodeError, match="binary"):
        encoder(T["int4"]).encode(b"\x00\x00\x00\x01")


@pytest.mark.parametrize(
    ("pg_type", "text"),
    [
        (T["int2"], "1.5"),
        (T["int8"], ""),
        (T["float8"], "one"),
        (T["money"], "free"),
        (T["timestamptz"], "2024-03-01 25:00:00+00"),
    ],
)
def test_parse_errors_raise_decode_error(pg_type: PgType, text: str) -> None:
    with pytest.raises(DecodeError):
        encode(pg_type, text)
