"""Unit tests for the pure profile engine (server/engine): no database, no clock.

Shared builders live here because the engine's tests all start from the same kind of input: a few
:class:`SourceRecord` images of CRM and loyalty rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord

TABLES = {"crm": "public.customers", "loyalty": "public.members", "pos": "sales.receipts"}


def key(source: str, pk: int) -> RecordKey:
    """The key of row ``pk`` of the source's one table."""
    return RecordKey.of(source, TABLES[source], {"id": pk})


def record(
    source: str,
    pk: int,
    *,
    ids: Mapping[str, str | list[str]] | None = None,
    fields: Mapping[str, Any] | None = None,
    version: int | None = None,
    commit: int = 0,
    position: int = 0,
    deleted: bool = False,
) -> SourceRecord:
    """A source record image; ``ids`` maps identifier type → value (or values)."""
    identifiers = frozenset(
        Identifier(type_, value)
        for type_, values in (ids or {}).items()
        for value in ([values] if isinstance(values, str) else values)
    )
    return SourceRecord(
        key=key(source, pk),
        fields=dict(fields or {}),
        identifiers=identifiers,
        version=version,
        commit_time_us=commit,
        position=position,
        deleted=deleted,
    )
