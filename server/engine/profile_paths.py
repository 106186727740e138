"""The canonical profile's field paths, as data.

Every value a source contributes lands on one of these dotted paths (``person.given_name``,
``loyalty.tier``, …) or under the free-form ``traits.`` prefix. Identifiers are not field paths:
they are declared separately (``identifiers = {…}`` in a table's mapping) because they decide *who*
a record belongs to, not *what* the profile says.

Each path has a :class:`ValueKind`. :func:`field_writer` turns a decoded column value into that
kind's JSON representation in the profile (ISO-8601 text for dates and instants, JSON numbers, …),
reading schemaless Debezium encodings on the way (see ``debezium_values``); config validation uses
the kinds to reject what cannot fit.
"""

from __future__ import annotations

import difflib
import enum
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import orjson

from .debezium_values import TimeUnit, to_date, to_datetime, to_decimal

__all__ = [
    "CONSENT_CHANNELS",
    "PROFILE_FIELDS",
    "TRAITS_PREFIX",
    "ValueKind",
    "as_text",
    "field_writer",
    "format_date",
    "format_timestamp",
    "is_valid_path",
    "kind_of",
    "path_problem",
    "suggest_path",
    "to_bool",
    "writer_options",
]


class ValueKind(enum.StrEnum):
    """What a profile field holds, and so how a source value is represented in the profile."""

    STRING = "string"
    """Text. Numbers are written as their decimal text; an empty string means no value."""
    DATE = "date"
    """A calendar date, ``YYYY-MM-DD``."""
    TIMESTAMP = "timestamp"
    """An instant in UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fraction digits)."""
    INTEGER = "integer"
    """A whole number (a JSON integer)."""
    NUMBER = "number"
    """A number: a JSON integer when whole, otherwise a JSON float."""
    BOOLEAN = "boolean"
    """``true`` or ``false``."""
    LIST = "list"
    """A list of strings (address lines), empty items removed."""
    ANY = "any"
    """Free-form (``traits.*``): any JSON value; dates and instants are written as above, decimals
    as numbers, an empty string as no value."""


CONSENT_CHANNELS = ("email_marketing", "sms_marketing", "push")
"""Consent channels. Each has ``granted`` and ``updated_at``; which source said so is provenance."""

TRAITS_PREFIX = "traits."
_IDENTIFIERS_PREFIX = "identifiers."
# A trait name: dotted segments of letters, digits, '_' and '-' (so it stays a plain JSON key path).
_TRAIT_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")

_FIELDS: dict[str, ValueKind] = {
    "person.given_name": ValueKind.STRING,
    "person.family_name": ValueKind.STRING,
    "person.full_name": ValueKind.STRING,
    "person.birth_date": ValueKind.DATE,
    "contact.email": ValueKind.STRING,
    "contact.phone": ValueKind.STRING,
    "contact.address.lines": ValueKind.LIST,
    "contact.address.city": ValueKind.STRING,
    "contact.address.region": ValueKind.STRING,
    "contact.address.postal_code": ValueKind.STRING,
    "contact.address.country": ValueKind.STRING,
    "crm.customer_id": ValueKind.STRING,
    "crm.owner": ValueKind.STRING,
    "crm.lifecycle_stage": ValueKind.STRING,
    "crm.last_interaction_at": ValueKind.TIMESTAMP,
    "loyalty.member_id": ValueKind.STRING,
    "loyalty.tier": ValueKind.STRING,
    "loyalty.points_balance": ValueKind.NUMBER,
    "loyalty.lifetime_points": ValueKind.NUMBER,
    "loyalty.enrolled_at": ValueKind.TIMESTAMP,
    "loyalty.last_activity_at": ValueKind.TIMESTAMP,
    "loyalty.status": ValueKind.STRING,
}
for _channel in CONSENT_CHANNELS:
    _FIELDS[f"consent.{_channel}.granted"] = ValueKind.BOOLEAN
    _FIELDS[f"consent.{_channel}.updated_at"] = ValueKind.TIMESTAMP
