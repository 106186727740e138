"""Value transforms: the small, named steps a mapping applies between a column and a profile field.

A mapping names transforms in its config (``transform = "e164"`` or a chain
``transform = ["trim", "lower"]``) with options beside them (``region = "GB"``, ``by = 100``), or
per step as inline tables (``transform = [{ name = "concat", sep = "" }, "e164"]``). They are
compiled once per table into a :class:`Chain`; at run time a chain is a few function calls.

Rules every transform follows, so chains compose:

* SQL NULL (``None``) passes through untouched, except through transforms that combine several
  columns (``concat``, ``full_name``), which skip empty parts.
* Scalar transforms applied to a list (several columns, a ``text[]`` column, or the output of
  ``each``) apply to each element.
* A value a transform cannot handle raises :class:`TransformError` naming the transform and the value;
  the mapping turns it into a ``MappingError`` with the source, table and column.

The transforms (options in parentheses):

=============  ===================================================================================
``trim``       strip surrounding whitespace
``lower``      lower case (``upper``: upper case)
``e164``       phone number → ``+447700900123`` (``region``: country for national numbers, such as
               ``GB``; ``strict``: require a number in service, not just a plausible one)
``divide``     number ÷ ``by``: cents → units (``by = 100``), micros (``by = 1000000``); (``scale``)
``map``        value → ``values[value]``, else ``default`` (without one, an unknown value fails)
``null_if``    ``values`` (``["", "n/a"]``, any case) → NULL
``json_path``  pick ``path`` (``$.address.city``, ``$.tags[0]``) out of a json/jsonb column
``each``       a json/jsonb array (or an SQL array) → its elements (``path`` picks from each)
``concat``     several columns → one text, empty parts skipped (``sep``, default ``""``)
``full_name``  several name columns → ``"First Middle Last"``, empty parts and extra spaces dropped
``date``       Debezium date (days since 1970), ISO text or instant → date
``timestamp``  Debezium instant (integer in ``unit``: ``us`` default, ``ms``, ``ns``, ``s``;
               or ISO text, ZonedTimestamp) → instant
``decimal``    Debezium decimal → exact decimal (``scale``: the column's scale, needed for base64
               values when events carry no schema)
``bool``       ``t``/``f``, ``Y``/``N``, ``1``/``0``, ``true``/``false``, ``yes``/``no`` → boolean
=============  ===================================================================================

The chain's result then goes to the target field's writer
(:func:`~unified_profile.server.engine.profile_paths.field_writer`), which puts it in the form the
profile holds, decoding what the field's kind implies (a ``timestamp`` field reads Debezium
instants itself; ``unit`` and ``scale`` beside ``column`` tell it about schemaless integers and
base64 decimals).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import phonenumbers

from .debezium_values import to_date, to_datetime, to_decimal
from .profile_paths import (
    ValueKind,
    as_text,
    option_scale,
    option_unit,
    to_bool,
    writer_options,
)

__all__ = [
    "COMBINING_TRANSFORMS",
    "TRANSFORM_NAMES",
    "Chain",
    "TransformError",
    "compile_chain",
    "known_options",
    "parse_json_path",
    "shown_value",
]

_MAX_SHOWN = 80


class TransformError(ValueError):
    """A transform rejected a value.

    Attributes:
        reason: Why, in words (``not a phone number``).
        transform: The transform's name, once known.
        value: The value it rejected.
    """

    def __init__(self, reason: str, transform: str | None = None, value: object = None) -> None:
        self.reason = reason
        self.transform = transform
        self.value = value
        where = f"{transform}: " if transform else ""
        super().__init__(f"{where}{reason} (value {shown_value(value)})")


def shown_value(value: object) -> str:
    """``repr`` of a value, cut to a length fit for an error message."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# --- the steps --------------------------------------------------------------------------------


