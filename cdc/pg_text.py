"""Parsers for PostgreSQL's text output: array literals, ``hstore``, dates, times and intervals.

Pure functions over the text that PostgreSQL's output functions print under the session settings
capture fixes (``DateStyle='ISO, YMD'``, ``IntervalStyle='postgres'``). They accept exactly what
those output functions produce (which is narrower than what the input functions accept), so that a
value which did not come from the server fails loudly instead of being guessed at. Every parser
raises :class:`ValueError` on malformed input; callers turn that into their own error. The special
values ``infinity``/``-infinity`` are left to callers, which map them to their own sentinels.
"""

from __future__ import annotations

import re
from datetime import date
from typing import TypeAlias

ArrayItems: TypeAlias = "list[str | ArrayItems | None]"
"""A parsed array literal: elements as text, ``None`` for SQL NULL, nested lists for sub-arrays."""

# A quoted element, a structural character ({, } or the delimiter), or an unquoted element.
# array_out quotes every element containing a backslash, quote, brace, delimiter or whitespace
# (array_isspace: ASCII space, \t, \n, \r, \v, \f only), so an unquoted element never contains
# any of them.
_TOKEN_TEMPLATE = r'"((?:[^"\\]|\\.)*)"|([{{}}{d}])|([^"\\{{}}{d} \t\n\r\v\f]+)'  # noqa: S105
_TOKEN_PATTERNS: dict[str, re.Pattern[str]] = {}
_NOT_PLAIN = re.compile(r'["{}\\ \t\n\r\v\f]')
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)

