"""What a reconciliation found: drift per table and per profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine.records import RecordKey, SourceRecord

DriftKind = Literal["missing", "stale", "orphaned"]


@dataclass(frozen=True, slots=True)
class RecordDrift:
    """One record that differs between its source and the store.

    Attributes:
        kind: ``missing``, ``stale`` or ``orphaned``.
        key: The record.
        differences: What differs (``fields``, ``identifiers``, ``version``, ``deleted``); empty
            for missing and orphaned records.
        expected: The image the source row maps to (``None`` when orphaned).
    """

    kind: DriftKind
    key: RecordKey
    differences: tuple[str, ...] = ()
    expected: SourceRecord | None = None


@dataclass
class TableReport:
    """One source table's comparison.

    Attributes:
        source: The source's name.
        table: ``schema.table``.
        source_rows: Rows read from the source.
        unmappable: Rows the mapping rejects, with the reason (ingest dead-letters them too).
        drift: The records that differ.
    """

    source: str
    table: str
    source_rows: int = 0
    unmappable: list[tuple[str, str]] = field(default_factory=list)
    drift: list[RecordDrift] = field(default_factory=list)

    def count(self, kind: DriftKind) -> int:
        """How many records drifted this way."""
        return sum(1 for d in self.drift if d.kind == kind)


@dataclass(frozen=True, slots=True)
class ProfileDrift:
    """A stored profile that differs from a recompute over its stored records.

    Attributes:
        profile_id: The profile.
        paths: Field paths whose value differs (``identifiers`` / ``record_count`` when those do).
    """

    profile_id: str
    paths: tuple[str, ...]


@dataclass
class Report:
    """The whole reconciliation."""

    tables: list[TableReport] = field(default_factory=list)
    profiles_checked: int = 0
    profile_drift: list[ProfileDrift] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        """Whether anything differs."""
        return bool(self.profile_drift) or any(t.drift for t in self.tables)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready document (every drifted key, not only a sample)."""
        return {
            "drifted": self.drifted,
            "tables": [
                {
                    "source": t.source,
                    "table": t.table,
                    "source_rows": t.source_rows,
                    "missing": t.count("missing"),
                    "stale": t.count("stale"),
                    "orphaned": t.count("orphaned"),
                    "unmappable": [{"key": k, "reason": r} for k, r in t.unmappable],
                    "drift": [
                        {"kind": d.kind, "key": d.key.key, "differences": list(d.differences)}
                        for d in t.drift
                    ],
                }
                for t in self.tables
            ],
            "profiles_checked": self.profiles_checked,
            "profile_drift": [
                {"profile_id": p.profile_id, "paths": list(p.paths)} for p in self.profile_drift
            ],
        }


def compare(expected: SourceRecord, stored: SourceRecord | None) -> RecordDrift | None:
    """How a stored image differs from the one its source row maps to (``None``: it does not)."""
    if stored is None or (stored.deleted and not expected.deleted):
        return None if expected.deleted else RecordDrift("missing", expected.key, (), expected)
    differences = tuple(
        name
        for name, same in (
            ("deleted", stored.deleted == expected.deleted),
            ("fields", expected.deleted or dict(stored.fields) == dict(expected.fields)),
            ("identifiers", expected.deleted or stored.identifiers == expected.identifiers),
            ("version", stored.version == expected.version),
        )
        if not same
    )
    return RecordDrift("stale", expected.key, differences, expected) if differences else None
