"""Value converters: the text PostgreSQL prints for one value → the JSON value Debezium writes.

Each converter takes the text of one (non-NULL) value, as read under the session settings that
:mod:`.type_encoding` describes, and returns its JSON-ready value in Debezium's encoding: numbers
and money per ``decimal.handling.mode``, dates, times and timestamps per
``time.precision.mode=adaptive``, intervals as ``MicroDuration``, ``bit(n)`` as ``Bits`` bytes and
``hstore`` as JSON text. A converter raises ``ValueError`` (or ``KeyError``, ``IndexError``,
``OverflowError``) on malformed text; it returns ``None`` where Debezium's conversion fails and it
emits ``null``. Which converter a column gets is decided in :mod:`.type_encoding`.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta

from .pg_text import (
    civil_from_epoch_day,
    parse_date,
    parse_hstore,
    parse_interval,
    parse_time,
    parse_timestamp,
    parse_timestamptz,
    parse_timetz,
)

__all__ = [
    "Convert",
    "base64_text",
    "bits",
    "decimal_converter",
    "epoch_day",
    "float_value",
    "hex_bytea",
    "hstore_json",
    "interval_micros",
    "money_double",
    "money_precise",
    "money_string",
    "numeric_string",
    "time_micros",
    "time_millis",
    "timestamp_micros",
    "timestamp_millis",
    "variable_scale_decimal",
    "zoned_time",
    "zoned_timestamp_converter",
]


Convert = Callable[[str], object]
"""Turns one value's text into its JSON value; raises ValueError (or similar) on malformed text."""

# --- bytes and floats ------------------------------------------------------------------------


_b2a = binascii.b2a_base64


def base64_text(data: bytes) -> str:
    # Kafka's JsonConverter writes BYTES as standard base64 with padding (Jackson's default variant).
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _twos_complement_b64(unscaled: int) -> str:
    # Java's BigInteger.toByteArray(): the shortest big-endian two's complement with a sign bit.
    length = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
    return base64_text(unscaled.to_bytes(length, "big", signed=True))


# Jackson (under Kafka's JsonConverter) quotes non-finite numbers, so they appear as JSON strings.
_NON_FINITE: dict[str, object] = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def float_value(text: str) -> object:
    special = _NON_FINITE.get(text)
    return float(text) if special is None else special


def hex_bytea(text: str) -> str:
    if not text.startswith("\\x"):
        raise ValueError("bytea not in hex format")
    return base64_text(bytes.fromhex(text[2:]))


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


def decimal_converter(scale: int) -> Convert:
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


def variable_scale_decimal(text: str) -> object:
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


def numeric_string(text: str) -> object:
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


def money_precise(text: str) -> object:
    negative, digits = _money(text)
    # BigDecimal.setScale(2, HALF_UP): round the magnitude half away from zero.
    dot = digits.find(".")
    fraction = "" if dot < 0 else digits[dot + 1 :]
    whole = digits if dot < 0 else digits[:dot]
    cents = int((whole or "0") + (fraction + "00")[:2])
    if fraction[2:3] >= "5":
        cents += 1
    return _twos_complement_b64(-cents if negative else cents)


def money_string(text: str) -> object:
    negative, digits = _money(text)
    if digits.startswith("."):
        digits = "0" + digits
    return f"-{digits}" if negative and digits.strip("0.") else digits


def money_double(text: str) -> object:
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


def epoch_day(text: str) -> object:
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL
    special = _DATE_INFINITY.get(text)
    return parse_date(text) if special is None else special


def time_micros(text: str) -> int:
    if 8 <= len(text) <= 15 and text[2] == ":" and text[5] == ":" and text[:2] != "24":
        value = time.fromisoformat(text)
        if value.tzinfo is None:
            seconds = (value.hour * 60 + value.minute) * 60 + value.second
            return seconds * 1_000_000 + value.microsecond
    return parse_time(text)


def time_millis(text: str) -> object:
    return time_micros(text) // 1000


def _iso_time(micros: int) -> str:
    """``HH:MM:SS[.fraction]`` as java.time's ISO_LOCAL_TIME prints it (trailing zeros dropped)."""
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:06d}".rstrip("0") if fraction else text


def zoned_time(text: str) -> object:
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


def timestamp_micros(text: str) -> object:
    special = _TIMESTAMP_INFINITY_US.get(text)
    return _epoch_micros(text) if special is None else special


def timestamp_millis(text: str) -> object:
    special = _TIMESTAMP_INFINITY_MS.get(text)
    return _epoch_micros(text) // 1000 if special is None else special


def zoned_timestamp_converter(width: int) -> Convert:
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
        time_text = _iso_time(seconds * 1_000_000)
        if width > 0:
            fraction_text = "." + f"{fraction_us:06d}"[:width]
        else:
            fraction_text = f".{fraction_us:06d}".rstrip("0") if fraction_us else ""
        return f"{y}-{month:02d}-{day_of_month:02d}T{time_text}{fraction_text}Z"

    return convert


def interval_micros(text: str) -> object:
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


def hstore_json(text: str) -> object:
    # Jackson's compact output; pairs keep hstore_out's order (Debezium's HashMap order differs,
    # which changes the bytes but not the JSON value).
    return json.dumps(parse_hstore(text), ensure_ascii=False, separators=(",", ":"))


def bits(text: str) -> object:
    # BitSet.toByteArray(): little-endian, up to the highest set bit ('00' gives no bytes).
    if text.strip("01"):
        raise ValueError("malformed bit string")
    value = int(text, 2) if text else 0
    return base64_text(value.to_bytes((value.bit_length() + 7) // 8, "little"))