_HSTORE_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"=>(?:"((?:[^"\\]|\\.)*)"|(NULL))', re.DOTALL)


def _token_pattern(delimiter: str) -> re.Pattern[str]:
    pattern = _TOKEN_PATTERNS.get(delimiter)
    if pattern is None:
        d = re.escape(delimiter)
        pattern = re.compile(_TOKEN_TEMPLATE.format(d=d), re.DOTALL)
        _TOKEN_PATTERNS[delimiter] = pattern
    return pattern


def _unescape(quoted: str) -> str:
    return _ESCAPED.sub(r"\1", quoted) if "\\" in quoted else quoted


def parse_array(text: str, delimiter: str = ",") -> ArrayItems:
    """Parses an array literal as ``array_out`` prints it.

    Args:
        text: The literal, e.g. ``{1,2,NULL}``, ``{"a b","c\\"d"}``, ``{{1,2},{3,4}}`` or
            ``[0:1]={1,2}`` (bounds other than 1 are printed as a prefix, which is dropped).
        delimiter: The element type's ``typdelim``: ``,`` for every built-in type except ``box``.

    Returns:
        The elements as text (quotes and backslash escapes removed), ``None`` for an unquoted
        ``NULL``, and nested lists for multi-dimensional arrays.

    Raises:
        ValueError: The text is not an array literal.
    """
    if text[:1] == "[":
        equals = text.find("=")
        if equals < 0:
            raise ValueError("array bounds without '='")
        text = text[equals + 1 :]
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        raise ValueError("not an array literal")
    inner = text[1:-1]
    # Fast path for the common one-dimensional array of plain elements (numbers, dates, words).
    if _NOT_PLAIN.search(inner) is None:
        if not inner:
            return []
        items = inner.split(delimiter)
        if "" in items:
            raise ValueError("empty unquoted array element")
        return [None if item == "NULL" else item for item in items]
    return _parse_nested(text, delimiter)


def _parse_nested(text: str, delimiter: str) -> ArrayItems:
    token = _token_pattern(delimiter).match
    root: ArrayItems | None = None
    stack: list[ArrayItems] = []
    # What the previous token allows next: an element or sub-array ("open" after "{", "delim"
    # after the delimiter), or a delimiter or closing brace ("item" after an element or "}").
    state = "start"
    pos, end = 0, len(text)
    while pos < end:
        match = token(text, pos)
        if match is None:
            raise ValueError(f"unexpected character at offset {pos}")
        pos = match.end()
        quoted, punct, bare = match.groups()
        if punct == "{":
            if state not in ("start", "open", "delim") or (state == "start" and root is not None):
                raise ValueError(f"unexpected '{{' at offset {pos - 1}")
            sub: ArrayItems = []
            if stack:
                stack[-1].append(sub)
            else:
                root = sub
            stack.append(sub)
            state = "open"
        elif punct == "}":
            if state not in ("open", "item") or not stack:
                raise ValueError(f"unexpected '}}' at offset {pos - 1}")
            stack.pop()
            state = "item" if stack else "start"
        elif punct is not None:  # the delimiter
            if state != "item":
                raise ValueError(f"unexpected delimiter at offset {pos - 1}")
            state = "delim"
        else:
            if state not in ("open", "delim"):
                raise ValueError(f"unexpected element at offset {match.start()}")
            if quoted is not None:
                stack[-1].append(_unescape(quoted))
            else:
                stack[-1].append(None if bare == "NULL" else bare)
            state = "item"
    if root is None or stack:
        raise ValueError("unbalanced braces")
    return root


def parse_hstore(text: str) -> dict[str, str | None]:
    """Parses an ``hstore`` value as ``hstore_out`` prints it.

    Args:
        text: The value, e.g. ``"a"=>"1", "b"=>NULL`` (the empty hstore prints as an empty string).

    Returns:
        The pairs in the order printed, values ``None`` for NULL.

    Raises:
        ValueError: The text is not an hstore value.
    """
    pairs: dict[str, str | None] = {}
    pos, end = 0, len(text)
    while pos < end:
        match = _HSTORE_PAIR.match(text, pos)
        if match is None:
            raise ValueError(f"unexpected character at offset {pos}")
        key, value, null = match.groups()
        pairs[_unescape(key)] = None if null else _unescape(value)
        pos = match.end()
        if pos < end:
            if not text.startswith(", ", pos):
                raise ValueError(f"expected ', ' at offset {pos}")
            pos += 2
            if pos == end:
                raise ValueError("trailing separator")
    return pairs


# --- dates and times ------------------------------------------------------------------------

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_FRACTION_SCALE = (1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)

_DATE_TEXT = re.compile(r"(\d{4,})-(\d\d)-(\d\d)( BC)?")
_TIME_TEXT = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
_OFFSET = r"([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?"
_TIMETZ_TEXT = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?" + _OFFSET)
_TIMESTAMP_TEXT = re.compile(r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?( BC)?")
_TIMESTAMPTZ_TEXT = re.compile(
    r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?" + _OFFSET + "( BC)?"
)
# An interval's time part; hours are unbounded (IntervalStyle=postgres never carries them to days).
_INTERVAL_TIME = re.compile(r"([+-]?)(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?")
# interval_out's usual shape in one match: "[N year(s)] [N mon(s)] [N day(s)] [[+-]HH:MM:SS[.f]]".
_INTERVAL_TEXT = re.compile(
    r"(?:([+-]?\d+) years?(?: |$))?(?:([+-]?\d+) mons?(?: |$))?(?:([+-]?\d+) days?(?: |$))?"
    r"(?:([+-]?)(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
)


def _fraction_micros(fraction: str | None) -> int:
    return 0 if fraction is None else int(fraction) * _FRACTION_SCALE[len(fraction)]


def _seconds_of_day(hours: str, minutes: str, seconds: str, end_of_day: bool = False) -> int:
    h, m, s = int(hours), int(minutes), int(seconds)
    if m > 59 or s > 59 or h > 24 or (h == 24 and not end_of_day):
        raise ValueError("time of day out of range")
    return h * 3600 + m * 60 + s


def _year(year_text: str, bc: str | None) -> int:
    year = int(year_text)
    return 1 - year if bc else year  # 1 BC is year 0 in ISO-8601 (and in java.time)


def _offset_seconds(sign: str, hours: str, minutes: str | None, seconds: str | None) -> int:
    offset = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return -offset if sign == "-" else offset


def epoch_day(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar.

    Args:
        year: Astronomical year (1 BC is 0, 2 BC is -1); any size.
        month: 1-12.
        day: 1-31.

    Returns:
        The (possibly negative) day number.

    Raises:
        ValueError: The month or day is out of range.
    """
    if 1 <= year <= 9999:
        return date(year, month, day).toordinal() - _EPOCH_ORDINAL
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError("date out of range")
    # Howard Hinnant's days_from_civil, for the years datetime cannot hold (PostgreSQL dates run
    # from 4713 BC to 5874897 AD).
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def civil_from_epoch_day(day_number: int) -> tuple[int, int, int]:
    """The inverse of :func:`epoch_day`: ``(astronomical year, month, day)``."""
    z = day_number + 719468
    era = z // 146097
    day_of_era = z - era * 146097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def parse_date(text: str) -> int:
    """Parses a ``date`` (``2024-03-01``, ``0044-03-15 BC``) into days since 1970-01-01."""
    match = _DATE_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("malformed date")
    year, month, day, bc = match.groups()
    return epoch_day(_year(year, bc), int(month), int(day))


def parse_time(text: str) -> int:
    """Parses a ``time`` (``12:34:56.5``, up to ``24:00:00``) into microseconds past midnight."""
    match = _TIME_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("malformed time")
    hours, minutes, seconds, fraction = match.groups()
    micros = _seconds_of_day(hours, minutes, seconds, end_of_day=True) * 1_000_000 + (
        _fraction_micros(fraction)
    )
    if micros > 86_400_000_000:
        raise ValueError("time of day out of range")
    return micros


def parse_timetz(text: str) -> tuple[int, int]:
    """Parses a ``timetz`` (``12:34:56+02``, ``01:00:00.25-05:30``).

    Returns:
        ``(microseconds past midnight in the value's own zone, UTC offset in seconds)``.
    """
    match = _TIMETZ_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("malformed timetz")
    hours, minutes, seconds, fraction, sign, off_h, off_m, off_s = match.groups()
    micros = _seconds_of_day(hours, minutes, seconds, end_of_day=True) * 1_000_000 + (
        _fraction_micros(fraction)
    )
    if micros > 86_400_000_000:
        raise ValueError("time of day out of range")
    return micros, _offset_seconds(sign, off_h, off_m, off_s)


def parse_timestamp(text: str) -> int:
    """Parses a ``timestamp`` (``2024-03-01 12:34:56.789``) into microseconds since the epoch.

    The wall-clock time is read as if it were UTC, as Debezium does.
    """
    match = _TIMESTAMP_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("malformed timestamp")
    year, month, day, hours, minutes, seconds, fraction, bc = match.groups()
    days = epoch_day(_year(year, bc), int(month), int(day))
    seconds_of_day = _seconds_of_day(hours, minutes, seconds)
    return (days * 86400 + seconds_of_day) * 1_000_000 + _fraction_micros(fraction)


def parse_timestamptz(text: str) -> int:
    """Parses a ``timestamptz`` (``2024-03-01 12:34:56.789+00``) into microseconds since the epoch."""
    match = _TIMESTAMPTZ_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("malformed timestamptz")
    year, month, day, hours, minutes, seconds, fraction, sign, off_h, off_m, off_s, bc = (
        match.groups()
    )
    days = epoch_day(_year(year, bc), int(month), int(day))
    seconds_of_day = _seconds_of_day(hours, minutes, seconds)
    utc_seconds = days * 86400 + seconds_of_day - _offset_seconds(sign, off_h, off_m, off_s)
    return utc_seconds * 1_000_000 + _fraction_micros(fraction)


def parse_interval(text: str) -> tuple[int, int, int, int, int, int, int]:
    """Parses an ``interval`` in IntervalStyle ``postgres`` (``1 year 2 mons -3 days 04:05:06.5``).

    Fields are read the way pgjdbc's PGInterval reads them (Debezium's source of the value): each
    unit keeps its own sign, and a sign on the time part applies to hours, minutes and seconds.

    Returns:
        ``(years, months, days, hours, minutes, whole seconds, microseconds)``.
    """
    if not text or text[-1] == " ":
        raise ValueError("malformed interval")
    match = _INTERVAL_TEXT.fullmatch(text)
    if match is not None:
        y, mo, d, sign_text, h, m, s, fraction = match.groups()
        sign = -1 if sign_text == "-" else 1
        return (
            int(y or 0),
            int(mo or 0),
            int(d or 0),
            sign * int(h or 0),
            sign * int(m or 0),
            sign * int(s or 0),
            sign * _fraction_micros(fraction),
        )
    years = months = days = hours = minutes = seconds = micros = 0
    tokens = text.split()
    i, count = 0, len(tokens)
    while i < count:
        token = tokens[i]
        if ":" in token:
            match = _INTERVAL_TIME.fullmatch(token)
            if match is None:
                raise ValueError("malformed interval time")
            sign_text, h, m, s, fraction = match.groups()
            sign = -1 if sign_text == "-" else 1
            hours, minutes, seconds = sign * int(h), sign * int(m), sign * int(s)
            micros = sign * _fraction_micros(fraction)
            i += 1
            continue
        if i + 1 >= count:
            raise ValueError("interval amount without a unit")
        amount, unit = int(token), tokens[i + 1]
        if unit in ("year", "years"):
            years = amount
        elif unit in ("mon", "mons"):
            months = amount
        elif unit in ("day", "days"):
            days = amount
        else:
            raise ValueError(f"unexpected interval unit {unit!r}")
        i += 2
    return years, months, days, hours, minutes, seconds, micros
