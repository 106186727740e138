"""The record keys a reconciliation found in a source, kept in the store rather than in memory.

Reconciliation reads every row of a source and must then name the store's live records that no row
maps to (orphans). Holding every key it saw, and every key the store holds, in Python sets cost
memory in proportion to the largest table: ~10 million keys are gigabytes. Here the keys go, a batch
at a time, into a temporary table on one store connection (``COPY``), and the orphans are one
anti-join in PostgreSQL, so the checker's memory stays flat whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError, OperationalError

from ..engine.records import RecordKey
from .profile_store import ProfileStore, StoreError

_TABLE = "up_reconcile_seen"

_CREATE = f"CREATE TEMPORARY TABLE {_TABLE} (table_name text NOT NULL, record_key text NOT NULL)"
_DROP = f"DROP TABLE IF EXISTS {_TABLE}"
_COPY = f"COPY {_TABLE} (table_name, record_key) FROM STDIN"
_UNSEEN = f"""
SELECT s.record_key
FROM up_source_records s
WHERE s.source = %s AND s.table_name = %s AND NOT s.deleted
  AND NOT EXISTS (
    SELECT 1 FROM {_TABLE} r WHERE r.table_name = s.table_name AND r.record_key = s.record_key
  )
ORDER BY s.record_key
"""


@contextmanager
def seen_records(store: ProfileStore, source: str) -> Iterator[SeenRecords]:
    """Keys seen in ``source``'s tables, noted in the store for as long as the block runs.

    Raises:
        StoreError: The store failed (when the table is made, or by a method of the result).
    """
    try:
        connection = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except (OperationalError, DBAPIError) as exc:
        raise StoreError(f"store unreachable: {exc.orig or exc}") from exc
    with connection:
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        seen = SeenRecords(driver, source)
        try:
            yield seen
        finally:
            seen.close()


class SeenRecords:
    """The keys seen in one source's tables, in a temporary table of one store session.

    Args:
        connection: A store connection in autocommit, held for this object's life.
        source: The source whose tables are read.
    """

    def __init__(self, connection: psycopg.Connection[Any], source: str) -> None:
        self._conn = connection
        self._source = source
        with _store_errors():
            self._conn.execute(_DROP)  # the pooled session may hold one from a check that died
            self._conn.execute(_CREATE)

    def add(self, keys: Iterable[RecordKey]) -> None:
        """Note keys seen in the source (their source is taken to be this one)."""
        with _store_errors(), self._conn.cursor() as cursor, cursor.copy(_COPY) as copy:
            for key in keys:
                copy.write_row((key.table, key.key))

    def unseen_live(self, table: str) -> list[RecordKey]:
        """The store's live records of ``table`` that no noted key names, in key order."""
        with _store_errors():
            self._conn.execute(f"ANALYZE {_TABLE}")  # the anti-join's plan needs the row count
            rows = self._conn.execute(_UNSEEN, (self._source, table)).fetchall()
        return [RecordKey(self._source, table, str(key)) for (key,) in rows]

    def close(self) -> None:
        """Drop the table; the connection goes back to the pool."""
        # A broken session is discarded by the pool, and its table with it.
        with suppress(psycopg.Error):
            self._conn.execute(_DROP)


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"store statement failed: {exc}") from exc


__all__ = ["SeenRecords", "seen_records"]
