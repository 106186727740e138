"""Debezium-encoded column values back to plain Python values.

Debezium writes PostgreSQL values in Kafka Connect encodings (see the README's type table):
``numeric(p,s)`` as base64 two's-complement bytes whose scale is only in the schema, ``date`` as days
since 1970, ``timestamp`` as µs (or ms) since 1970, ``timestamptz`` as an ISO string, and so on.

Two ways in, one result:

* **With the schema** (``schemas.enable = true``, :attr:`DecodedEvent.row_schema`):
  :func:`schema_decoder` reads each field's logical type name and parameters and decodes exactly:
  :class:`~decimal.Decimal`, :class:`~datetime.date`, aware UTC :class:`~datetime.datetime`,
  :class:`~datetime.time`, :class:`~datetime.timedelta`.
* **Without it** (Debezium's default) a JSON value alone is ambiguous (is ``19783`` a day, a
  millisecond or a count? is ``"MDk="`` text or a decimal?), so the mapping config says what the
  column is, through a transform and its options (``transform = "decimal", scale = 2``;
  ``transform = "timestamp", unit = "ms"``), and the field's kind picks a default (a
  ``timestamp`` field reads integers as µs, what ``timestamp``/``timestamptz`` columns of the
  default precision give). The lenient :func:`to_decimal`, :func:`to_datetime` and :func:`to_date`
  below implement that; they also accept already-decoded values, so one mapping works whether or
  not the events carry schemas.

Unchanged TOASTed values arrive as a placeholder in several shapes (:func:`is_unavailable`); they
mean "this column did not change", never a value. :class:`RowReader` reads one event's row: each
column once, decoded by its schema when there is one, a placeholder replaced by the old row's value
(``REPLICA IDENTITY FULL``) or by :data:`UNAVAILABLE`.
"""

from __future__ import annotations

import binascii
import difflib
import enum
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = [
    "DEFAULT_PLACEHOLDER",
    "UNAVAILABLE",
    "ColumnError",
    "DecoderMemo",
    "MissingColumn",
    "RowReader",
    "TimeUnit",
    "Unavailable",
    "decimal_from_base64",
    "decimal_from_variable_scale",
    "is_unavailable",
    "schema_decoder",
    "to_date",
    "to_datetime",
    "to_decimal",
    "to_epoch_micros",
]

DEFAULT_PLACEHOLDER: Final = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder`` (our connector writes the same)."""


class Unavailable(enum.Enum):
    """The type of :data:`UNAVAILABLE`."""

    MARKER = "unavailable"

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = Unavailable.MARKER
"""Stands for "not in this event, keep the previous value". Deliberately not JSON-serialisable,
so that a store that forgets to merge it fails loudly instead of storing a placeholder."""


class TimeUnit(enum.StrEnum):
    """The unit of an integer instant (``timestamp`` columns without a schema)."""

    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"


# --- the TOAST placeholder ---------------------------------------------------------------------


def _placeholder_forms(placeholder: str) -> tuple[frozenset[str], tuple[object, ...]]:
    """Every shape Debezium gives the placeholder: text, base64 (bytea), hstore JSON, arrays."""
    raw = placeholder.encode()
    b64 = binascii.b2a_base64(raw, newline=False).decode("ascii")
    hstore = '{"%s":"%s"}' % (placeholder, placeholder)  # noqa: UP031 - a JSON literal, not a format
    digest = hashlib.md5(raw, usedforsecurity=False).digest()
    uuid3 = str(uuid.UUID(bytes=digest, version=3))
    signed_bytes = [b - 256 if b > 127 else b for b in raw]  # int[]/bigint[]/date[] columns
    return frozenset((placeholder, b64, hstore)), ([placeholder], [b64], [uuid3], signed_bytes)


_STRING_FORMS, _LIST_FORMS = _placeholder_forms(DEFAULT_PLACEHOLDER)
_STRING_LENGTHS = frozenset(len(s) for s in _STRING_FORMS)
_LIST_LENGTHS = frozenset(len(x) for x in _LIST_FORMS if isinstance(x, list))


def is_unavailable(value: object) -> bool:
    """Whether a column value is Debezium's unchanged-TOAST placeholder (in any of its shapes)."""
    # Runs for every mapped column of every event: compare lengths before hashing long text.
    if value.__class__ is str:
        return len(value) in _STRING_LENGTHS and value in _STRING_FORMS
    if value.__class__ is list:
        return len(value) in _LIST_LENGTHS and value in _LIST_FORMS
    return value is UNAVAILABLE


