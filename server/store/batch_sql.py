"""The applying transaction's statements: constant SQL taking whole batches as a few parameters.

A batch reads and writes thousands of rows. Two earlier forms were measured and dropped:

- SQLAlchemy Core statements whose text grew with the batch (a multi-row VALUES list, a tuple IN
  list): every batch compiled and sent a new statement of several hundred kilobytes, and
  PostgreSQL planned a long IN list row by row (~1.3 ms of CPU per change on a 1M-profile store);
- one ``text[]`` array parameter per column *in text format*: psycopg escapes every element of a
  text-format array with a regular expression in Python, and record keys and JSON documents are
  full of quotes (~0.7 ms of CPU per change, half the engine's time).

Here each statement has one fixed text (psycopg prepares it once per connection). Rows go as one
array per column in *binary* format (``%b``: psycopg copies each string as it is, no escaping),
unpacked by ``unnest``: the upserts of field documents (record images, profiles, each document
already JSON text), the identifier rows, and every lookup joined to a table. Inserts that join
nothing (change log, positions, conflicts) take one JSON array of objects, written by orjson and
unpacked by ``jsonb_to_recordset``; short lists of plain ids stay ``text[]`` arrays.

- Field documents inside a batch document were parsed twice by PostgreSQL, once as part of the
  batch and again as the ``json`` column's value: on ~3.5 KB profile documents the upsert cost
  ~80 µs of PostgreSQL CPU per row that way, ~45 µs as columns (a one-off measurement).
- Lookups: the planner takes ``jsonb_to_recordset`` for 100 rows, a batch of one change has one
  or two, and on a store of some ten thousand records it chose to hash-join them against the
  whole identifier table (and every record image): ~1.5 ms of PostgreSQL CPU per statement, three
  such statements per batch, in proportion to the store's size. ``unnest`` of a parameter is
  taken for 10 rows, and the applying transaction plans its statements generically (once per
  connection; see :data:`LOCK_HEAD`): index probes per row, whatever the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from . import json_codec

KEYS = "unnest(%b::text[], %b::text[], %b::text[]) AS k(source, table_name, record_key)"

# Also sets the transaction's plan_cache_mode (set_config(..., true) is SET LOCAL, in the same
# round trip): the statements below are prepared once per connection and their generic plans
# (index probes per row) serve every batch. Left to choose, PostgreSQL re-planned the lookups
# for each small batch, ~80-260 µs of CPU per statement, to pick the same plan.
LOCK_HEAD = """
SELECT sequence, set_config('plan_cache_mode', 'force_generic_plan', true)
FROM up_change_log_head WHERE id = 1 FOR UPDATE
"""

LOAD_RECORDS = f"""
SELECT r.source, r.table_name, r.record_key, r.profile_id, r.fields, r.identifiers, r.version,
       r.commit_time_us, r.position, r.deleted
FROM up_source_records r
JOIN {KEYS}
  ON r.source = k.source AND r.table_name = k.table_name AND r.record_key = k.record_key
"""

RECORDS_SHARING = """
SELECT DISTINCT r.source, r.table_name, r.record_key
FROM up_record_identifiers r
JOIN unnest(%b::text[], %b::text[]) AS i(type, value)
  ON r.type = i.type AND r.value = i.value
"""

# Per identifier value: how many distinct profiles its live holders are in, and one of them.
PROFILES_HOLDING = """
SELECT i.type, i.value, count(DISTINCT r.profile_id) AS profiles, min(r.profile_id) AS profile_id,
       bool_or(r.profile_id IS NULL) AS unassigned
FROM up_record_identifiers i
JOIN unnest(%b::text[], %b::text[]) AS v(type, value)
  ON i.type = v.type AND i.value = v.value
JOIN up_source_records r
  ON r.source = i.source AND r.table_name = i.table_name AND r.record_key = i.record_key
GROUP BY i.type, i.value
"""

UPSERT_RECORDS = """
INSERT INTO up_source_records
    (source, table_name, record_key, profile_id, fields, identifiers, version, commit_time_us,
     position, deleted)