del _channel

PROFILE_FIELDS: Mapping[str, ValueKind] = MappingProxyType(_FIELDS)
"""Every fixed profile field path → its kind (``traits.*`` is open and not listed)."""

# Every proper prefix of a path ("contact", "contact.address", "consent.push"): a group, not a field.
_GROUPS: frozenset[str] = frozenset(
    path.rsplit(".", n)[0] for path in _FIELDS for n in range(1, path.count(".") + 1)
)


def is_valid_path(path: str) -> bool:
    """Whether ``path`` is a profile field a mapping may write (a fixed path or ``traits.<name>``)."""
    if path in _FIELDS:
        return True
    return (
        path.startswith(TRAITS_PREFIX)
        and _TRAIT_NAME.fullmatch(path[len(TRAITS_PREFIX) :]) is not None
    )


def kind_of(path: str) -> ValueKind:
    """The kind of value a profile field holds.

    Raises:
        ValueError: ``path`` is not a profile field; the message says why (see :func:`path_problem`).
    """
    kind = _FIELDS.get(path)
    if kind is not None:
        return kind
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return ValueKind.ANY


def suggest_path(path: str) -> str | None:
    """The known field path closest to a misspelt one (``loyalty.teir`` → ``loyalty.tier``)."""
    matches = difflib.get_close_matches(path, list(_FIELDS), n=1, cutoff=0.75)
    if matches:
        return matches[0]
    # A misspelt section with a correct leaf ("loyality.tier") is still worth pointing at.
    leaf = path.rsplit(".", 1)[-1]
    same_leaf = [p for p in _FIELDS if p.rsplit(".", 1)[-1] == leaf]
    close = difflib.get_close_matches(path, same_leaf, n=1, cutoff=0.5)
    return close[0] if close else None


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a writable profile field, or ``None`` when it is one.

    The message is meant for a config error and suggests the intended path where it can.
    """
    if is_valid_path(path):
        return None
    if path == "identifiers" or path.startswith(_IDENTIFIERS_PREFIX):
        return "identifiers are declared in the table's `identifiers`, not in `fields`"
    if path in _GROUPS:
        members = sorted(p for p in _FIELDS if p.startswith(path + "."))
        shown = ", ".join(members[:4]) + (", …" if len(members) > 4 else "")
        return f"{path} is a group of fields, map one of them ({shown})"
    if path == "traits" or path.startswith(TRAITS_PREFIX):
        return (
            "a trait is traits.<name>, the name made of letters, digits, '_' and '-' "
            "(dots separate nested names)"
        )
    suggestion = suggest_path(path)
    if suggestion is not None:
        return f"unknown profile field (did you mean {suggestion}?)"
    return "unknown profile field (see the canonical profile's fields, or use traits.<name>)"


# --- writing values as the profile holds them -------------------------------------------------

_TRUE = frozenset(("t", "true", "y", "yes", "1", "on"))
_FALSE = frozenset(("f", "false", "n", "no", "0", "off"))


def to_bool(value: object) -> bool | None:
    """``True``/``False`` from booleans, 1/0 and ``t``/``f``, ``Y``/``N``, ``true``, ``yes``, ``on``…

    Raises:
        ValueError: Anything else.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError("not a boolean (expected t/f, Y/N, 1/0, true/false, yes/no)")


