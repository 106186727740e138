"""The store's row shapes, as the applier, the change feed and the gRPC service see them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection

from ..engine.records import Identifier, RecordKey, SourceRecord
from . import batch_sql as sql
from . import profile_document


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record image as stored, with the profile it currently belongs to."""

    record: SourceRecord
    profile_id: str | None


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A profile row: its field document (see :mod:`.profile_document`) and identifiers."""

    profile_id: str
    document: dict[str, Any]
    identifiers: list[list[str]]
    record_count: int
    created_sequence: int
    updated_sequence: int

    @property
    def values(self) -> dict[str, Any]:
        """Field path → value."""
        values: dict[str, Any] = self.document.get("values", {})
        return values

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        """Field path → ``{"value", "provenance"}``, built from the document on every call."""
        return profile_document.expand(self.document)


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One change-log entry to append (its sequence is given by the batch)."""

    profile_id: str
    kind: str
    changes: dict[str, Any]
    related: dict[str, Any]
    cause: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LoggedChange:
    """One change-log entry as stored."""

    sequence: int
    profile_id: str
    kind: str
    changes: dict[str, Any]
    related: dict[str, Any]
    cause: list[dict[str, Any]]
    committed_at: datetime | None = None


def change_entry(row: Any) -> LoggedChange:
    """An ``up_change_log`` row as a :class:`LoggedChange`."""
    return LoggedChange(
        row.sequence, row.profile_id, row.kind, row.changes, row.related, row.cause,
        row.committed_at,
    )


def load_profiles(connection: Connection, profile_ids: list[str]) -> dict[str, StoredProfile]:
    """Profile rows by id (aliases are not followed)."""
    if not profile_ids:
        return {}
    rows = sql.run(connection, sql.LOAD_PROFILES, profile_ids)
    return {
        r.profile_id: StoredProfile(
            r.profile_id,
            r.fields,
            r.identifiers,
            r.record_count,
            r.created_sequence,
            r.updated_sequence,
        )
        for r in rows
    }


def record_key(row: Any) -> RecordKey:
    """The key of an ``up_source_records`` row."""
    return RecordKey(row.source, row.table_name, row.record_key)


def stored_record(row: Any) -> StoredRecord:
    """An ``up_source_records`` row as the engine sees it."""
    record = SourceRecord(
        key=record_key(row),
        fields=row.fields,
        identifiers=frozenset(Identifier(typ, value) for typ, value in row.identifiers),
        version=row.version,
        commit_time_us=row.commit_time_us,
        position=row.position,
        deleted=row.deleted,
    )
    return StoredRecord(record, row.profile_id)


# json.dumps with options builds a new encoder per call.
_KEY_TEXT = json.JSONEncoder(separators=(",", ":"))


def key_text(key: RecordKey) -> str:
    """A record key as steward overrides store it (a JSON array, ``ensure_ascii`` escaping).

    Every applying transaction looks up the overrides of every record it touches, so the common
    case is written by orjson, which escapes plain ASCII text exactly as the standard library
    does except DEL; other text takes the standard library's path, so stored keys still match.
    """
    parts = [key.source, key.table, key.key]
    try:
        text = orjson.dumps(parts).decode()
    except orjson.JSONEncodeError:  # a lone surrogate: the standard library escapes it
        return _KEY_TEXT.encode(parts)
    if text.isascii() and "\x7f" not in text:
        return text
    return _KEY_TEXT.encode(parts)


def parse_key_text(text: str) -> RecordKey:
    """The inverse of :func:`key_text`."""
    source, table, key = json.loads(text)
    return RecordKey(source, table, key)
