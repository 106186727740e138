"""Request field checks shared by the handlers; each failure names the field it is about."""

from __future__ import annotations

from collections.abc import Mapping

from ..engine.identity import IdentifierType, normalize_identifier
from ..engine.records import Identifier
from .errors import InvalidArgument

MAX_ID_LENGTH = 200
MAX_VALUE_LENGTH = 1000
MAX_REASON_LENGTH = 1000


def validate_profile_id(value: str, field: str) -> str:
    """A profile id as given (ids are opaque: only their shape is checked).

    Raises:
        InvalidArgument: Empty, too long, or with spaces or control characters.
    """
    if not value:
        raise InvalidArgument(field, "is required")
    # isprintable() refuses every whitespace character but the space itself (checked over all
    # code points), so one substring test finds the rest: a per-character loop cost ~3 µs a call.
    if len(value) > MAX_ID_LENGTH or not value.isprintable() or " " in value:
        raise InvalidArgument(
            field, f"must be a profile id: at most {MAX_ID_LENGTH} printable characters, no spaces"
        )
    return value


def validate_reason(value: str, field: str = "reason") -> str:
    """A steward's reason, required because it is audited.

    Raises:
        InvalidArgument: Empty (or only spaces) or longer than the limit.
    """
    if not value.strip():
        raise InvalidArgument(field, "is required: say why (it is audited)")
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidArgument(field, f"at most {MAX_REASON_LENGTH} characters")
    return value


def parse_identifier(
    types: Mapping[str, IdentifierType],
    type_name: str,
    value: str,
    type_field: str,
    value_field: str,
) -> Identifier | None:
    """An identifier normalised exactly as ingest normalises it (``None``: it names nobody).

    Raises:
        InvalidArgument: The type is missing or undeclared, or the value is missing or too long.
    """
    if not type_name:
        raise InvalidArgument(type_field, "is required")
    declared = types.get(type_name)
    if declared is None:
        raise InvalidArgument(
            type_field,
            f"unknown identifier type {type_name[:100]!r}; declared types: {', '.join(sorted(types))}",
        )
    if not value:
        raise InvalidArgument(value_field, "is required")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidArgument(value_field, f"at most {MAX_VALUE_LENGTH} characters")
    normalized = normalize_identifier(declared, value)
    return None if normalized is None else Identifier(type_name, normalized)


__all__ = ["parse_identifier", "validate_profile_id", "validate_reason"]
