"""The applying transaction's hot statements, as constant SQL over ``unnest`` arrays.

A batch reads and writes thousands of rows. Built with SQLAlchemy Core, each statement's text
changed with the batch's size (a multi-row VALUES list, a tuple IN list), so every batch paid for
compiling and converting a new statement of several hundred kilobytes, and PostgreSQL planned a
long IN list row by row (measured on a 1M-profile store: ~1.3 ms of CPU per change, and 0.46 s
to look up 2,000 keys by tuple IN vs 0.07 s joined to ``unnest``). Here every statement has one
fixed text and takes whole columns as array parameters: psycopg prepares it once per connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection

KEY_ARRAYS = "unnest(%s::text[], %s::text[], %s::text[]) AS k(source, table_name, record_key)"

LOAD_RECORDS = f"""
SELECT r.source, r.table_name, r.record_key, r.profile_id, r.fields, r.identifiers, r.version,
       r.commit_time_us, r.position, r.deleted
FROM up_source_records r
JOIN {KEY_ARRAYS}
  ON r.source = k.source AND r.table_name = k.table_name AND r.record_key = k.record_key
"""

RECORDS_SHARING = """
SELECT DISTINCT r.source, r.table_name, r.record_key
FROM up_record_identifiers r
JOIN unnest(%s::text[], %s::text[]) AS i(type, value) ON r.type = i.type AND r.value = i.value
"""

UPSERT_RECORDS = """
INSERT INTO up_source_records
    (source, table_name, record_key, profile_id, fields, identifiers, version, commit_time_us,
     position, deleted)
SELECT source, table_name, record_key, profile_id, fields::jsonb, identifiers::jsonb, version,
       commit_time_us, position, deleted
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::bigint[], %s::bigint[], %s::bigint[], %s::boolean[])
     AS u(source, table_name, record_key, profile_id, fields, identifiers, version,
          commit_time_us, position, deleted)
ON CONFLICT (source, table_name, record_key) DO UPDATE SET
    profile_id = EXCLUDED.profile_id, fields = EXCLUDED.fields,
    identifiers = EXCLUDED.identifiers, version = EXCLUDED.version,
    commit_time_us = EXCLUDED.commit_time_us, position = EXCLUDED.position,
    deleted = EXCLUDED.deleted
"""

DELETE_IDENTIFIERS = f"""
DELETE FROM up_record_identifiers r USING {KEY_ARRAYS}
WHERE r.source = k.source AND r.table_name = k.table_name AND r.record_key = k.record_key
"""

INSERT_IDENTIFIERS = """
INSERT INTO up_record_identifiers (type, value, source, table_name, record_key)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
"""

SET_RECORD_PROFILES = """
UPDATE up_source_records r SET profile_id = u.profile_id
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
     AS u(source, table_name, record_key, profile_id)
WHERE r.source = u.source AND r.table_name = u.table_name AND r.record_key = u.record_key
"""

UPSERT_PROFILES = """
INSERT INTO up_profiles
    (profile_id, fields, identifiers, record_count, created_sequence, updated_sequence)
SELECT profile_id, fields::jsonb, identifiers::jsonb, record_count, created_sequence,
       updated_sequence
FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::bigint[], %s::bigint[])
     AS u(profile_id, fields, identifiers, record_count, created_sequence, updated_sequence)
ON CONFLICT (profile_id) DO UPDATE SET
    fields = EXCLUDED.fields, identifiers = EXCLUDED.identifiers,
    record_count = EXCLUDED.record_count, updated_sequence = EXCLUDED.updated_sequence
"""

APPEND_CHANGES = """
INSERT INTO up_change_log (sequence, profile_id, kind, changes, related, cause)
SELECT sequence, profile_id, kind, changes::jsonb, related::jsonb, cause::jsonb
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
     AS u(sequence, profile_id, kind, changes, related, cause)
"""

RECORDS_OF_PROFILES = """
SELECT source, table_name, record_key FROM up_source_records WHERE profile_id = ANY(%s::text[])
"""

LOAD_PROFILES = """
SELECT profile_id, fields, identifiers, record_count, created_sequence, updated_sequence
FROM up_profiles WHERE profile_id = ANY(%s::text[])
"""

LOAD_OVERRIDES = """
SELECT kind, record_a, record_b FROM up_link_overrides
WHERE record_a = ANY(%s::text[]) OR record_b = ANY(%s::text[])
"""

PROFILE_IDS_TAKEN = """
SELECT profile_id FROM up_profiles WHERE profile_id = ANY(%s::text[])
UNION
SELECT alias_id FROM up_profile_aliases WHERE alias_id = ANY(%s::text[])
"""


def run(connection: Connection, statement: str, *columns: Iterable[Any]) -> Any:
    """Execute a constant statement with whole columns as array parameters (no compilation)."""
    return connection.exec_driver_sql(statement, tuple(list(c) for c in columns))


def json_text(value: Any) -> str:
    """JSON for a ``jsonb`` column: orjson when it can (fast), the standard library otherwise."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits, which orjson refuses and JSON allows
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
