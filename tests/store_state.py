"""What a test reads back from a store to judge it: profiles by the records they hold, and the
change log's soundness (gap-free, no change logged twice for one source event).

Profile ids and the change log's batching may differ between two stores that hold the same
thing, so profiles are compared by the set of live records they hold and their field values.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg


def canonical(value: Any) -> str:
    """One JSON text per value, whatever the key order (for comparing stored documents)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def profiles_by_members(store_dsn: str) -> dict[frozenset[str], str]:
    """Each profile as (the set of live records it holds) → its field values (as JSON).

    Also checks that every live record is in a profile, every profile holds records, and each
    profile's ``record_count`` is right.
    """
    with psycopg.connect(store_dsn) as conn:
        # The profile document's values (server/store/profile_document.py).
        fields = dict(conn.execute("SELECT profile_id, fields FROM up_profiles").fetchall())
        counts = dict(conn.execute("SELECT profile_id, record_count FROM up_profiles").fetchall())
        members: dict[str, set[str]] = {}
        for source, table, key, profile in conn.execute(
            "SELECT source, table_name, record_key, profile_id FROM up_source_records "
            "WHERE NOT deleted"
        ):
            assert profile is not None, f"live record {source}/{table}/{key} is in no profile"
            members.setdefault(profile, set()).add(f"{source}/{table}/{key}")
    assert members.keys() == fields.keys(), "profiles without records, or records in no profile"
    assert all(counts[p] == len(m) for p, m in members.items()), "record_count is off"
    return {
        frozenset(members[p]): canonical(fields[p]["values"])
        for p in fields
    }


def assert_change_log_sound(store_dsn: str) -> int:
    """Sequences are exactly 1..head, and no change is logged twice for one source event;
    returns the head. (A repair's cause has no LSN: it is told apart by the rest.)"""
    with psycopg.connect(store_dsn) as conn:
        row = conn.execute("SELECT sequence FROM up_change_log_head").fetchone()
        top = int(row[0]) if row else 0
        rows = conn.execute(
            "SELECT sequence, profile_id, kind, changes, related, cause FROM up_change_log "
            "ORDER BY sequence"
        ).fetchall()
    assert [r[0] for r in rows] == list(range(1, top + 1)), "change log is not gap-free 1..head"
    first_seen: dict[tuple[Any, ...], int] = {}
    repeated = []
    for sequence, profile, kind, changes, related, cause in rows:
        for event in cause:
            identity = (
                profile, kind, canonical(changes), canonical(related),
                event["source"], event["table"], canonical(event["key"]), event.get("lsn"),
            )
            if identity in first_seen:
                repeated.append((first_seen[identity], sequence, identity))
            else:
                first_seen[identity] = sequence
    assert not repeated, f"changes repeated for the same source event: {repeated[:3]}"
    return top