SELECT source, table_name, record_key, profile_id, fields::json, identifiers::jsonb, version,
       commit_time_us, position, deleted
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
            %b::bigint[], %b::bigint[], %b::bigint[], %b::boolean[])
     AS u(source, table_name, record_key, profile_id, fields, identifiers, version,
          commit_time_us, position, deleted)
ON CONFLICT (source, table_name, record_key) DO UPDATE SET
    profile_id = EXCLUDED.profile_id, fields = EXCLUDED.fields,
    identifiers = EXCLUDED.identifiers, version = EXCLUDED.version,
    commit_time_us = EXCLUDED.commit_time_us, position = EXCLUDED.position,
    deleted = EXCLUDED.deleted
"""

DELETE_IDENTIFIERS = f"""
DELETE FROM up_record_identifiers r USING {KEYS}
WHERE r.source = k.source AND r.table_name = k.table_name AND r.record_key = k.record_key
"""

INSERT_IDENTIFIERS = """
INSERT INTO up_record_identifiers (type, value, source, table_name, record_key)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
"""

SET_RECORD_PROFILES = """
UPDATE up_source_records r SET profile_id = u.profile_id
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[])
     AS u(source, table_name, record_key, profile_id)
WHERE r.source = u.source AND r.table_name = u.table_name AND r.record_key = u.record_key
"""

UPSERT_PROFILES = """
INSERT INTO up_profiles
    (profile_id, fields, identifiers, record_count, created_sequence, updated_sequence)
SELECT profile_id, fields::json, identifiers::jsonb, record_count, created_sequence,
       updated_sequence
FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::bigint[], %b::bigint[])
     AS u(profile_id, fields, identifiers, record_count, created_sequence, updated_sequence)
ON CONFLICT (profile_id) DO UPDATE SET
    fields = EXCLUDED.fields, identifiers = EXCLUDED.identifiers,
    record_count = EXCLUDED.record_count, updated_sequence = EXCLUDED.updated_sequence
"""

DELETE_PROFILES = "DELETE FROM up_profiles WHERE profile_id = ANY(%s::text[])"

# Earlier aliases of a merged profile follow it to its survivor.
REPOINT_ALIASES = """
UPDATE up_profile_aliases a SET profile_id = u.profile_id
FROM unnest(%b::text[], %b::text[]) AS u(alias_id, profile_id)
WHERE a.profile_id = u.alias_id
"""

UPSERT_ALIASES = """
INSERT INTO up_profile_aliases (alias_id, profile_id, sequence)
SELECT alias_id, profile_id, %s::bigint
FROM unnest(%b::text[], %b::text[]) AS u(alias_id, profile_id)
ON CONFLICT (alias_id) DO UPDATE SET
    profile_id = EXCLUDED.profile_id, sequence = EXCLUDED.sequence
"""

APPEND_CHANGES = """
INSERT INTO up_change_log (sequence, profile_id, kind, changes, related, cause)
SELECT sequence, profile_id, kind, changes, related, cause
FROM jsonb_to_recordset(%s::jsonb)
     AS u(sequence bigint, profile_id text, kind text, changes jsonb, related jsonb, cause jsonb)
"""

# The NOTIFY is delivered at commit (never for a rolled-back batch): the change feed wakes up.
ADVANCE_HEAD = """
WITH advanced AS (UPDATE up_change_log_head SET sequence = %s WHERE id = 1)
SELECT pg_notify(%s, %s)
"""

# One notification per payload, delivered at commit (see profile_writes).
ANNOUNCE_WRITES = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS u(payload)"

SAVE_POSITIONS = """
INSERT INTO up_positions (consumer, stream, position)
SELECT %s, stream, position
FROM jsonb_to_recordset(%s::jsonb) AS u(stream text, position bigint)
ON CONFLICT (consumer, stream) DO UPDATE SET
    position = greatest(up_positions.position, EXCLUDED.position)
"""

SAVE_CONFLICTS = """
INSERT INTO up_identity_conflicts (identifier_type, identifier_value, records, reason, sequence)
SELECT identifier_type, identifier_value, records, reason, %s::bigint
FROM jsonb_to_recordset(%s::jsonb)
     AS u(identifier_type text, identifier_value text, records jsonb, reason text)
