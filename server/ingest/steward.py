"""Steward decisions: force two records into one profile, or keep them apart, for good.

An override is stored in the same transaction as the recomputation it causes, and every later
recomputation reads it again, so a new change to either record cannot undo it.
"""

from __future__ import annotations

from typing import Literal

from ..engine.records import RecordKey
from ..store.profile_store import ChangeRow, ProfileStore
from .applier import IncomingRecord, ProfileApplier


class UnknownRecord(LookupError):
    """A steward named a record the store does not have (or that is deleted)."""


def set_link_override(
    store: ProfileStore,
    applier: ProfileApplier,
    kind: Literal["force", "never"],
    a: RecordKey,
    b: RecordKey,
    actor: str,
    reason: str,
) -> list[ChangeRow]:
    """Force-link (``force``) or never-link (``never``) two records; return the profile changes.

    Raises:
        UnknownRecord: Either record is unknown or deleted.
        ValueError: ``a`` and ``b`` are the same record.
    """
    if a == b:
        raise ValueError(f"cannot link record {a} to itself")
    with store.batch() as batch:
        stored = batch.load_records([a, b])
        for key in (a, b):
            if key not in stored or stored[key].record.deleted:
                raise UnknownRecord(f"no live source record {key}")
        batch.save_override(kind, a, b, actor, reason)
        cause = {"steward": actor, "override": kind, "reason": reason}
        return applier.apply(
            batch, [IncomingRecord(stored[k].record, cause, force=True) for k in (a, b)]
        )


def clear_link_override(
    store: ProfileStore, applier: ProfileApplier, a: RecordKey, b: RecordKey, actor: str
) -> list[ChangeRow]:
    """Remove the override between two records and recompute; return the profile changes."""
    with store.batch() as batch:
        stored = batch.load_records([a, b])
        if not batch.delete_override(a, b):
            return []
        cause = {"steward": actor, "override": "cleared"}
        return applier.apply(
            batch,
            [IncomingRecord(stored[k].record, cause, force=True) for k in (a, b) if k in stored],
        )
