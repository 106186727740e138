"""Reading the tables' existing rows inside the slot's exported snapshot.

Rows come through ``COPY (SELECT …) TO STDOUT`` in text format: the same output functions pgoutput
uses, streamed by the server, so memory stays bounded by one batch whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from ..errors import SourceError
from ..model import ColumnValue, TableShape
from . import session


class SnapshotReader:
    """A REPEATABLE READ transaction pinned to the snapshot a new slot exported."""

    def __init__(self, dsn: str, snapshot_name: str | None) -> None:
        self._conn: psycopg.Connection[Any] = session.connect(dsn, autocommit=False)
        try:
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot_name is not None:
                self._conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
                )
        except psycopg.Error as exc:
            self._conn.close()
            raise SourceError(f"could not open the snapshot transaction: {exc}") from exc

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The snapshot transaction's connection (catalog reads here see the snapshot too)."""
        return self._conn

    def database(self) -> str:
        """The name of the database the transaction reads (``source.db`` of its events)."""
        row = self._conn.execute("SELECT current_database()").fetchone()
        return str(row[0]) if row else ""

    def read_rows(
        self, shape: TableShape, batch_rows: int, where: sql.Composable | None = None
    ) -> Iterator[list[tuple[ColumnValue, ...]]]:
        """Yield the table's rows (those matching ``where``, if given) in batches of at most
        ``batch_rows``, in COPY text format: the output functions pgoutput uses too."""
        columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in shape.columns)
        select = sql.SQL("SELECT {} FROM {}").format(
            columns, sql.Identifier(shape.schema, shape.name)
        )
        if where is not None:
            select += sql.SQL(" WHERE ") + where
        query = sql.SQL("COPY ({}) TO STDOUT").format(select)
        batch: list[tuple[ColumnValue, ...]] = []
        try:
            with self._conn.cursor().copy(query) as copy:
                for row in copy.rows():
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        yield batch
                        batch = []
        except psycopg.Error as exc:
            raise SourceError(f"snapshot of {shape.schema}.{shape.name} failed: {exc}") from exc
        if batch:
            yield batch

    def close(self) -> None:
        """End the snapshot transaction."""
        try:
            self._conn.rollback()
        finally:
            self._conn.close()
