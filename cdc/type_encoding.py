"""Encode PostgreSQL column values the way Debezium's PostgreSQL connector does.

Capture reads every column as the text that PostgreSQL's output functions print (pgoutput in text
mode while streaming, ``COPY ... TO STDOUT`` while snapshotting), with the session settings the
connector fixes: ``DateStyle='ISO, YMD'``, ``TimeZone='UTC'``, ``IntervalStyle='postgres'``,
``extra_float_digits=3`` and ``bytea_output='hex'``. This module turns that text into the JSON value
and the Kafka Connect field schema that Debezium 2.x/3.x writes with the JSON converter and its
default settings (``decimal.handling.mode=precise``, ``time.precision.mode=adaptive``,
``binary.handling.mode=bytes``, ``interval.handling.mode=numeric``, ``hstore.handling.mode=json``).

Work is split so that rows are cheap: :func:`build_field_encoder` resolves the type, typmod and
options of one column once, and the resulting :class:`FieldEncoder` does a few operations per value.

Where Debezium's behaviour is a conversion failure (it logs a warning and emits ``null`` under its
default ``event.converting.failure.handling.mode=warn``), this module returns ``None`` as well; where
Debezium drops a column it cannot map, this module keeps it (see the notes at each place).
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from .errors import DecodeError
from .model import UNCHANGED_TOAST, Column, ColumnValue, PgType
from .pg_text import (
    ArrayItems,
    civil_from_epoch_day,
    parse_array,
    parse_date,
    parse_hstore,
    parse_interval,
    parse_time,
    parse_timestamp,
    parse_timestamptz,
    parse_timetz,
)

__all__ = ["DecimalHandling", "EncodingOptions", "FieldEncoder", "build_field_encoder"]


class DecimalHandling(enum.StrEnum):
    """Debezium's ``decimal.handling.mode``: how ``numeric`` and ``money`` values are written."""

    PRECISE = "precise"
    STRING = "string"
    DOUBLE = "double"


@dataclass(frozen=True, slots=True)
class EncodingOptions:
    """The connector settings that change how values are encoded.

    Attributes:
        decimal_handling: Debezium's ``decimal.handling.mode``.
        unavailable_value_placeholder: Debezium's ``unavailable.value.placeholder``, written in place
            of an unchanged TOASTed value that the server did not send.
    """

    decimal_handling: DecimalHandling = DecimalHandling.PRECISE
    unavailable_value_placeholder: str = "__debezium_unavailable_value"


Convert = Callable[[str], object]
"""Turns one value's text into its JSON value; raises ValueError (or similar) on malformed text."""

_PARSE_ERRORS = (ValueError, KeyError, IndexError, OverflowError)
_MAX_SHOWN = 80

# Built-in type OIDs (fixed by PostgreSQL's catalog, pg_type.dat).
_BOOL = 16
_BYTEA = 17
_CHAR = 18
_NAME = 19
_INT8 = 20
_INT2 = 21
_INT2VECTOR = 22
_INT4 = 23
_TEXT = 25
_OID = 26
_OIDVECTOR = 30
_JSON = 114
_XML = 142
_BOX = 603
_CIDR = 650
_FLOAT4 = 700
_FLOAT8 = 701
_MACADDR8 = 774
_MONEY = 790
_MACADDR = 829
_INET = 869
_BPCHAR = 1042
_VARCHAR = 1043
_DATE = 1082
_TIME = 1083
_TIMESTAMP = 1114
_TIMESTAMPTZ = 1184
_INTERVAL = 1186
_TIMETZ = 1266
_BIT = 1560
_VARBIT = 1562
_NUMERIC = 1700
_UUID = 2950
_TSVECTOR = 3614
_JSONB = 3802
_RANGES = frozenset({3904, 3906, 3908, 3910, 3912, 3926})  # int4/num/ts/tstz/date/int8 range

# --- schemas --------------------------------------------------------------------------------

Schema = dict[str, object]

_VARIABLE_SCALE_FIELDS: list[object] = [
    {"type": "int32", "optional": False, "field": "scale"},
    {"type": "bytes", "optional": False, "field": "value"},
]


