"""One PostgreSQL connection driven through libpq directly, for the coalesced single-key reads.

psycopg's asyncio cursor costs ~120 µs of CPU per statement here (its generator protocol, a
reader registered and removed on the socket for every wait, the pool's checkout) for a round trip
whose own cost is ~50 µs. The hot reads need none of what that buys: their statements are fixed,
prepared once per connection, take text parameters and return a handful of rows in text format.
So this connection keeps one reader registered on its socket for its whole life, sends
``Bind``/``Execute`` of a prepared statement with ``PQsendQueryPrepared`` and completes a future
when libpq has the result.

psycopg still opens the connection (DSN, ``options``, timeouts) and sends the cancel request; it
never runs a statement on it. One statement at a time (the coalescer's slots guarantee it); a
statement whose caller was cancelled is cancelled in PostgreSQL and drained before the next one
is sent, so a connection never carries a statement nobody waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import pq

from .profile_reads import QueryTimedOut
from .profile_store import StoreError

Row = tuple[bytes | None, ...]
"""A result row in text format: each column's bytes, ``None`` for NULL."""

_QUERY_CANCELED = b"57014"


class ConnectionLost(StoreError):
    """The connection broke (the server restarted or closed it); a new one may succeed."""


class ReadConnection:
    """A connection for prepared read statements, opened on first use and reopened after a break.

    Args:
        dsn: The store's DSN.
        statements: Statement name → SQL with ``$1``-style parameters, prepared on connecting.
        connect_kwargs: Passed to :meth:`psycopg.AsyncConnection.connect` (``options``,
            ``connect_timeout``).
    """

    def __init__(
        self, dsn: str, statements: Mapping[str, str], connect_kwargs: Mapping[str, Any]
    ) -> None:
        self._dsn = dsn
        self._statements = dict(statements)
        self._connect_kwargs = dict(connect_kwargs)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._pgconn: pq.abc.PGconn | None = None
        self._fd = -1
        self._waiter: asyncio.Future[list[pq.abc.PGresult]] | None = None
        self._results: list[pq.abc.PGresult] = []
        self._in_flight = False
        self._draining: asyncio.Task[None] | None = None

    async def query(self, statement: str, params: Sequence[bytes]) -> list[Row]:
        """Run a prepared statement; its rows.

        Raises:
            QueryTimedOut: The store cancelled the statement (``statement_timeout``).
            ConnectionLost: The connection broke (before or during the statement).
            StoreError: The statement failed.
        """
        if self._draining is not None:
            await asyncio.shield(self._draining)
        if self._in_flight:
            raise RuntimeError("one statement at a time on a ReadConnection")
        pgconn = self._pgconn or await self._connected()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[pq.abc.PGresult]] = loop.create_future()
        try:
            pgconn.send_query_prepared(statement.encode(), params, result_format=0)
            self._in_flight = True
            while pgconn.flush():
                await self._writable(pgconn)
        except psycopg.Error as exc:
            await self.close()
            raise ConnectionLost(f"store connection lost: {exc}") from exc
        except asyncio.CancelledError:
            # Cancelled with the statement partly sent: nothing would send the rest, so there
            # is no result to drain; drop the connection (the next statement opens another).
            self._broken(ConnectionLost("cancelled while sending a statement"))
            raise
        self._waiter = waiter
        try:
            results = await waiter
        except asyncio.CancelledError:
            # The caller's deadline: stop the statement in PostgreSQL, and let the next statement
            # wait until its result (or its cancellation error) has been read off the socket.
            if self._in_flight:
                self._draining = loop.create_task(self._drain())
            raise
        finally:
            self._waiter = None
        return _rows(results)

    async def close(self) -> None:
        """Close the connection (a later :meth:`query` reopens it)."""
        conn = self._detach(ConnectionLost("the store connection was closed"))
        if self._draining is not None and self._draining is not asyncio.current_task():
            self._draining.cancel()
            self._draining = None
        if conn is not None:
            await conn.close()

    def _detach(self, exc: Exception) -> psycopg.AsyncConnection[Any] | None:
        """Forget the connection at once (its waiter fails with ``exc``); the caller closes it.

        The socket leaves the event loop here, synchronously: libpq may already have closed it,
        and a new connection may be given the same descriptor before an awaited close would run.
        """
        conn = self._conn
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._fd = -1
        self._pgconn = self._conn = None
        self._fail(exc)
        return conn

    async def _connected(self) -> pq.abc.PGconn:
        """Connect in a task of its own, which a cancelled caller cancels exactly once.

        A ``PREPARE`` waits for any lock on the tables it names. Cancelled, psycopg asks the
        server to cancel it; cancelled again meanwhile (the call's deadline, then gRPC's), it
        gives up and drops the socket, and the backend would keep waiting for the lock.
        """
        task = asyncio.get_running_loop().create_task(self._connect())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_retrieve)
            raise

    async def _connect(self) -> pq.abc.PGconn:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, **self._connect_kwargs
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the store: {exc}") from exc
        try:
            for name, sql in self._statements.items():
                await conn.execute(f"PREPARE {name} AS {sql}".encode())
        except BaseException as exc:  # cancelled, or a PREPARE failed: keep nothing open
            await conn.close()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"cannot connect to the store: {exc}") from exc
            raise
        if self._pgconn is not None:
            # Connected by a later query while this connect, its caller gone, was finishing.
            await conn.close()
            return self._pgconn
        pgconn = conn.pgconn
        pgconn.nonblocking = 1
        self._conn, self._pgconn, self._fd = conn, pgconn, pgconn.socket
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        return pgconn

    def _readable(self) -> None:
        pgconn = self._pgconn
        if pgconn is None:
            return
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    # The statement's results are complete (one statement: one result).
                    results, self._results = self._results, []
                    self._in_flight = False
                    if self._waiter is not None and not self._waiter.done():
                        self._waiter.set_result(results)
                    break
                self._results.append(result)
        except psycopg.Error as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        conn = self._detach(ConnectionLost(f"store connection lost: {exc}"))
        if conn is not None:
            # Closing awaits psycopg: hand it to a task (the callback must not block the loop).
            task = asyncio.get_running_loop().create_task(conn.close())
            task.add_done_callback(_retrieve)

    def _fail(self, exc: Exception) -> None:
        self._results = []
        self._in_flight = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
            self._waiter.exception()  # retrieved: a cancelled caller never reads it

    async def _writable(self, pgconn: pq.abc.PGconn) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(pgconn.socket, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(pgconn.socket)

    async def _drain(self) -> None:
        conn = self._conn
        try:
            if conn is None or not self._in_flight:
                return  # closed, or the result arrived as the caller gave up
            waiter: asyncio.Future[list[pq.abc.PGresult]] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiter = waiter
            await conn.cancel_safe(timeout=5.0)
            await asyncio.wait_for(waiter, 10.0)
        except (psycopg.Error, TimeoutError, StoreError):
            self._draining = None
            await self.close()
        finally:
            self._waiter = None
            self._draining = None


def _rows(results: list[pq.abc.PGresult]) -> list[Row]:
    rows: list[Row] = []
    for result in results:
        status = result.status
        if status == pq.ExecStatus.TUPLES_OK:
            value = result.get_value
            columns = range(result.nfields)
            rows.extend(tuple([value(i, j) for j in columns]) for i in range(result.ntuples))
        elif status == pq.ExecStatus.FATAL_ERROR:
            if result.error_field(pq.DiagnosticField.SQLSTATE) == _QUERY_CANCELED:
                raise QueryTimedOut("the store cancelled the query at its timeout")
            message = (result.error_message or b"").decode(errors="replace").strip()
            raise StoreError(f"store query failed: {message}")
    return rows


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def text_array(values: Sequence[str]) -> bytes:
    """A ``text[]`` parameter in PostgreSQL's text form (every element quoted)."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return ("{" + ",".join(quoted) + "}").encode()


__all__ = ["ConnectionLost", "ReadConnection", "Row", "text_array"]
