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
This module holds the type → schema and converter resolution and the encoder; the converters
themselves (numbers, money, dates and times, intervals, bits, hstore) are in
:mod:`.value_converters`, the text parsers they build on in :mod:`.pg_text`.

Where Debezium's behaviour is a conversion failure (it logs a warning and emits ``null`` under its
default ``event.converting.failure.handling.mode=warn``), this module returns ``None`` as well; where
Debezium drops a column it cannot map, this module keeps it (see the notes at each place).
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import dataclass

from .errors import DecodeError
from .model import UNCHANGED_TOAST, Column, ColumnValue, PgType
from .pg_text import ArrayItems, parse_array
from .value_converters import (
    Convert,
    base64_text,
    bits,
    decimal_converter,
    epoch_day,
    float_value,
    hex_bytea,
    hstore_json,
    interval_micros,
    money_double,
    money_precise,
    money_string,
    numeric_string,
    time_micros,
    time_millis,
    timestamp_micros,
    timestamp_millis,
    variable_scale_decimal,
    zoned_time,
    zoned_timestamp_converter,
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
    schema.update(
        (key, base[key]) for key in ("name", "version", "doc", "parameters") if key in base
    )
    if field is not None:
        schema["field"] = field
    return schema


_STRING: Schema = {"type": "string"}
_JSON_SCHEMA = _logical("string", "io.debezium.data.Json")

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
        return _Codec({"type": "bytes"}, hex_bytea, base64_text(placeholder.encode()))
    if oid in (_BIT, _VARBIT):
        # bit without a length is bit(1); unlimited varbit is reported with length Integer.MAX_VALUE.
        length = typmod if typmod >= 0 else (1 if oid == _BIT else 2147483647)
        if length == 1:
            return _Codec({"type": "boolean"}, _BIT_BOOLEANS.__getitem__, None)
        return _Codec(_logical("bytes", "io.debezium.data.Bits", length=str(length)), bits, None)
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
        if convert is hstore_json:
            toast = json.dumps(
                {placeholder: placeholder}, ensure_ascii=False, separators=(",", ":")
            )
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
    _FLOAT4: ({"type": "float"}, float_value, False),
    _FLOAT8: ({"type": "double"}, float_value, False),
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
    _INTERVAL: (_logical("int64", "io.debezium.time.MicroDuration"), interval_micros, False),
    _TIMETZ: (_logical("string", "io.debezium.time.ZonedTime"), zoned_time, False),
    **{oid: (_STRING, None, True) for oid in _RANGES},
}

_TEMPORAL = frozenset({_DATE, _TIME, _TIMESTAMP, _TIMESTAMPTZ})

# Extension types Debezium recognises by name.
_EXTENSIONS: dict[str, tuple[Schema, Convert | None]] = {
    "citext": (_STRING, None),
    "isbn": (_STRING, None),
    "ltree": (_logical("string", "io.debezium.data.Ltree"), None),
    "hstore": (_JSON_SCHEMA, hstore_json),
}


def _temporal(oid: int, precision: int) -> _Codec:
    if oid == _DATE:
        return _Codec(_logical("int32", "io.debezium.time.Date"), epoch_day, None)
    if oid == _TIME:
        if precision <= 3:
            return _Codec(_logical("int32", "io.debezium.time.Time"), time_millis, None)
        return _Codec(_logical("int64", "io.debezium.time.MicroTime"), time_micros, None)
    if oid == _TIMESTAMP:
        if precision <= 3:
            return _Codec(_logical("int64", "io.debezium.time.Timestamp"), timestamp_millis, None)
        schema = _logical("int64", "io.debezium.time.MicroTimestamp")
        return _Codec(schema, timestamp_micros, None)
    schema = _logical("string", "io.debezium.time.ZonedTimestamp")
    return _Codec(schema, zoned_timestamp_converter(precision), None)


def _numeric(typmod: int, options: EncodingOptions) -> _Codec:
    mode = options.decimal_handling
    if mode is DecimalHandling.STRING:
        return _Codec(_STRING, numeric_string, options.unavailable_value_placeholder)
    if mode is DecimalHandling.DOUBLE:
        return _Codec({"type": "double"}, float_value, None)  # BigDecimal.doubleValue()
    if typmod < 4:  # numeric without precision and scale
        variable: Schema = {
            "type": "struct",
            "fields": _VARIABLE_SCALE_FIELDS,
            "name": "io.debezium.data.VariableScaleDecimal",
            "version": 1,
            "doc": "Variable scaled decimal",
        }
        return _Codec(variable, variable_scale_decimal, None)
    precision = ((typmod - 4) >> 16) & 0xFFFF
    scale = (((typmod - 4) & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15+ allows a negative scale
    parameters = {"scale": str(scale), "connect.decimal.precision": str(precision)}
    schema = _logical("bytes", "org.apache.kafka.connect.data.Decimal", **parameters)
    return _Codec(schema, decimal_converter(scale), None)


def _money_codec(options: EncodingOptions) -> _Codec:
    mode = options.decimal_handling
    if mode is DecimalHandling.STRING:
        return _Codec(_STRING, money_string, None)
    if mode is DecimalHandling.DOUBLE:
        return _Codec({"type": "double"}, money_double, None)
    # money.fraction.digits defaults to 2; Decimal.builder(2) sets no precision parameter.
    schema = _logical("bytes", "org.apache.kafka.connect.data.Decimal", scale="2")
    return _Codec(schema, money_precise, None)


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
        return [base64_text(raw)]
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
            f"column {self.name!r} ({self._type_name}): binary-format values are not supported"
        )

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
