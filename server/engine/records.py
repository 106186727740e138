"""Source records: what the engine knows about one row of one source table.

A profile is a pure function of the source records linked to it. Records are immutable snapshots
of a row's latest image, already mapped onto profile field paths, with their identifiers
normalised, so that identity resolution and survivorship never look at source schemas.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, order=True)
class RecordKey:
    """Which source record: the source's logical name, its table and its primary key.

    Attributes:
        source: The source's logical name (``crm``), as in provenance.
        table: ``schema.table``.
        key: The primary-key columns as canonical JSON (sorted keys, compact), so that equal keys
            compare and hash equal whatever order the event listed them in.
    """

    source: str
    table: str
    key: str

    @classmethod
    def of(cls, source: str, table: str, key: Mapping[str, Any]) -> RecordKey:
        """Build a key from a primary-key mapping."""
        return cls(source, table, canonical_json(key))

    def __str__(self) -> str:
        return f"{self.source}/{self.table}/{self.key}"


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """A normalised identifier value of a declared type (``email``, ``crm_id``, …)."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """The latest image of one source row, mapped onto profile field paths.

    Attributes:
        key: Which row.
        fields: Profile field path (``person.given_name``) → value (JSON-compatible).
        identifiers: The row's normalised identifiers (blocked values already removed).
        version: The row's own version (its version column, µs since 1970 for timestamps), or
            ``None`` when the table has none or it is NULL; last-writer-wins compares these.
        commit_time_us: When the change committed in its source (µs since 1970).
        position: The change's position in its source (LSN). Orders versions of the *same* record
            only: positions of different databases are never compared.
        deleted: The row was deleted or soft-deleted: it keeps no fields and links nothing.
    """

    key: RecordKey
    fields: Mapping[str, Any] = field(default_factory=dict)
    identifiers: frozenset[Identifier] = frozenset()
    version: int | None = None
    commit_time_us: int = 0
    position: int = 0
    deleted: bool = False


def key_order(key: RecordKey) -> tuple[str, str, str]:
    """A key as the plain tuple keys sort by, for ``sorted(..., key=key_order)``.

    Same order as comparing the keys themselves, but a large sort then compares tuples of strings
    in C instead of running the dataclass's generated ``__eq__`` and ``__lt__`` per comparison.
    """
    return (key.source, key.table, key.key)


# json.dumps with options builds a new encoder per call; every event's key goes through here.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text."""
    return _CANONICAL.encode(value)