def _logical(type_: str, name: str, **parameters: str) -> Schema:
    schema: Schema = {"type": type_, "name": name, "version": 1}
    if parameters:
        schema["parameters"] = parameters
    return schema


def _finish(base: Schema, optional: bool, field: str | None = None) -> Schema:
    """Adds ``optional`` (and ``field``) in the key order Kafka's JsonConverter writes."""
    schema: Schema = {key: base[key] for key in ("type", "items", "fields") if key in base}
    schema["optional"] = optional
    schema.update((key, base[key]) for key in ("name", "version", "doc", "parameters") if key in base)
    if field is not None:
        schema["field"] = field
    return schema


_STRING: Schema = {"type": "string"}
_JSON_SCHEMA = _logical("string", "io.debezium.data.Json")

# --- small value helpers --------------------------------------------------------------------


_b2a = binascii.b2a_base64


def _b64(data: bytes) -> str:
    # Kafka's JsonConverter writes BYTES as standard base64 with padding (Jackson's default variant).
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _twos_complement_b64(unscaled: int) -> str:
    # Java's BigInteger.toByteArray(): the shortest big-endian two's complement with a sign bit.
    length = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
    return _b64(unscaled.to_bytes(length, "big", signed=True))


# Jackson (under Kafka's JsonConverter) quotes non-finite numbers, so they appear as JSON strings.
_NON_FINITE: dict[str, object] = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def _float(text: str) -> object:
    special = _NON_FINITE.get(text)
    return float(text) if special is None else special


def _hex_bytea(text: str) -> str:
    if not text.startswith("\\x"):
        raise ValueError("bytea not in hex format")
    return _b64(bytes.fromhex(text[2:]))


# --- numeric and money ----------------------------------------------------------------------

_NUMERIC_SPECIALS = frozenset({"NaN", "Infinity", "-Infinity"})
# SpecialValueDecimal.toString() prints the Java enum constant names in string mode.
_NUMERIC_SPECIAL_STRINGS = {
    "NaN": "NAN",
    "Infinity": "POSITIVE_INFINITY",
    "-Infinity": "NEGATIVE_INFINITY",
}
_NUMERIC_TEXT = re.compile(r"-?\d+(?:\.\d+)?")


def _unscaled(text: str, scale: int) -> int:
    """The integer ``text * 10**scale``; fails if that would drop non-zero digits."""
    dot = text.find(".")
    if dot < 0:
        unscaled, fraction_digits = int(text), 0
    else:
        unscaled, fraction_digits = int(text[:dot] + text[dot + 1 :]), len(text) - dot - 1
    shift = scale - fraction_digits
    if shift > 0:
        return unscaled * int(10**shift)
    if shift < 0:
        unscaled, dropped = divmod(unscaled, int(10 ** (-shift)))
        if dropped:
            raise ValueError("more fractional digits than the column's scale")
    return unscaled


def _decimal_converter(scale: int) -> Convert:
    def convert(text: str) -> object:
        if text in _NUMERIC_SPECIALS:
            # Debezium cannot write NaN/Infinity as a Decimal: the conversion fails and the
            # field is emitted as null (with a warning) under its default failure handling.
            return None
        dot = text.find(".")
        if dot > 0 and len(text) - dot - 1 == scale:  # numeric_out prints exactly `scale` digits
            unscaled = int(text[:dot] + text[dot + 1 :])
        else:
            unscaled = _unscaled(text, scale)
        # Inlined _twos_complement_b64: this runs for every money-like column value.
        length = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
        return _b2a(unscaled.to_bytes(length, "big", signed=True), newline=False).decode("ascii")

    return convert


def _variable_scale_decimal(text: str) -> object:
    if text in _NUMERIC_SPECIALS:
        return None  # as for Decimal: Debezium's conversion fails and the field is null
    # Debezium strips trailing zeros (but never to a negative scale): 1.2300 -> 123 scale 2.
    dot = text.find(".")
    if dot < 0:
        unscaled, scale = int(text), 0
    else:
        fraction = text[dot + 1 :].rstrip("0")
        if not text[dot + 1 :].isdigit():
            raise ValueError("malformed fraction")
        unscaled, scale = int(text[:dot] + fraction), len(fraction)
    length = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
    value = _b2a(unscaled.to_bytes(length, "big", signed=True), newline=False).decode("ascii")
    return {"scale": scale, "value": value}