# --- decimals ----------------------------------------------------------------------------------


def decimal_from_base64(text: str, scale: int) -> Decimal:
    """A precise-mode Debezium ``Decimal``: base64 big-endian two's complement, scale from the schema.

    Raises:
        ValueError: ``text`` is not base64.
    """
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not a base64 Debezium decimal ({exc})") from None
    unscaled = int.from_bytes(data, "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def decimal_from_variable_scale(value: Mapping[str, Any]) -> Decimal:
    """An ``io.debezium.data.VariableScaleDecimal`` struct (``{"scale": 2, "value": "MDk="}``).

    Raises:
        ValueError: The struct is malformed.
    """
    scale, encoded = value.get("scale"), value.get("value")
    if not isinstance(scale, int) or not isinstance(encoded, str):
        raise ValueError("not a VariableScaleDecimal struct (needs int scale and base64 value)")
    return decimal_from_base64(encoded, scale)


_DECIMAL_TEXT = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*")


def to_decimal(value: object, scale: int | None = None) -> Decimal | None:
    """A decimal from whatever a ``numeric``/``money`` column looks like in an event.

    Args:
        value: An already decoded :class:`Decimal`; an ``int`` or ``float``
            (``decimal.handling.mode=double``); a VariableScaleDecimal struct; or a string, which
            is base64 when ``scale`` is given (``precise`` mode: the scale lives only in the schema,
            so the config must state it) and decimal text otherwise (``string`` mode).
        scale: The column's scale, for base64 values without a schema.

    Raises:
        ValueError: The value cannot be read as a decimal; the message says how to fix the config
            when the value looks like a base64 decimal without a declared scale.
    """
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return decimal_from_variable_scale(value)
    if isinstance(value, str):
        if scale is not None:
            return decimal_from_base64(value, scale)
        if _DECIMAL_TEXT.fullmatch(value):
            try:
                return Decimal(value.strip())
            except InvalidOperation:
                pass
        raise ValueError(
            "not decimal text; if it is a base64 Debezium decimal (decimal.handling.mode=precise, "
            "the default), declare the column's scale (scale = N) or enable schemas"
        )
    raise ValueError(f"a {type(value).__name__} is not a number")


# --- dates and times ---------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ONE_MICROSECOND = timedelta(microseconds=1)
_US_PER_UNIT = {TimeUnit.S: 1_000_000, TimeUnit.MS: 1_000, TimeUnit.US: 1}
_INFINITIES = frozenset(("infinity", "-infinity", "+infinity"))


def _from_epoch(amount: int, unit: TimeUnit) -> datetime | None:
    micros = amount // 1000 if unit is TimeUnit.NS else amount * _US_PER_UNIT[unit]
    try:
        return _EPOCH + timedelta(0, 0, micros)  # positional: cheaper than the keyword
    except OverflowError:
        # Debezium's encodings of 'infinity' (and anything beyond year 9999): no finite instant,
        # and a profile holds no infinities, so the field is empty rather than the event lost.
        return None


def _from_days(days: int) -> date | None:
    try:
        return date.fromordinal(_EPOCH_ORDINAL + days)
    except (OverflowError, ValueError):
        return None  # Debezium's 'infinity' dates: see _from_epoch


def _parse_instant(text: str) -> datetime | None:
    stripped = text.strip()
    if stripped.lower() in _INFINITIES:
        return None
    parsed = datetime.fromisoformat(stripped)
    # A timestamp without zone is wall-clock time as Debezium writes `timestamp` columns: UTC.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def to_datetime(value: object, unit: TimeUnit = TimeUnit.US) -> datetime | None:
    """An aware datetime from a decoded value, an integer instant or an ISO-8601 string.

    Integers count ``unit`` since 1970-01-01 UTC (µs by default: MicroTimestamp, what ``timestamp``
    columns of the default precision give; ``ms`` for ``timestamp(0..3)``). Strings are ISO-8601
    (ZonedTimestamp ``2024-03-01T10:34:56.5Z``, or text with an offset); without a zone they are UTC.
    Infinite values give ``None``.

    Raises:
        ValueError: The value is not an instant.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, bool):
        raise ValueError("a boolean is not an instant")
    if isinstance(value, int):
        return _from_epoch(value, unit)
    if isinstance(value, str):
        digits = value[1:] if value[:1] == "-" else value
        if digits.isascii() and digits.isdigit():
            return _from_epoch(int(value), unit)
        try:
            return _parse_instant(value)
        except ValueError:
            raise ValueError("not an ISO-8601 timestamp") from None
    raise ValueError(f"a {type(value).__name__} is not an instant")


def to_date(value: object) -> date | None:
    """A date from a decoded value, days since 1970 (``io.debezium.time.Date``) or ISO text.

    An instant gives its UTC calendar date. Infinite values give ``None``.

    Raises:
        ValueError: The value is not a date.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo is not None else value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, bool):
        raise ValueError("a boolean is not a date")
    if isinstance(value, int):
        return _from_days(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _INFINITIES:
            return None
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            instant = _parse_instant(text)
        except ValueError:
            raise ValueError("not an ISO-8601 date") from None
        return None if instant is None else instant.astimezone(UTC).date()
    raise ValueError(f"a {type(value).__name__} is not a date")


# --- decoding by schema ------------------------------------------------------------------------

Decoder = Callable[[Any], Any]


def _time_of_day(micros: int) -> time:
    if micros >= 86_400_000_000:
        return time.max  # PostgreSQL's 24:00:00
    seconds, fraction = divmod(micros, 1_000_000)
    return time(seconds // 3600, seconds // 60 % 60, seconds % 60, fraction)


def _zoned_time(text: str) -> time:
    return time.max if text.startswith("24:00") else time.fromisoformat(text)


def _float(value: Any) -> Any:
    # Jackson writes non-finite doubles as strings; keep them floats so number fields reject them.
    return float(value) if isinstance(value, str) else value


_BY_NAME: dict[str, Decoder] = {
    "io.debezium.data.VariableScaleDecimal": decimal_from_variable_scale,
    "io.debezium.time.Date": _from_days,
    "io.debezium.time.Timestamp": lambda v: _from_epoch(v, TimeUnit.MS),
    "io.debezium.time.MicroTimestamp": lambda v: _from_epoch(v, TimeUnit.US),
    "io.debezium.time.NanoTimestamp": lambda v: _from_epoch(v, TimeUnit.NS),
    "io.debezium.time.ZonedTimestamp": _parse_instant,
    "io.debezium.time.Time": lambda v: _time_of_day(v * 1000),
    "io.debezium.time.MicroTime": _time_of_day,
    "io.debezium.time.NanoTime": lambda v: _time_of_day(v // 1000),
    "io.debezium.time.ZonedTime": _zoned_time,
    "io.debezium.time.MicroDuration": lambda v: timedelta(microseconds=v),
}
_BY_TYPE: dict[str, Decoder] = {
    "float": _float,
    "double": _float,
    "float32": _float,
    "float64": _float,
}


def schema_decoder(field_schema: Mapping[str, Any]) -> Decoder | None:
    """The decoder for values of one Kafka Connect field schema, or ``None`` if they are plain.

    Plain values (text, integers, booleans, JSON and UUID strings, base64 ``bytea``) need no
    decoding. The decoder is not called with ``None`` (SQL NULL) or the TOAST placeholder.

    Raises:
        ValueError: The schema is malformed (a ``Decimal`` without a scale).
    """
    name = field_schema.get("name")
    if name == "org.apache.kafka.connect.data.Decimal":
        parameters = field_schema.get("parameters") or {}
        try:
            scale = int(parameters["scale"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("Decimal schema without an integer scale parameter") from None
        return lambda value: decimal_from_base64(value, scale)
    if isinstance(name, str):
        decoder = _BY_NAME.get(name)
        if decoder is not None:
            return decoder
    kind = field_schema.get("type")
    if kind == "array":
        items = field_schema.get("items")
        item = schema_decoder(items) if isinstance(items, Mapping) else None
        if item is None:
            return None
        return lambda values: [_decode_item(item, v) for v in values]
    return _BY_TYPE.get(kind) if isinstance(kind, str) else None


def _decode_item(item: Decoder, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):  # multi-dimensional arrays
        return [_decode_item(item, v) for v in value]
    return item(value)


def to_epoch_micros(value: object, unit: TimeUnit = TimeUnit.US) -> int | None:
    """A version column's value as µs since 1970 (instants and dates), or the integer itself.

    Plain integers are an instant in ``unit`` (a counter stays itself with the default ``us``);
    strings are ISO-8601 instants or integer text.

    Raises:
        ValueError: Not an instant, a date or an integer.
    """
    if isinstance(value, str):
        value = to_datetime(value, unit)
    if value is None or value is UNAVAILABLE:
        return None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _ONE_MICROSECOND
    if isinstance(value, date):
        return (value.toordinal() - _EPOCH_ORDINAL) * 86_400_000_000
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value // 1000 if unit is TimeUnit.NS else value * _US_PER_UNIT[unit]
    raise ValueError("not a timestamp, a date or an integer")


# --- reading one event's row -------------------------------------------------------------------


class ColumnError(ValueError):
    """A column could not be read, decoded or transformed.

    Attributes:
        column: The column (or ``a, b`` for several).
        step: What failed: ``decode <schema name>``, a transform's name, ``version``…
        reason: Why.
        value: The value that failed.
    """

    def __init__(self, column: str, step: str | None, reason: str, value: object) -> None:
        super().__init__(f"column {column!r}: {reason}")
        self.column, self.step, self.reason, self.value = column, step, reason, value


class MissingColumn(ColumnError):
    """The event's row has no such column: the source table no longer matches the mapping.

    Not a bad value but a schema change (the column was renamed or dropped while running), so
    every later event of the table fails the same way until the mapping follows the source.
    """


_UNREAD: Final = object()

DecoderMemo = dict[str, tuple[Mapping[str, Any], Decoder | None]]
"""Column → (the field schema last seen, its decoder): kept per table by the caller."""


class RowReader:
    """One event's row: each column decoded once, unchanged-TOAST placeholders resolved.

    Args:
        after: The row image to read (``after``; ``before`` of a delete).
        before: The old image, for unchanged TOAST values, or ``None``.
        schema: Column → field schema when the event carried schemas.
        memo: The table's decoder memo (events bring fresh copies of equal schemas).
    """

    __slots__ = ("_after", "_before", "_cache", "_memo", "_schema")

    def __init__(
        self,
        after: Mapping[str, Any],
        before: Mapping[str, Any] | None,
        schema: Mapping[str, Mapping[str, Any]] | None,
        memo: DecoderMemo,
    ) -> None:
        self._after, self._before, self._schema, self._memo = after, before, schema, memo
        self._cache: dict[str, Any] = {}

    def get(self, column: str) -> Any:
        """The column's decoded value, ``None`` for NULL, or :data:`UNAVAILABLE`.

        Raises:
            ColumnError: The row has no such column, or its value does not match its schema.
        """
        cache = self._cache
        # One lookup per mapping on the hot path (a column is read once or twice per event).
        value = cache.get(column, _UNREAD)
        if value is not _UNREAD:
            return value
        value = self._after.get(column, _UNREAD)
        if value is _UNREAD:
            raise self._missing(column)
        if is_unavailable(value):
            # Unchanged TOAST. Under REPLICA IDENTITY FULL the old row carries the value (detoasted)
            # and the column did not change, so that is the current value. A NULL there means a
            # key-only old row, not a NULL value: a TOASTed value is never NULL.
            old = None if self._before is None else self._before.get(column)
            value = UNAVAILABLE if old is None or is_unavailable(old) else old
        if value is not None and value is not UNAVAILABLE and self._schema is not None:
            value = self._decode(column, value)
        cache[column] = value
        return value

    def _missing(self, column: str) -> MissingColumn:
        known = sorted(self._after)
        close = difflib.get_close_matches(column, known, n=1, cutoff=0.6)
        hint = f" did you mean {close[0]}?" if close else ""
        return MissingColumn(
            column,
            None,
            f"not in the event's row (renamed or dropped in the source?{hint});"
            f" it has {', '.join(known)}",
            None,
        )

    def _decode(self, column: str, value: Any) -> Any:
        field_schema = self._schema.get(column) if self._schema is not None else None
        if field_schema is None:
            return value
        memo = self._memo.get(column)
        try:
            # Each event brings its own copy of the schema: reuse the decoder while it is equal.
            # (An in-process source shares one schema object across events: no comparison.)
            if memo is None or (memo[0] is not field_schema and memo[0] != field_schema):
                memo = (field_schema, schema_decoder(field_schema))
                self._memo[column] = memo
            decoder = memo[1]
            return value if decoder is None else decoder(value)
        except (ValueError, TypeError, ArithmeticError) as exc:
            name = field_schema.get("name") or field_schema.get("type")
            raise ColumnError(column, f"decode {name}", str(exc), value) from None