def _trim(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _e164(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    region = options.get("region")
    if region is not None and (
        not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS
    ):
        raise ValueError(
            f"region must be an ISO 3166 country code such as GB or US (got {region!r})"
        )
    default_region = region.upper() if isinstance(region, str) else None
    strict = _option_bool(options, "strict", False)

    # Parsing costs ~40 µs a number while a row's phone rarely changes between its events: keep
    # the last few thousand results of this step (bounded, pure, owned by this compiled step).
    @functools.lru_cache(maxsize=4096)
    def format_e164(text: str) -> str:
        try:
            number = phonenumbers.parse(text, default_region)
        except phonenumbers.NumberParseException as exc:
            hint = "" if default_region else "; set region for numbers without a country code"
            raise TransformError(f"not a phone number ({exc._msg}{hint})") from None
        possible = (
            phonenumbers.is_valid_number(number)
            if strict
            else phonenumbers.is_possible_number(number)
        )
        if not possible:
            raise TransformError("not a valid phone number for its country")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def e164(value: Any) -> Any:
        text = as_text(value)
        return format_e164(text) if text is not None and text.strip() else None

    return e164


def _divide(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    by = options.get("by")
    if isinstance(by, bool) or not isinstance(by, int | float) or by == 0:
        raise ValueError(f"`by` must be a non-zero number (got {by!r})")
    divisor = Decimal(repr(by)) if isinstance(by, float) else Decimal(by)
    scale = option_scale(options)

    def divide(value: Any) -> Any:
        number = to_decimal(value, scale)
        return None if number is None else number / divisor

    return divide


def _map(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    values = options.get("values")
    if not isinstance(values, Mapping) or not values:
        raise ValueError("map needs `values`, a table of source value → profile value")
    table = {str(k): v for k, v in values.items()}
    has_default = "default" in options
    default = options.get("default")

    def map_value(value: Any) -> Any:
        key = "true" if value is True else "false" if value is False else as_text(value)
        if key in table:
            return table[key]
        if has_default:
            return default
        raise TransformError(
            f"no mapping for this value (known: {', '.join(sorted(table))}; or set `default`)",
            value=value,
        )

    return map_value


def _null_if(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    values = options.get("values")
    if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
        raise ValueError('null_if needs `values`, a list such as ["", "n/a", "unknown"]')
    # Placeholders are typed in any case ("N/A", "Unknown"): compare without case or padding.
    nulls = frozenset(str(v).strip().casefold() for v in values)

    def null_if(value: Any) -> Any:
        text = value if isinstance(value, str) else as_text(value)
        return None if text is not None and text.strip().casefold() in nulls else value

    return null_if


_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """``$.a.b[0]`` (or ``$['a key'][0]``) → ``("a", "b", 0)``.

    Raises:
        ValueError: Not such a path.
    """
    if not path.startswith("$"):
        raise ValueError(f"a JSON path starts with $, such as $.address.city (got {path!r})")
    parts: list[str | int] = []
    i = 1
    while i < len(path):
        match = _PATH_PART.match(path, i)
        if match is None:
            raise ValueError(f"cannot read JSON path {path!r} at position {i + 1}")
        name, index, quoted1, quoted2 = match.groups()
        parts.append(
            int(index)
            if index is not None
            else next(p for p in (name, quoted1, quoted2) if p is not None)
        )
        i = match.end()
    return tuple(parts)


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise TransformError("not JSON", value=value) from None
    return value


def _walk(document: Any, parts: tuple[str | int, ...]) -> Any:
    for part in parts:
        if isinstance(part, int):
            if not isinstance(document, list) or not -len(document) <= part < len(document):
                return None
        elif not isinstance(document, dict):
            return None
        document = document[part] if isinstance(part, int) else document.get(part)
    return document


def _json_path(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    path = options.get("path")
    if not isinstance(path, str):
        raise ValueError("json_path needs `path`, such as $.address.city")
    parts = parse_json_path(path)
    return lambda value: _walk(_parse_json(value), parts)


def _each(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    path = options.get("path")
    parts = parse_json_path(path) if isinstance(path, str) else None
    if path is not None and parts is None:
        raise ValueError("each: `path` must be a JSON path such as $.email")

    def each(value: Any) -> Any:
        items = _parse_json(value)
        if items is None:
            return None
        if not isinstance(items, list):
            raise TransformError("not a JSON array", value=value)
        return items if parts is None else [_walk(item, parts) for item in items]

    return each


def _concat(options: Mapping[str, Any], default_sep: str = "") -> Callable[[Any], Any]:
    sep = options.get("sep", default_sep)
    if not isinstance(sep, str):
        raise ValueError(f"sep must be a string (got {sep!r})")

    def concat(value: Any) -> Any:
        parts = value if isinstance(value, list) else [value]
        texts = [stripped for t in map(as_text, parts) if t and (stripped := t.strip())]
        return sep.join(texts) or None

    return concat


def _full_name(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    concat = _concat(options, " ")
    # Names typed into CRMs carry doubled and stray spaces; a full name has single spaces.
    return lambda value: None if (name := concat(value)) is None else " ".join(name.split())


def _date(value: Any) -> Any:
    return to_date(value)


def _timestamp(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    unit = option_unit(options)
    return lambda value: to_datetime(value, unit)


def _decimal(options: Mapping[str, Any]) -> Callable[[Any], Any]:
    scale = option_scale(options)
    return lambda value: to_decimal(value, scale)


def _option_bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false (got {value!r})")
    return value


@dataclass(frozen=True, slots=True)
class _Definition:
    build: Callable[[Mapping[str, Any]], Callable[[Any], Any]]
    options: frozenset[str]
    elementwise: bool  # scalar: applied to each element of a list
    combines: bool = False  # sees NULLs (skips empty parts) instead of passing them through


def _fixed(function: Callable[[Any], Any]) -> Callable[[Mapping[str, Any]], Callable[[Any], Any]]:
    return lambda _options: function


_TRANSFORMS: dict[str, _Definition] = {
    "trim": _Definition(_fixed(_trim), frozenset(), True),
    "lower": _Definition(_fixed(_lower), frozenset(), True),
    "upper": _Definition(_fixed(_upper), frozenset(), True),
    "e164": _Definition(_e164, frozenset({"region", "strict"}), True),
    "divide": _Definition(_divide, frozenset({"by", "scale"}), True),
    "map": _Definition(_map, frozenset({"values", "default"}), True),
    "null_if": _Definition(_null_if, frozenset({"values"}), True),
    "json_path": _Definition(_json_path, frozenset({"path"}), False),
    "each": _Definition(_each, frozenset({"path"}), False),
    "concat": _Definition(_concat, frozenset({"sep"}), False, combines=True),
    "full_name": _Definition(_full_name, frozenset({"sep"}), False, combines=True),
    "date": _Definition(_fixed(_date), frozenset(), True),
    "timestamp": _Definition(_timestamp, frozenset({"unit"}), True),
    "decimal": _Definition(_decimal, frozenset({"scale"}), True),
    "bool": _Definition(_fixed(to_bool), frozenset(), True),
}

TRANSFORM_NAMES = frozenset(_TRANSFORMS)
"""The names a config may use in ``transform``."""

COMBINING_TRANSFORMS = frozenset(n for n, d in _TRANSFORMS.items() if d.combines)
"""Transforms that turn several columns into one value."""


# --- chains -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    apply: Callable[[Any], Any]
    elementwise: bool
    combines: bool


class Chain:
    """A compiled sequence of transforms; call it with a column value (or a list of them)."""

    __slots__ = ("_steps", "names")

    def __init__(self, steps: Sequence[_Step]) -> None:
        self._steps = tuple(steps)
        self.names: tuple[str, ...] = tuple(s.name for s in steps)
        """The transforms' names, in order."""

    def __bool__(self) -> bool:
        return bool(self._steps)

    def __call__(self, value: Any) -> Any:
        """Run the chain.

        Raises:
            TransformError: A step rejected the value; names the step and the value it was given.
        """
        for step in self._steps:
            if value is None and not step.combines:
                return None
            if step.elementwise and isinstance(value, list):
                value = [None if v is None else _run(step, v) for v in value]
                continue
            # _run inlined: this runs for most mapped columns of every event.
            try:
                value = step.apply(value)
            except TransformError as exc:
                raise TransformError(exc.reason, step.name, value) from None
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise TransformError(str(exc), step.name, value) from None
        return value


def _run(step: _Step, value: Any) -> Any:
    try:
        return step.apply(value)
    except TransformError as exc:
        raise TransformError(exc.reason, step.name, value) from None
    except (ValueError, TypeError, ArithmeticError) as exc:
        # Library and conversion errors (phonenumbers, decimal, dates) carry their own wording.
        raise TransformError(str(exc), step.name, value) from None


def compile_chain(
    transform: str | Sequence[str | Mapping[str, Any]] | None, options: Mapping[str, Any]
) -> tuple[Chain, frozenset[str]]:
    """Compile a ``transform`` config value.

    Args:
        transform: A name, or a list of names and inline tables (``{ name = "divide", by = 100 }``),
            or ``None`` for no transform.
        options: The options written beside ``transform``, shared by the named steps.

    Returns:
        The chain, and which of ``options`` its steps read (the caller reports the others as
        unknown).

    Raises:
        ValueError: An unknown transform or a bad option; the message names it.
    """
    entries: Sequence[str | Mapping[str, Any]]
    if transform is None:
        entries = ()
    elif isinstance(transform, str):
        entries = (transform,)
    else:
        entries = transform
    steps: list[_Step] = []
    used: set[str] = set()
    for entry in entries:
        if isinstance(entry, str):
            name, step_options = entry, options
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            name = entry["name"]
            step_options = {k: v for k, v in entry.items() if k != "name"}
        else:
            raise ValueError(
                f"a transform is a name or an inline table with `name` (got {entry!r})"
            )
        definition = _TRANSFORMS.get(name)
        if definition is None:
            raise ValueError(f"unknown transform {name!r}{_did_you_mean(name, TRANSFORM_NAMES)}")
        if step_options is not options:
            extra = sorted(set(step_options) - definition.options)
            if extra:
                raise ValueError(
                    f"transform {name!r} has no option {extra[0]!r}"
                    f"{_did_you_mean(extra[0], definition.options)}"
                )
        else:
            used |= definition.options & set(options)
        try:
            apply = definition.build(step_options)
        except ValueError as exc:
            raise ValueError(f"transform {name!r}: {exc}") from None
        steps.append(_Step(name, apply, definition.elementwise, definition.combines))
    return Chain(steps), frozenset(used)


def known_options(kind: ValueKind | None) -> frozenset[str]:
    """Every option name a spec may carry for a field of ``kind`` (for "did you mean")."""
    names: set[str] = set(writer_options(kind)) if kind is not None else set()
    for definition in _TRANSFORMS.values():
        names |= definition.options
    return frozenset(names)


def _did_you_mean(name: str, known: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