def format_timestamp(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC: fixed width, so the text sorts like the instant."""
    v = value.astimezone(UTC) if value.tzinfo is not None else value
    # %-formatting: about twice as fast as the same f-string format specs (a field per event).
    parts = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % parts  # noqa: UP031


def format_date(value: date) -> str:
    """``YYYY-MM-DD``."""
    return "%04d-%02d-%02d" % (value.year, value.month, value.day)  # noqa: UP031 (speed)


def as_text(value: object) -> str | None:
    """A scalar as profile text: numbers in plain decimal, booleans ``true``/``false``, ISO dates.

    Raises:
        ValueError: Lists, objects and non-finite numbers have no text form.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("not a finite number")
        return format(value, "f")  # never exponent notation ("1E+2" is not how a CRM shows 100)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return repr(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return format_date(value)
    if isinstance(value, time):
        return value.isoformat()
    raise ValueError(
        f"a {type(value).__name__} is not text (combine columns with concat or full_name, "
        "or pick a part with json_path)"
    )


def _number(value: Decimal) -> int | float:
    if not value.is_finite():
        raise ValueError("not a finite number")
    integral = value.to_integral_value()
    # Whole numbers stay exact ints; others become the nearest double (JSON has no decimals).
    return int(integral) if integral == value else float(value)


def writer_options(kind: ValueKind) -> frozenset[str]:
    """Options a field of ``kind`` reads to decode schemaless values: ``unit`` or ``scale``."""
    if kind is ValueKind.TIMESTAMP:
        return frozenset({"unit"})
    if kind in (ValueKind.NUMBER, ValueKind.INTEGER):
        return frozenset({"scale"})
    return frozenset()


def field_writer(kind: ValueKind, options: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The function that turns a decoded (or schemaless Debezium) value into a field of ``kind``.

    ``options`` may hold ``unit`` (integer instants of a ``timestamp`` field, default ``us``) and
    ``scale`` (base64 decimals of a ``number``/``integer`` field, see ``debezium_values``).
    The returned function raises :class:`ValueError` for a value that does not fit.

    Raises:
        ValueError: A bad ``unit`` or ``scale``.
    """
    if kind is ValueKind.STRING:
        return lambda value: as_text(value) or None  # an empty string is no value
    if kind is ValueKind.DATE:
        return lambda value: None if (d := to_date(value)) is None else format_date(d)
    if kind is ValueKind.TIMESTAMP:
        unit = option_unit(options)
        return lambda value: (
            None if (t := to_datetime(value, unit)) is None else format_timestamp(t)
        )
    if kind is ValueKind.BOOLEAN:
        return to_bool
    if kind is ValueKind.LIST:
        return _as_list
    if kind is ValueKind.ANY:
        return _as_json
    scale = option_scale(options)
    if kind is ValueKind.INTEGER:
        return lambda value: _as_integer(to_decimal(value, scale))
    return lambda value: None if (n := to_decimal(value, scale)) is None else _number(n)


def option_scale(options: Mapping[str, Any]) -> int | None:
    """The ``scale`` option (a base64 decimal column's scale), checked.

    Raises:
        ValueError: Not an integer.
    """
    scale = options.get("scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int)):
        raise ValueError(f"scale must be an integer, the column's numeric scale (got {scale!r})")
    return scale


def option_unit(options: Mapping[str, Any]) -> TimeUnit:
    """The ``unit`` option (of integer instants), checked; ``us`` by default.

    Raises:
        ValueError: Not one of ``s``, ``ms``, ``us``, ``ns``.
    """
    unit = options.get("unit", "us")
    try:
        return TimeUnit(unit)
    except ValueError:
        raise ValueError(f"unit must be one of s, ms, us, ns (got {unit!r})") from None


def _as_integer(value: Decimal | None) -> int | None:
    if value is None:
        return None
    number = _number(value)
    if isinstance(number, float):
        raise ValueError("not a whole number")
    return number


def _as_list(value: Any) -> list[str] | None:
    if isinstance(value, str) and value.startswith("["):
        value = orjson.loads(value)  # a json/jsonb array of lines (JSONDecodeError is a ValueError)
    if value is None:
        return None
    texts = [as_text(item) for item in (value if isinstance(value, list) else [value])]
    return [t.strip() for t in texts if t and t.strip()]


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        return value or None  # as for text fields: an empty string is no value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, datetime | date | time):
        return as_text(value)
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1)
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}
    raise ValueError(f"a {type(value).__name__} is not a JSON value")