def _numeric_string(text: str) -> object:
    special = _NUMERIC_SPECIAL_STRINGS.get(text)
    if special is not None:
        return special
    if _NUMERIC_TEXT.fullmatch(text) is None:
        raise ValueError("malformed numeric")
    return text  # numeric_out already prints what BigDecimal.toPlainString() would


def _money(text: str) -> tuple[bool, str]:
    """Sign and digits of a money value, dropping currency symbol, grouping and parentheses."""
    value = text.strip()
    negative = value[:1] in ("-", "(")
    digits = "".join(c for c in value if c.isdigit() or c == ".")
    if not digits or digits.count(".") > 1:
        raise ValueError("malformed money value")
    return negative, digits


def _money_precise(text: str) -> object:
    negative, digits = _money(text)
    # BigDecimal.setScale(2, HALF_UP): round the magnitude half away from zero.
    dot = digits.find(".")
    fraction = "" if dot < 0 else digits[dot + 1 :]
    whole = digits if dot < 0 else digits[:dot]
    cents = int((whole or "0") + (fraction + "00")[:2])
    if fraction[2:3] >= "5":
        cents += 1
    return _twos_complement_b64(-cents if negative else cents)


def _money_string(text: str) -> object:
    negative, digits = _money(text)
    if digits.startswith("."):
        digits = "0" + digits
    return f"-{digits}" if negative and digits.strip("0.") else digits


def _money_double(text: str) -> object:
    negative, digits = _money(text)
    return -float(digits) if negative else float(digits)


# --- dates and times ------------------------------------------------------------------------

_DAY_US = 86_400_000_000
_TIMESTAMPTZ_UTC = re.compile(
    r"(\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])) ((?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d)"
    r"(?:\.(\d{1,6}))?\+00"
)