ON CONFLICT (identifier_type, identifier_value) DO UPDATE SET
    records = EXCLUDED.records, reason = EXCLUDED.reason, sequence = EXCLUDED.sequence
"""

RECORDS_OF_PROFILES = """
SELECT source, table_name, record_key FROM up_source_records WHERE profile_id = ANY(%s::text[])
"""

RECORDS_OF_PROFILES_FULL = """
SELECT source, table_name, record_key, profile_id, fields, identifiers, version, commit_time_us,
       position, deleted
FROM up_source_records WHERE profile_id = ANY(%s::text[])
"""

LOAD_PROFILES = """
SELECT profile_id, fields, identifiers, record_count, created_sequence, updated_sequence
FROM up_profiles WHERE profile_id = ANY(%s::text[])
"""

LOAD_OVERRIDES = """
SELECT kind, record_a, record_b FROM up_link_overrides
WHERE record_a IN (SELECT jsonb_array_elements_text(%s::jsonb))
   OR record_b IN (SELECT jsonb_array_elements_text(%s::jsonb))
"""

PROFILE_IDS_TAKEN = """
SELECT profile_id FROM up_profiles WHERE profile_id = ANY(%s::text[])
UNION
SELECT alias_id FROM up_profile_aliases WHERE alias_id = ANY(%s::text[])
"""


def run(connection: Connection, statement: str, *params: Any) -> list[Any]:
    """Execute a constant statement in the connection's transaction; its rows (named tuples).

    Straight on the psycopg connection, not through ``exec_driver_sql``: SQLAlchemy's execution
    context cost about as much CPU as psycopg's own work, and an applying transaction runs about
    fifteen of these statements even for a single event. psycopg prepares each statement once
    per connection. Errors are raised as SQLAlchemy's (``DBAPIError`` subclasses wrapping
    psycopg's), as the transaction's callers expect.
    """
    with (
        _as_sqlalchemy_errors(connection, statement, params),
        _driver(connection).cursor(row_factory=namedtuple_row) as cursor,
    ):
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description is not None else []


def send(connection: Connection, statement: str, *params: Any) -> None:
    """Execute a constant statement whose result is not needed (a write).

    Inside :func:`pipelined` it is queued and sent without waiting for its result; outside, it
    is :func:`run` without reading rows.
    """
    with (
        _as_sqlalchemy_errors(connection, statement, params),
        _driver(connection).cursor() as cursor,
    ):
        cursor.execute(statement, params)


@contextmanager
def pipelined(connection: Connection) -> Iterator[None]:
    """Statements :func:`send` inside go to the server together (libpq pipeline mode).

    A batch ends with about ten writes that depend on nothing but each other's order. Sent one
    at a time, each waited a round trip for the backend, which on a busy host also waits for a
    core to be scheduled: most of an applying transaction's time at moderate rates. The server
    still runs them in order, in the transaction; the first failure aborts the rest, and it is
    raised here when the block ends, as a SQLAlchemy ``DBAPIError`` (the transaction is then
    rolled back like any other failed batch).
    """
    with _as_sqlalchemy_errors(connection, "pipelined writes", None), _driver(connection).pipeline():
        yield


def _driver(connection: Connection) -> psycopg.Connection[Any]:
    return connection.connection.driver_connection  # type: ignore[return-value]


@contextmanager
def _as_sqlalchemy_errors(connection: Connection, statement: str, params: Any) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            statement, params, exc, psycopg.Error, dialect=connection.dialect
        ) from exc


def rows(items: Iterable[Mapping[str, Any]]) -> str:
    """A batch's rows as one JSON document, for ``jsonb_to_recordset``."""
    return json_codec.dumps(list(items))


def columns(items: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Rows (at least one, all of one width) as one list per column, for ``unnest``."""
    return [list(column) for column in zip(*items, strict=True)]


def keys(items: Iterable[Any]) -> list[list[str]]:
    """Record keys (at least one) as the three columns of :data:`KEYS`: sources, tables, keys."""
    return columns((k.source, k.table, k.key) for k in items)
