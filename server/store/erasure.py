"""Right to erasure: removing one person from the profile store, change log included.

:func:`forget_profile` runs like an applying batch: it locks the change-log head first (the same
lock order as the engine, so the two never deadlock) and appends its DELETED change with the next
sequence, in the same transaction as the erasure. What it does:

- each record linked to the profile becomes a tombstone (deleted, no fields, no identifiers) that
  keeps its source position, so a replay of events already applied cannot bring the person back;
  a *newer* change in the source can, because the source still holds the person (erasure there
  is the source system's job);
- the steward overrides naming those records and the identity conflicts naming the profile's
  identifier values are deleted;
- the profile and its aliases are deleted: both kinds of id become unknown (NOT_FOUND);
- its change-log rows, and its aliases', keep sequence, kind, field paths and related ids; every
  old and new value is nulled, and record keys and reasons are dropped from their causes;
- the profiles it split from held its records before the split, so their history holds its
  values too: their rows caused by its records, and their rows written in the transaction that
  split it off (which carry its values as ``old`` without naming its records), are scrubbed the
  same way; in their other rows, any text value equal to one this profile held is nulled.
- a DELETED change is appended (``related = {"forgotten": true}``).

Its record keys (source primary keys) stay, as tombstones: without them a replay would recreate
the person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, delete, or_, select, tuple_, update
from sqlalchemy.exc import DBAPIError

from ..engine.records import RecordKey, SourceRecord, canonical_json
from . import schema as t
from .profile_reads import (
    live_records,
    resolve_profile,
    set_statement_timeout,
    store_error,
)
from .rows import ChangeRow, LoggedChange, StoredProfile, change_entry, key_text
from .store_batch import StoreBatch

_MAX_SPLIT_DEPTH = 20
_DROPPED_CAUSE_KEYS = ("key", "reason")


def forget_profile(
    engine: Engine, profile_id: str, actor: str, reason: str, timeout_s: float | None = None
) -> LoggedChange:
    """Erase a profile (see the module docstring); return the DELETED change.

    Raises:
        ProfileNotFound: No profile has this id or alias.
        StoreError: The store failed; nothing was erased.
    """
    try:
        with engine.begin() as c:
            set_statement_timeout(c, timeout_s)
            # Locks the head before anything else, as the engine does.
            with StoreBatch(c) as batch:
                profile = resolve_profile(c, profile_id).profile
                target = profile.profile_id
                aliases = list(
                    c.execute(
                        select(t.profile_aliases.c.alias_id).where(
                            t.profile_aliases.c.profile_id == target
                        )
                    ).scalars()
                )
                records = live_records(c, t.source_records.c.profile_id == target)
                scrub_history(c, [target, *aliases], records, profile)
                erase_records(c, records, profile.identifiers)
                c.execute(delete(t.profiles).where(t.profiles.c.profile_id == target))
                c.execute(delete(t.profile_aliases).where(t.profile_aliases.c.profile_id == target))
                cause = [{"steward": actor, "operation": "forget", "reason": reason}]
                head = batch.append_changes(
                    [ChangeRow(target, "DELETED", {}, {"forgotten": True}, cause)]
                )
                row = c.execute(select(t.change_log).where(t.change_log.c.sequence == head)).one()
                return change_entry(row)
    except DBAPIError as exc:
        raise store_error(exc) from exc


def scrub_history(
    c: Connection, ids: list[str], records: list[SourceRecord], profile: StoredProfile
) -> None:
    """Null the profile's values in the change log (its rows, and its parents' where they hold them)."""
    log = t.change_log.c
    own = list(c.execute(select(t.change_log).where(log.profile_id.in_(ids))).all())
    keys = {r.key for r in records}
    texts = _texts(v for row in own for change in row.changes.values() for v in change.values())
    texts |= _texts(profile.values.values())
    texts |= {value for _, value in profile.identifiers}
    for row in own:
        _write(c, row, _scrubbed(row.changes), _scrubbed_causes(row.cause))
    for parent in _parent_rows(c, own, set(ids)):
        if _caused_by(parent.cause, keys) or parent.split_transaction:
            _write(c, parent, _scrubbed(parent.changes), _scrubbed_causes(parent.cause))
            continue
        changes = {
            path: {side: None if _is_text_of(value, texts) else value
                   for side, value in change.items()}
            for path, change in parent.changes.items()
        }
        if changes != parent.changes:
            _write(c, parent, changes, parent.cause)


class _ParentRow:
    """A change-log row of a profile this one split from."""

    def __init__(self, row: Any, split_transaction: bool) -> None:
        self.sequence: int = row.sequence
        self.changes: dict[str, Any] = row.changes
        self.cause: list[dict[str, Any]] = row.cause
        self.split_transaction = split_transaction


def _parent_rows(c: Connection, own: list[Any], ids: set[str]) -> list[_ParentRow]:
    log = t.change_log.c
    out: list[_ParentRow] = []
    seen: set[str] = set(ids)
    frontier = {r.related.get("split_from") for r in own} - {None}
    children = set(ids)
    for _ in range(_MAX_SPLIT_DEPTH):  # split chains are short; bounded against cycles
        frontier -= seen
        if not frontier:
            break
        seen |= frontier
        rows = c.execute(
            select(t.change_log).where(log.profile_id.in_(frontier)).order_by(log.sequence)
        ).all()
        # The SPLIT into a child and the parent's UPDATED losing the child's values are written
        # in one transaction, and now() (committed_at) is the transaction's start time.
        split_at = {
            (r.profile_id, r.committed_at)
            for r in rows
            if r.kind == "SPLIT" and r.related.get("split_into") in children
        }
        out += [_ParentRow(r, (r.profile_id, r.committed_at) in split_at) for r in rows]
        children = set(frontier)
        frontier = {r.related.get("split_from") for r in rows} - {None}
    return out


def _write(c: Connection, row: Any, changes: dict[str, Any], cause: list[dict[str, Any]]) -> None:
    c.execute(
        update(t.change_log)
        .where(t.change_log.c.sequence == row.sequence)
        .values(changes=changes, cause=cause)
    )


def _scrubbed(changes: dict[str, Any]) -> dict[str, Any]:
    return {path: {"old": None, "new": None} for path in changes}


def _scrubbed_causes(causes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k not in _DROPPED_CAUSE_KEYS} for c in causes]


def _texts(values: Iterable[Any]) -> set[str]:
    out: set[str] = set()
    for value in values:
        if isinstance(value, str) and value:
            out.add(value)
        elif isinstance(value, list):
            out |= {v for v in value if isinstance(v, str) and v}
    return out


def _is_text_of(value: Any, texts: set[str]) -> bool:
    if isinstance(value, str):
        return value in texts
    return isinstance(value, list) and any(isinstance(v, str) and v in texts for v in value)


def _caused_by(causes: list[dict[str, Any]], records: set[RecordKey]) -> bool:
    for cause in causes:
        key, source, table = cause.get("key"), cause.get("source"), cause.get("table")
        if key is None or not source or not table:
            continue
        text = key if isinstance(key, str) else canonical_json(key)
        if RecordKey(str(source), str(table), text) in records:
            return True
    return False


def erase_records(
    c: Connection, records: list[SourceRecord], identifiers: list[list[str]]
) -> None:
    """Tombstone the records; delete their identifier rows, overrides and conflicts."""
    if records:
        sr, ri = t.source_records.c, t.record_identifiers.c
        keys = [(r.key.source, r.key.table, r.key.key) for r in records]
        c.execute(
            update(t.source_records)
            .where(tuple_(sr.source, sr.table_name, sr.record_key).in_(keys))
            .values(profile_id=None, fields={}, identifiers=[], deleted=True)
        )
        c.execute(
            delete(t.record_identifiers).where(
                tuple_(ri.source, ri.table_name, ri.record_key).in_(keys)
            )
        )
        texts = [key_text(r.key) for r in records]
        lo = t.link_overrides.c
        c.execute(
            delete(t.link_overrides).where(or_(lo.record_a.in_(texts), lo.record_b.in_(texts)))
        )
    if identifiers:
        ic = t.identity_conflicts.c
        c.execute(
            delete(t.identity_conflicts).where(
                tuple_(ic.identifier_type, ic.identifier_value).in_(
                    [(typ, value) for typ, value in identifiers]
                )
            )
        )


__all__ = ["erase_records", "forget_profile", "scrub_history"]