# Debezium maps date 'infinity'/'-infinity' to the LocalDates -5877611-06-21/-22
# (PostgresValueConverter.POSITIVE/NEGATIVE_INFINITY_LOCAL_DATE), i.e. these epoch days.
_DATE_INFINITY = {"infinity": -2147472693, "-infinity": -2147472692}
# ... and timestamp 'infinity'/'-infinity' to pgjdbc's PGStatement.DATE_POSITIVE/NEGATIVE_INFINITY
# read as microseconds; the millisecond schema gets the same instants in milliseconds.
_TIMESTAMP_INFINITY_US = {"infinity": 9223372036825200000, "-infinity": -9223372036832400000}
_TIMESTAMP_INFINITY_MS = {k: v // 1000 for k, v in _TIMESTAMP_INFINITY_US.items()}


# Fast paths: values shaped like the common case (years 0001-9999 AD, no BC, no 24:00) go through
# the C parsers in datetime; anything else goes through pg_text's strict parsers.
_EPOCH = datetime(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_MICROSECOND = timedelta(microseconds=1)


def _date(text: str) -> object:
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL
    special = _DATE_INFINITY.get(text)
    return parse_date(text) if special is None else special


def _time_micros(text: str) -> int:
    if 8 <= len(text) <= 15 and text[2] == ":" and text[5] == ":" and text[:2] != "24":
        value = time.fromisoformat(text)
        if value.tzinfo is None:
            seconds = (value.hour * 60 + value.minute) * 60 + value.second
            return seconds * 1_000_000 + value.microsecond
    return parse_time(text)


def _time_millis(text: str) -> object:
    return _time_micros(text) // 1000


def _iso_time(micros: int) -> str:
    """``HH:MM:SS[.fraction]`` as java.time's ISO_LOCAL_TIME prints it (trailing zeros dropped)."""
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:06d}".rstrip("0") if fraction else text


def _timetz(text: str) -> object:
    local, offset_seconds = parse_timetz(text)
    if local == _DAY_US and offset_seconds == 0:
        return "24:00:00Z"  # Debezium keeps PostgreSQL's end-of-day boundary (dbz#2100)
    return _iso_time((local - offset_seconds * 1_000_000) % _DAY_US) + "Z"


def _epoch_micros(text: str) -> int:
    # 4-digit year, a space, and a last character that is a digit: no " BC", no zone, no infinity.
    if len(text) >= 19 and text[4] == "-" and text[10] == " " and text[-1].isdigit():
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            micros: int = (value - _EPOCH) // _MICROSECOND
            return micros
    return parse_timestamp(text)


def _timestamp_micros(text: str) -> object:
    special = _TIMESTAMP_INFINITY_US.get(text)
    return _epoch_micros(text) if special is None else special


def _timestamp_millis(text: str) -> object:
    special = _TIMESTAMP_INFINITY_MS.get(text)
    return _epoch_micros(text) // 1000 if special is None else special


def _zoned_timestamp_converter(width: int) -> Convert:
    """ZonedTimestamp text in UTC.

    Since Debezium 2.2 (DBZ-5996, DBZ-6163) the PostgreSQL connector prints exactly ``width``
    fractional digits, the column's precision (6 when unspecified); precision 0 falls back to
    ISO_OFFSET_DATE_TIME, which drops a zero fraction.
    """
    pad = "0" * width

    def convert(text: str) -> object:
        # The common case (UTC session, 4-digit year AD) is rearranged without any arithmetic:
        # "2024-03-01 12:34:56.789+00" -> "2024-03-01T12:34:56.789000Z".
        match = _TIMESTAMPTZ_UTC.fullmatch(text)
        if match is not None:
            day, time_of_day, fraction = match.groups()
            if width > 0:
                return f"{day}T{time_of_day}.{((fraction or '') + pad)[:width]}Z"
            return f"{day}T{time_of_day}.{fraction}Z" if fraction else f"{day}T{time_of_day}Z"
        if text in ("infinity", "-infinity"):
            return text  # Debezium passes PostgreSQL's infinities through as strings
        epoch_day, micros = divmod(parse_timestamptz(text), _DAY_US)
        year, month, day_of_month = civil_from_epoch_day(epoch_day)
        # java.time's ISO_LOCAL_DATE: 4-digit years zero-padded, '+' above 9999, '-' below 0.
        y = f"+{year}" if year > 9999 else (f"{year:04d}" if year >= 0 else f"-{-year:04d}")
        seconds, fraction_us = divmod(micros, 1_000_000)
        time = _iso_time(seconds * 1_000_000)
        if width > 0:
            fraction_text = "." + f"{fraction_us:06d}"[:width]
        else:
            fraction_text = f".{fraction_us:06d}".rstrip("0") if fraction_us else ""
        return f"{y}-{month:02d}-{day_of_month:02d}T{time}{fraction_text}Z"

    return convert


def _interval(text: str) -> object:
    """MicroDuration as Debezium computes it from pgjdbc's PGInterval.

    MicroDuration.durationMicros() works in doubles with 365.25/12 = 30.4375 days per month, so
    this repeats its arithmetic operation by operation to land on the same (truncated) long.
    """
    years, months, days, hours, minutes, whole_seconds, micros = parse_interval(text)
    seconds = whole_seconds + micros / 1_000_000  # PGInterval.getSeconds()
    number_of_days = float(years * 12 + months) * 30.4375 + days
    number_of_seconds = ((number_of_days * 24 + hours) * 60 + minutes) * 60 + seconds
    return int(number_of_seconds * 1e6)


# --- other types ----------------------------------------------------------------------------


def _hstore_json(text: str) -> object:
    # Jackson's compact output; pairs keep hstore_out's order (Debezium's HashMap order differs,
    # which changes the bytes but not the JSON value).
    return json.dumps(parse_hstore(text), ensure_ascii=False, separators=(",", ":"))


def _bits(text: str) -> object:
    # BitSet.toByteArray(): little-endian, up to the highest set bit ('00' gives no bytes).
    if text.strip("01"):
        raise ValueError("malformed bit string")
    value = int(text, 2) if text else 0
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "little"))


_BOOLEANS = {"t": True, "f": False}
_BIT_BOOLEANS = {"1": True, "0": False}

