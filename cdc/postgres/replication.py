"""The streaming replication sub-protocol over a ``replication=database`` connection.

psycopg's ``Cursor.copy()`` refuses COPY_BOTH, so this module drives libpq directly through
``Connection.pgconn``: ``START_REPLICATION`` returns a COPY_BOTH stream on which the server sends
XLogData (``w``) and primary keepalive (``k``) messages, and we send standby status updates (``r``)
reporting the LSN we have durably handled. Reads are non-blocking and the wait is a ``select()`` on
the socket, which releases the GIL, so a quiet slot costs no CPU and the sink's threads keep running.
"""

from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql

from ..errors import SourceError
from ..lsn import format_lsn, parse_lsn
from . import session

_XLOG_HEADER = struct.Struct("!QQQ")
_KEEPALIVE = struct.Struct("!QQB")
_STATUS_UPDATE = struct.Struct("!cQQQQB")
# PostgreSQL's timestamps count microseconds from 2000-01-01.
_PG_EPOCH_OFFSET_US = 946_684_800_000_000


@dataclass(frozen=True, slots=True)
class XLogData:
    """A chunk of decoded WAL: one pgoutput message starting at ``data_start``."""

    data_start: int
    wal_end: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The server's heartbeat: its WAL end, and whether it wants a status update now."""

    wal_end: int
    reply_requested: bool


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    """A freshly created slot: where its stream starts and the snapshot that matches it."""

    consistent_lsn: int
    snapshot_name: str | None


class ReplicationConnection:
    """One replication connection to a source database."""

    def __init__(self, dsn: str) -> None:
        self._conn = session.connect(dsn, replication=True)
        self._pg = self._conn.pgconn
        self._streaming = False

    def create_slot(self, slot: str, export_snapshot: bool) -> CreatedSlot:
        """Create a pgoutput slot; with ``export_snapshot`` also export its consistent snapshot.

        The exported snapshot stays importable until this connection runs its next command, so the
        caller imports it (``SET TRANSACTION SNAPSHOT``) before calling :meth:`start`.
        """
        action = sql.SQL("EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT")
        query = sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}").format(
            sql.Identifier(slot), action
        )
        try:
            row = self._conn.execute(query).fetchone()
        except psycopg.Error as exc:
            raise SourceError(f"could not create replication slot {slot!r}: {exc}") from exc
        assert row is not None
        return CreatedSlot(parse_lsn(row[1]), row[2])

    def start(self, slot: str, publication: str, start_lsn: int = 0) -> None:
        """Start streaming the slot from ``start_lsn`` (0: from its confirmed position)."""
        query = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})"
        ).format(sql.Identifier(slot), sql.SQL(format_lsn(start_lsn)), sql.Literal(publication))
        self._pg.send_query(query.as_bytes(self._conn))
        self._wait_for_copy_both()
        self._pg.nonblocking = 1
        self._streaming = True

    def _wait_for_copy_both(self) -> None:
        while True:
            self._pg.consume_input()
            if not self._pg.is_busy():
                break
            select.select([self._pg.socket], [], [], 1.0)
        result = self._pg.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = result.error_message.decode(errors="replace").strip() if result else ""
            raise SourceError(f"START_REPLICATION failed: {message or 'no result'}")

    def read(self, timeout: float) -> XLogData | Keepalive | None:
        """The next message, or ``None`` if nothing arrived within ``timeout`` seconds.

        Raises:
            SourceError: The server closed the stream or the connection broke.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                nbytes, data = self._pg.get_copy_data(1)
            except psycopg.OperationalError as exc:
                raise SourceError(f"replication stream broke: {exc}") from exc
            if nbytes > 0:
                return _parse(bytes(data))
            if nbytes < 0:
                result = self._pg.get_result()
                detail = result.error_message.decode(errors="replace").strip() if result else ""
                raise SourceError(f"the server ended the replication stream {detail}".strip())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            select.select([self._pg.socket], [], [], remaining)
            try:
                self._pg.consume_input()
            except psycopg.OperationalError as exc:
                raise SourceError(f"replication stream broke: {exc}") from exc

    def send_status(self, written_lsn: int, flushed_lsn: int, reply: bool = False) -> None:
        """Tell the server what we have received and what it may forget (the flushed LSN)."""
        now = int(time.time() * 1_000_000) - _PG_EPOCH_OFFSET_US
        message = _STATUS_UPDATE.pack(b"r", written_lsn, flushed_lsn, flushed_lsn, now, int(reply))
        try:
            self._pg.put_copy_data(message)
            self._pg.flush()
        except psycopg.OperationalError as exc:
            raise SourceError(f"could not send standby status update: {exc}") from exc

    def close(self) -> None:
        """Close the connection (the server notices and releases the slot)."""
        self._conn.close()

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The underlying connection, for replication commands issued before :meth:`start`."""
        return self._conn


def _parse(data: bytes) -> XLogData | Keepalive:
    kind = data[:1]
    if kind == b"w":
        start, end, _send_time = _XLOG_HEADER.unpack_from(data, 1)
        return XLogData(start, end, data[25:])
    if kind == b"k":
        end, _send_time, reply = _KEEPALIVE.unpack_from(data, 1)
        return Keepalive(end, bool(reply))
    raise SourceError(f"unexpected replication message type {kind!r}")