# --- type resolution ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Codec:
    """How one type is written: schema (without ``optional``), converter, TOAST placeholder."""

    schema: Schema
    convert: Convert | None  # None: the text is the JSON value
    toast: object


def _resolve(pg_type: PgType) -> PgType:
    seen = 0
    while pg_type.base is not None and seen < 32:  # domains over domains; bound a catalog cycle
        pg_type, seen = pg_type.base, seen + 1
    return pg_type


def _array_element(pg_type: PgType) -> PgType | None:
    # typelem is also set on a few fixed-length types (name, point); only true arrays count.
    if pg_type.category == "A" or pg_type.name[:1] == "_":
        return pg_type.element
    return None


def _codec(pg_type: PgType, typmod: int, options: EncodingOptions) -> _Codec:
    pg_type = _resolve(pg_type)
    oid = pg_type.oid
    placeholder = options.unavailable_value_placeholder
    simple = _SIMPLE.get(oid)
    if simple is not None:
        schema, convert, toastable = simple
        return _Codec(schema, convert, placeholder if toastable else None)
    if oid in _TEMPORAL:
        # Adaptive precision: typmod is the precision (-1 = unspecified, which pgjdbc reports as 6).
        return _temporal(oid, typmod if typmod >= 0 else 6)
    if oid == _NUMERIC:
        return _numeric(typmod, options)
    if oid == _MONEY:
        return _money_codec(options)
    if oid == _BYTEA:
        return _Codec({"type": "bytes"}, _hex_bytea, _b64(placeholder.encode()))
    if oid in (_BIT, _VARBIT):
        # bit without a length is bit(1); unlimited varbit is reported with length Integer.MAX_VALUE.
        length = typmod if typmod >= 0 else (1 if oid == _BIT else 2147483647)
        if length == 1:
            return _Codec({"type": "boolean"}, _BIT_BOOLEANS.__getitem__, None)
        return _Codec(_logical("bytes", "io.debezium.data.Bits", length=str(length)), _bits, None)
    element = _array_element(pg_type)
    if element is not None:
        return _array(element, typmod, options)
    if pg_type.category == "E" or pg_type.enum_labels:
        allowed = ",".join(pg_type.enum_labels)
        schema = _logical("string", "io.debezium.data.Enum", allowed=allowed)
        return _Codec(schema, None, placeholder)
    extension = _EXTENSIONS.get(pg_type.name)
    if extension is not None:
        schema, convert = extension
        toast: object = placeholder
        if convert is _hstore_json:
            toast = json.dumps({placeholder: placeholder}, ensure_ascii=False, separators=(",", ":"))
        return _Codec(schema, convert, toast)
    # Unknown type (extension or exotic built-in: geometry, point, pg_lsn, vector, ...). Debezium
    # drops such columns unless include.unknown.datatypes is set; we keep the text as a string
    # so that no data silently disappears from the change event.
    return _Codec(_STRING, None, placeholder)


# oid -> (schema, converter, whether unchanged TOAST shows as the placeholder string)
_SIMPLE: dict[int, tuple[Schema, Convert | None, bool]] = {
    _BOOL: ({"type": "boolean"}, _BOOLEANS.__getitem__, False),
    _INT2: ({"type": "int16"}, int, False),
    _INT4: ({"type": "int32"}, int, False),
    _INT8: ({"type": "int64"}, int, False),
    _OID: ({"type": "int64"}, int, False),
    _FLOAT4: ({"type": "float"}, _float, False),
    _FLOAT8: ({"type": "double"}, _float, False),
    _TEXT: (_STRING, None, True),
    _VARCHAR: (_STRING, None, True),
    _BPCHAR: (_STRING, None, True),
    _CHAR: (_STRING, None, True),
    _NAME: (_STRING, None, True),
    _INET: (_STRING, None, True),
    _CIDR: (_STRING, None, True),
    _MACADDR: (_STRING, None, True),
    _MACADDR8: (_STRING, None, True),
    _INT2VECTOR: (_STRING, None, True),
    _OIDVECTOR: (_STRING, None, True),
    _UUID: (_logical("string", "io.debezium.data.Uuid"), None, True),
    _JSON: (_JSON_SCHEMA, None, True),
    _JSONB: (_JSON_SCHEMA, None, True),
    _XML: (_logical("string", "io.debezium.data.Xml"), None, True),
    _TSVECTOR: (_logical("string", "io.debezium.data.Tsvector"), None, True),
    _INTERVAL: (_logical("int64", "io.debezium.time.MicroDuration"), _interval, False),
    _TIMETZ: (_logical("string", "io.debezium.time.ZonedTime"), _timetz, False),
    **{oid: (_STRING, None, True) for oid in _RANGES},
}

_TEMPORAL = frozenset({_DATE, _TIME, _TIMESTAMP, _TIMESTAMPTZ})

# Extension types Debezium recognises by name.
_EXTENSIONS: dict[str, tuple[Schema, Convert | None]] = {
    "citext": (_STRING, None),
    "isbn": (_STRING, None),
    "ltree": (_logical("string", "io.debezium.data.Ltree"), None),
    "hstore": (_JSON_SCHEMA, _hstore_json),
}


def _temporal(oid: int, precision: int) -> _Codec:
    if oid == _DATE:
        return _Codec(_logical("int32", "io.debezium.time.Date"), _date, None)
    if oid == _TIME:
        if precision <= 3:
            return _Codec(_logical("int32", "io.debezium.time.Time"), _time_millis, None)
        return _Codec(_logical("int64", "io.debezium.time.MicroTime"), _time_micros, None)
    if oid == _TIMESTAMP:
        if precision <= 3:
            return _Codec(_logical("int64", "io.debezium.time.Timestamp"), _timestamp_millis, None)
        schema = _logical("int64", "io.debezium.time.MicroTimestamp")
        return _Codec(schema, _timestamp_micros, None)
    schema = _logical("string", "io.debezium.time.ZonedTimestamp")
    return _Codec(schema, _zoned_timestamp_converter(precision), None)


def _numeric(typmod: int, options: EncodingOptions) -> _Codec:
    mode = options.decimal_handling
    if mode is DecimalHandling.STRING:
        return _Codec(_STRING, _numeric_string, options.unavailable_value_placeholder)
    if mode is DecimalHandling.DOUBLE:
        return _Codec({"type": "double"}, _float, None)  # BigDecimal.doubleValue()
    if typmod < 4:  # numeric without precision and scale
        variable: Schema = {
            "type": "struct",
            "fields": _VARIABLE_SCALE_FIELDS,
            "name": "io.debezium.data.VariableScaleDecimal",
            "version": 1,
            "doc": "Variable scaled decimal",
        }
        return _Codec(variable, _variable_scale_decimal, None)
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15+ allows a negative scale
    parameters = {"scale": str(scale), "connect.decimal.precision": str(precision)}
    schema = _logical("bytes", "org.apache.kafka.connect.data.Decimal", **parameters)
    return _Codec(schema, _decimal_converter(scale), None)


def _money_codec(options: EncodingOptions) -> _Codec:
    mode = options.decimal_handling
    if mode is DecimalHandling.STRING:
        return _Codec(_STRING, _money_string, None)
    if mode is DecimalHandling.DOUBLE:
        return _Codec({"type": "double"}, _money_double, None)
    # money.fraction.digits defaults to 2; Decimal.builder(2) sets no precision parameter.
    schema = _logical("bytes", "org.apache.kafka.connect.data.Decimal", scale="2")
    return _Codec(schema, _money_precise, None)


def _array(element: PgType, typmod: int, options: EncodingOptions) -> _Codec:
    element = _resolve(element)
    item = _codec(element, typmod, options)
    # Debezium builds enum[] items without .optional() (every other element schema is optional).
    is_enum = element.category == "E" or bool(element.enum_labels)
    items = _finish(item.schema, optional=not is_enum)
    delimiter = ";" if element.oid == _BOX else ","
    convert_item = item.convert

    def convert(text: str) -> object:
        return _convert_items(parse_array(text, delimiter), convert_item)

    return _Codec({"type": "array", "items": items}, convert, _array_toast(element, item, options))


def _convert_items(items: ArrayItems, convert: Convert | None) -> list[object]:
    if convert is None:
        return [_convert_items(x, None) if isinstance(x, list) else x for x in items]
    return [
        convert(x) if isinstance(x, str) else (None if x is None else _convert_items(x, convert))
        for x in items
    ]


def _array_toast(element: PgType, item: _Codec, options: EncodingOptions) -> object:
    """Debezium's UnchangedToastedPlaceholder for an array column, by element type."""
    placeholder = options.unavailable_value_placeholder
    raw = placeholder.encode()
    oid = element.oid
    if oid in (_TEXT, _VARCHAR, _BPCHAR, _JSON, _JSONB):
        return [placeholder]
    if oid == _BYTEA:
        return [_b64(raw)]
    if oid in (_INT4, _INT8, _DATE):
        return [b - 256 if b > 127 else b for b in raw]  # the placeholder's (signed Java) bytes
    if oid == _UUID:
        # UUID.nameUUIDFromBytes(): an MD5-based (version 3) UUID of the placeholder's bytes.
        digest = hashlib.md5(raw, usedforsecurity=False).digest()
        return [str(uuid.UUID(bytes=digest, version=3))]
    if item.schema.get("type") == "string":
        # Debezium hands the bare placeholder string to an array schema here, fails the
        # conversion and emits null; a one-element list keeps the event valid and recognisable.
        return [placeholder]
    return None  # Debezium: failed conversion, null (numeric[], float8[], bool[], ...)


# --- the encoder ----------------------------------------------------------------------------


class FieldEncoder:
    """Encodes the values of one column; built once per table shape, called once per value.

    Attributes:
        name: The column name.
        schema: The field's Kafka Connect schema as Debezium writes it in the Value struct's
            ``schema.fields``, including ``field``, ``optional`` and, where Debezium sets them,
            ``name``, ``version``, ``doc``, ``parameters`` and ``items``. Shared with other
            encoders of the same type: treat it as read-only.
    """

    __slots__ = ("_convert", "_toast", "_type_name", "name", "schema")

    def __init__(
        self, name: str, schema: Schema, convert: Convert | None, toast: object, type_name: str
    ) -> None:
        self.name = name
        self.schema = schema
        self._convert = convert
        self._toast = toast
        self._type_name = type_name

    def encode(self, value: ColumnValue) -> object:
        """Encodes one value.

        Args:
            value: The column's text output, ``None`` for NULL, or ``UNCHANGED_TOAST``.

        Returns:
            The JSON-ready value (``None`` for NULL).

        Raises:
            DecodeError: The text cannot be parsed as the column's type, or the value is in
                binary format (capture requests text format only).
        """
        if type(value) is str:
            convert = self._convert
            if convert is None:
                return value
            try:
                return convert(value)
            except _PARSE_ERRORS as exc:
                raise self._error(value) from exc
        if value is None:
            return None
        if value is UNCHANGED_TOAST:
            toast = self._toast
            return list(toast) if isinstance(toast, list) else toast
        raise DecodeError(
            f"column {self.name!r} ({self._type_name}): binary-format values are not supported")

    def _error(self, value: str) -> DecodeError:
        shown = value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "..."
        return DecodeError(f"column {self.name!r} ({self._type_name}): cannot decode {shown!r}")

    def __repr__(self) -> str:
        return f"FieldEncoder({self.name!r}, {self._type_name})"


def build_field_encoder(column: Column, pg_type: PgType, options: EncodingOptions) -> FieldEncoder:
    """Builds the encoder for one column.

    Args:
        column: The column (name, typmod, nullability).
        pg_type: The column's type as resolved from the catalog (``element`` set for arrays,
            ``enum_labels`` for enums, ``base`` for domains).
        options: The connector's encoding settings.

    Returns:
        The column's encoder, with its field schema ready for the event's ``schema.fields``.
    """
    codec = _codec(pg_type, column.type_modifier, options)
    schema = _finish(codec.schema, column.optional, column.name)
    return FieldEncoder(column.name, schema, codec.convert, codec.toast, pg_type.name)
