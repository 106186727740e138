"""The connector: one source database → change events in a sink.

Start-up checks the source and decides whether to snapshot; then it streams the slot. The rule
that makes it lossless: the LSN confirmed to PostgreSQL moves only past transactions whose every
event the sink has acknowledged. A crash at any moment therefore re-sends at most the
unacknowledged window, and each re-sent event carries the same ``source.lsn`` as before.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import psycopg
import structlog
from psycopg import sql

from .changes import ChangeTranslator, CommittedTransaction, TranslatorConfig
from .config import SnapshotMode, SourceConfig
from .envelope import ChangeEvent, SnapshotMarker, SourceInfo, TableEventBuilder
from .errors import PreflightError, SourceError
from .identifiers import TableName
from .lsn import format_lsn
from .model import Column, ColumnValue, Relation, TableShape
from .offsets import ConnectorOffset, OffsetStore
from .oversized import fit_event, is_marker
from .pgoutput import decode_message
from .postgres import catalog, session
from .postgres.replication import Keepalive, ReplicationConnection
from .postgres.snapshot import SnapshotReader
from .sink import Sink
from .stats import CaptureStats
from .type_encoding import EncodingOptions

log = structlog.get_logger(__name__)

_PUBLISH_BATCH = 1_000
_READ_TIMEOUT_S = 0.2
_PROGRESS_LOG_INTERVAL_S = 10.0
_SHUTDOWN_FLUSH_TIMEOUT_S = 30.0
_SLOT_RELEASE_WAIT_S = 15.0
# A sink that acknowledges nothing for this long is reported (a broker unreachable, a store
# down): the connector keeps the events and confirms nothing past them, which is safe but silent
# otherwise, because the clients retry by themselves underneath.
_SINK_STALL_WARN_S = 10.0


def heartbeat_topic(prefix: str) -> str:
    """Debezium's heartbeat topic for a source."""
    return f"__debezium-heartbeat.{prefix}"


def table_topic(prefix: str, table: TableName) -> str:
    """``<prefix>.<schema>.<table>``."""
    return f"{prefix}.{table.schema}.{table.name}"


class Connector:
    """Captures one source until stopped.

    Args:
        source: The source's configuration.
        sink: Where events go.
        offsets: Where the connector records whether its snapshot completed.
    """

    def __init__(self, source: SourceConfig, sink: Sink, offsets: OffsetStore) -> None:
        self.source = source
        self.stats = CaptureStats()
        self._sink = sink
        self._offsets = offsets
        self._tables = [t.table for t in source.tables]
        self._options = EncodingOptions(decimal_handling=source.decimal_handling)
        self._log = log.bind(source=source.name, db=session.describe_dsn(source.dsn))
        self._catalog: psycopg.Connection[Any] | None = None
        self._database = ""
        self._newly_published: set[TableName] = set()
        # (events published when the transaction ended, its end LSN, its commit time)
        self._unconfirmed: deque[tuple[int, int, int]] = deque()
        self._ack_seen = (0, time.monotonic())  # (acknowledged, when it last moved)
        self._stall_reported_at: float | None = None
        self.ready = threading.Event()
        """Set once the snapshot (if any) is done and the connector is streaming."""

    # --- start-up --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the source and create the publication (no slot is touched).

        Raises:
            PreflightError: The source cannot be captured as configured.
            SourceError: The source is unreachable.
        """
        self._catalog = session.connect(self.source.dsn)
        self._database = catalog.check_server(self._catalog)
        may_set_full = {
            t.table: self.source.replica_identity_full_allowed(t) for t in self.source.tables
        }
        catalog.prepare_tables(self._catalog, self._tables, may_set_full)
        self._newly_published = catalog.ensure_publication(
            self._catalog, self.source.publication_name, self._tables
        )

    def run(self, stop: threading.Event) -> None:
        """Prepare, snapshot if needed, then stream until ``stop`` is set.

        Raises:
            PreflightError: The source cannot be captured as configured (do not retry).
            SourceError, SinkError: A connection failed (retrying later is safe).
        """
        try:
            if self._catalog is None:
                self.prepare()
            replication = ReplicationConnection(self.source.dsn)
            try:
                self._open_slot(replication)
                self._stream(replication, stop)
            finally:
                replication.close()
        finally:
            if self._catalog is not None:
                self._catalog.close()
                self._catalog = None

    def _open_slot(self, replication: ReplicationConnection) -> None:
        assert self._catalog is not None
        slot = self.source.slot_name
        mode = self.source.snapshot
        state = catalog.slot_state(self._catalog, slot)
        offset = self._offsets.load(self.source.name)
        invalidated = None if state is None else state.invalidation
        if invalidated is not None:
            self._drop_invalidated_slot(invalidated, offset)
            state = None
        if state is not None and state.active_pid is not None:
            state = self._wait_for_slot_release(slot)
        if state is not None:
            catalog.check_slot_usable(state, self._database)
            snapshot_done = offset is not None and offset.slot == slot and offset.snapshot_completed
            if snapshot_done or mode is SnapshotMode.NEVER:
                self._log.info(
                    "cdc.slot_resumed",
                    slot=slot,
                    confirmed_lsn=format_lsn(state.confirmed_flush_lsn or 0),
                )
                if offset is not None and offset.slot == slot:
                    self._read_added_tables(offset, state)
                return
            # The slot exists but its snapshot never finished (the connector died mid-snapshot):
            # the exported snapshot is gone, so start over with a new slot and a new snapshot.
            self._log.warning("cdc.snapshot_incomplete_restarting", slot=slot)
            catalog.drop_slot(self._catalog, slot)
        elif offset is not None and offset.snapshot_completed and mode is SnapshotMode.INITIAL:
            raise PreflightError(
                f"replication slot {slot!r} is gone, but source {self.source.name!r} was captured "
                f"before (last confirmed LSN {format_lsn(offset.lsn or 0)}): changes made since "
                "then can no longer be streamed",
                'set snapshot = "when_needed" to re-snapshot the tables, or drop the stored offset '
                "to start over",
            )
        self._create_slot(replication, snapshot=mode is not SnapshotMode.NEVER)

    def _wait_for_slot_release(self, slot: str) -> catalog.SlotState | None:
        # After a crash the server may hold the slot for the dead walsender a little longer;
        # a second live connector keeps holding it and is refused by check_slot_usable.
        assert self._catalog is not None
        deadline = time.monotonic() + _SLOT_RELEASE_WAIT_S
        state = catalog.slot_state(self._catalog, slot)
        while state is not None and state.active_pid is not None and time.monotonic() < deadline:
            time.sleep(0.2)
            state = catalog.slot_state(self._catalog, slot)
        return state

    def _drop_invalidated_slot(self, reason: str, offset: ConnectorOffset | None) -> None:
        """Refuse, or (``when_needed``, or never captured) drop the slot to start it again.

        An invalidated slot streams nothing any more: the server removed WAL it still needed
        (``max_slot_wal_keep_size``) or gave up on it, so changes made since it was last
        confirmed are gone. Under ``initial`` that is the operator's call, and the slot is left
        as it is for them to see; the same holds for one lost while streaming, which ends the
        stream and comes back here on the retry.
        """
        assert self._catalog is not None
        slot = self.source.slot_name
        captured = offset is not None and offset.slot == slot and offset.snapshot_completed
        if captured and self.source.snapshot is SnapshotMode.INITIAL:
            assert offset is not None
            raise PreflightError(
                f"replication slot {slot!r} was invalidated by the server ({reason}), so changes "
                f"made since source {self.source.name!r} last confirmed LSN "
                f"{format_lsn(offset.lsn or 0)} can no longer be streamed",
                'set snapshot = "when_needed" to drop the slot and re-snapshot the tables, or drop '
                f"it (SELECT pg_drop_replication_slot('{slot}');) and the stored offset to start "
                "over; raise max_slot_wal_keep_size on the source so that a stopped connector "
                "keeps its slot longer",
            )
        self._log.warning(
            "cdc.slot_invalidated",
            slot=slot,
            reason=reason,
            action="dropping it; a new slot and a snapshot follow"
            if self.source.snapshot is not SnapshotMode.NEVER
            else "dropping it; a new slot streams from now on (snapshot = never)",
        )
        if self._wait_for_slot_release(slot) is not None:
            catalog.drop_slot(self._catalog, slot)

    def _create_slot(self, replication: ReplicationConnection, snapshot: bool) -> None:
        slot = self.source.slot_name
        # Mark the snapshot incomplete *before* the slot exists, so a crash in between is seen as
        # "snapshot unfinished" on restart and never as "resume streaming".
        self._offsets.save(self.source.name, ConnectorOffset(slot, snapshot_completed=not snapshot))
        created = replication.create_slot(slot, export_snapshot=snapshot)
        self._log.info(
            "cdc.slot_created", slot=slot, consistent_lsn=format_lsn(created.consistent_lsn)
        )
        if snapshot:
            reader = SnapshotReader(self.source.dsn, created.snapshot_name)
            try:
                self._snapshot(reader, created.consistent_lsn)
            finally:
                reader.close()
            self._offsets.save(
                self.source.name,
                ConnectorOffset(slot, True, created.consistent_lsn, self._covered(self._tables)),
            )
        else:
            self._offsets.save(
                self.source.name, ConnectorOffset(slot, True, tables=self._covered(self._tables))
            )
        self.stats.confirmed_lsn = created.consistent_lsn

    # --- tables added to the config of a source captured before -------------------------------

    def _read_added_tables(self, offset: ConnectorOffset, state: catalog.SlotState) -> None:
        """Read the existing rows of tables added to the config since the slot was created.

        The slot streams a table's changes only from the moment it joined the publication
        (``prepare``); the rows it held before are read here, before streaming starts, as
        ``op: "r"`` events. They are ranked at the slot's ``restart_lsn``, below every change the
        slot will stream (no streamed transaction starts before it), so a change made while the
        rows were read always wins over the read, whichever the engine sees first.
        """
        if offset.tables is not None:
            added = [t for t in self._tables if t.quoted not in offset.tables]
        else:
            # An offset saved before offsets listed their tables: the publication says which
            # tables this start added. Record the others first, so that a crash while reading
            # these reads them again on the next start.
            added = [t for t in self._tables if t in self._newly_published]
            covered = self._covered([t for t in self._tables if t not in added])
            self._offsets.save(self.source.name, replace(offset, tables=covered))
        if added and self.source.snapshot is not SnapshotMode.NEVER:
            position = state.restart_lsn or state.confirmed_flush_lsn or 0
            reader = SnapshotReader(self.source.dsn, None)
            try:
                rows = self._snapshot(reader, position, added)
            finally:
                reader.close()
            self._log.info(
                "cdc.added_tables_read",
                tables=[str(t) for t in added],
                rows=rows,
                lsn=format_lsn(position),
            )
        # Only once every row read is durable in the sink (the snapshot flushed it).
        if offset.tables != self._covered(self._tables):
            self._offsets.save(
                self.source.name, replace(offset, tables=self._covered(self._tables))
            )

    @staticmethod
    def _covered(tables: Sequence[TableName]) -> tuple[str, ...]:
        return tuple(t.quoted for t in tables)

    # --- snapshot ----------------------------------------------------------------------------

    def _snapshot(
        self,
        reader: SnapshotReader,
        consistent_lsn: int,
        tables: Sequence[TableName] | None = None,
    ) -> int:
        """Read ``tables`` (all configured ones by default) as ``op: "r"`` events at
        ``consistent_lsn``; return how many rows, once the sink holds every one durably."""
        conn = reader.connection
        shapes = [
            catalog.load_table_shape(conn, catalog.table_oid(conn, t))
            for t in (self._tables if tables is None else tables)
        ]
        non_empty = [s for s in shapes if _has_rows(conn, s)]
        started_us = int(time.time() * 1_000_000)
        self._log.info("cdc.snapshot_started", tables=len(shapes), lsn=format_lsn(consistent_lsn))
        rows_read = 0
        batch: list[ChangeEvent] = []
        for index, shape in enumerate(non_empty):
            builder = TableEventBuilder(self.source.name, shape, self._options)
            last_table = index == len(non_empty) - 1
            rows = _with_position(reader.read_rows(shape, self.source.snapshot_batch_rows))
            for row, first_in_table, last_in_table in rows:
                marker = _snapshot_marker(
                    index == 0 and first_in_table,
                    last_table and last_in_table,
                    first_in_table,
                    last_in_table,
                )
                source = SourceInfo(
                    self.source.name,
                    self._database,
                    shape.schema,
                    shape.name,
                    ts_us=started_us,
                    snapshot=marker,
                    lsn=consistent_lsn,
                )
                now_us = int(time.time() * 1_000_000)
                batch.append(builder.event("r", None, builder.row(row), source, now_us))
                self.stats.snapshot_rows += 1
                rows_read += 1
                if len(batch) >= self.source.snapshot_batch_rows:
                    self._publish(batch)
                    batch = []
        self._publish(batch)
        # The snapshot counts as done only when every row is durable in the sink.
        self._sink.flush(timeout=max(_SHUTDOWN_FLUSH_TIMEOUT_S, 600.0))
        self.stats.events_acknowledged = self._sink.acknowledged()
        self._log.info("cdc.snapshot_completed", rows=self.stats.snapshot_rows)
        return rows_read

    # --- streaming ---------------------------------------------------------------------------

    def _stream(self, replication: ReplicationConnection, stop: threading.Event) -> None:
        translator = ChangeTranslator(
            TranslatorConfig(
                prefix=self.source.name,
                database=self._database,
                options=self._options,
                tombstones_on_delete=self.source.tombstones_on_delete,
                provide_transaction_metadata=self.source.provide_transaction_metadata,
            ),
            self._shape_for,
        )
        replication.start(self.source.slot_name, self.source.publication_name)
        self.ready.set()
        self._log.info("cdc.streaming", slot=self.source.slot_name)
        batch: list[ChangeEvent] = []
        now = time.monotonic()
        next_status = now + self.source.status_interval_s
        next_heartbeat = now + self.source.heartbeat_interval_s
        next_progress = now + _PROGRESS_LOG_INTERVAL_S
        reply_requested = False
        while not stop.is_set():
            message = replication.read(_READ_TIMEOUT_S if not batch else 0.0)
            if message is None:
                self._publish(batch)
                batch = []
            elif isinstance(message, Keepalive):
                self.stats.server_wal_end = max(self.stats.server_wal_end, message.wal_end)
                reply_requested = reply_requested or message.reply_requested
            else:
                self.stats.received_lsn = max(self.stats.received_lsn, message.wal_end)
                pgoutput = decode_message(message.payload)
                committed = translator.translate(
                    pgoutput, message.data_start, int(time.time() * 1_000_000), batch
                )
                if committed is not None:
                    self._publish(batch)
                    batch = []
                    self._track_commit(committed)
                elif len(batch) >= _PUBLISH_BATCH:
                    self._publish(batch)
                    batch = []
            now = time.monotonic()
            self._collect_acks(translator.in_transaction or bool(batch))
            if reply_requested or now >= next_status:
                replication.send_status(
                    self.stats.received_lsn, self.stats.confirmed_lsn, reply=False
                )
                reply_requested = False
                next_status = now + self.source.status_interval_s
            if now >= next_heartbeat:
                self._publish([self._heartbeat()])
                next_heartbeat = now + self.source.heartbeat_interval_s
            if now >= next_progress:
                self._log_progress(now)
                next_progress = now + _PROGRESS_LOG_INTERVAL_S
        self._shutdown(replication, batch, translator.in_transaction)

    def _shutdown(
        self, replication: ReplicationConnection, batch: list[ChangeEvent], in_tx: bool
    ) -> None:
        # Publish what was read, wait for the sink, then confirm: a clean stop re-sends nothing.
        self._publish(batch)
        try:
            self._sink.flush(_SHUTDOWN_FLUSH_TIMEOUT_S)
        finally:
            self._collect_acks(in_tx)
            replication.send_status(self.stats.received_lsn, self.stats.confirmed_lsn)
            self._log.info("cdc.stopped", confirmed_lsn=format_lsn(self.stats.confirmed_lsn))

    def _publish(self, events: Sequence[ChangeEvent]) -> None:
        if events:
            events = [self._within_limit(event) for event in events]
            self.stats.events_published = self._sink.publish(events)
            self.stats.count_topics([e.topic for e in events])
            for event in events:
                # Keys and positions only (no values): the first line of a change's trail.
                self._log.debug("cdc.event", topic=event.topic, key=event.key, lsn=event.lsn)

    def _within_limit(self, event: ChangeEvent) -> ChangeEvent:
        fitted, size = fit_event(event, self.source.max_event_bytes)
        if fitted is not event:
            # Keys and sizes only: the row's values may be personal data.
            self._log.warning(
                "cdc.event_oversized",
                topic=event.topic,
                key=event.key,
                lsn=format_lsn(event.lsn),
                bytes=size,
                limit=self.source.max_event_bytes,
                published="a marker (the engine dead-letters it)"
                if is_marker(fitted)
                else "without its before image",
            )
        return fitted

    def _track_commit(self, committed: CommittedTransaction) -> None:
        self._unconfirmed.append(
            (self.stats.events_published, committed.end_lsn, committed.commit_time_us)
        )

    def _collect_acks(self, busy: bool) -> None:
        acknowledged = self._sink.acknowledged()
        self.stats.events_acknowledged = acknowledged
        self._watch_sink(acknowledged)
        confirmed = self.stats.confirmed_lsn
        last_commit_us = 0
        while self._unconfirmed and self._unconfirmed[0][0] <= acknowledged:
            _, end_lsn, last_commit_us = self._unconfirmed.popleft()
            confirmed = max(confirmed, end_lsn)
        if last_commit_us:
            self.stats.slot_lag_ms = time.time() * 1000 - last_commit_us / 1000
        if not self._unconfirmed and not busy and acknowledged >= self.stats.events_published:
            # Nothing of ours is in flight: everything the server sent before its WAL end has been
            # handled, so the slot may move past WAL that only other tables wrote (idle slot).
            confirmed = max(confirmed, self.stats.server_wal_end)
        self.stats.confirmed_lsn = confirmed

    def _watch_sink(self, acknowledged: int) -> None:
        """Warn while the sink holds events it does not acknowledge; say when it recovers."""
        now = time.monotonic()
        waiting = self.stats.events_published - acknowledged
        if waiting <= 0 or acknowledged != self._ack_seen[0]:
            if self._stall_reported_at is not None:
                self._log.info(
                    "cdc.sink_recovered", waited_s=round(now - self._ack_seen[1], 1),
                    acknowledged=acknowledged,
                )
                self._stall_reported_at = None
            self._ack_seen = (acknowledged, now)
            return
        stalled_s = now - self._ack_seen[1]
        last = self._stall_reported_at
        if stalled_s >= _SINK_STALL_WARN_S and (last is None or now - last >= _SINK_STALL_WARN_S):
            self._log.warning(
                "cdc.sink_stalled",
                unacknowledged=waiting,
                stalled_s=round(stalled_s, 1),
                sink=type(self._sink).__name__,
                note="the broker (or, embedded, the store) is not acknowledging; events are kept "
                "and the slot is not confirmed past them",
            )
            self._stall_reported_at = now

    def _shape_for(self, relation: Relation) -> TableShape | None:
        if TableName(relation.schema, relation.name) not in self._tables:
            return None
        assert self._catalog is not None
        current = catalog.load_table_shape(self._catalog, relation.oid)
        by_name = {c.name: c for c in current.columns}
        # The Relation message describes the tuples that follow; the catalog only adds what the
        # message lacks (primary-key membership, NOT NULL), matched by column name.
        columns = tuple(
            Column(
                name=rc.name,
                type_oid=rc.type_oid,
                type_modifier=rc.type_modifier,
                part_of_key=by_name[rc.name].part_of_key if rc.name in by_name else False,
                optional=by_name[rc.name].optional if rc.name in by_name else True,
            )
            for rc in relation.columns
        )
        types = dict(current.types)
        missing = {c.type_oid for c in columns} - types.keys()
        if missing:
            types.update(catalog.resolve_types(self._catalog, missing))
        self._log.info(
            "cdc.table_shape",
            table=f"{relation.schema}.{relation.name}",
            columns=[c.name for c in columns],
        )
        return TableShape(relation.schema, relation.name, columns, types)

    def _heartbeat(self) -> ChangeEvent:
        return ChangeEvent(
            topic=heartbeat_topic(self.source.name),
            key={"serverName": self.source.name},
            value={"ts_ms": int(time.time() * 1000)},
            key_schema=_HEARTBEAT_KEY_SCHEMA,
            value_schema=_HEARTBEAT_VALUE_SCHEMA,
        )

    def _log_progress(self, now: float) -> None:
        self.stats.sample_rate(now)
        snap = self.stats.snapshot()
        self._log.info(
            "cdc.progress",
            events=snap.events_published,
            events_per_s=round(snap.events_per_second, 1),
            received_lsn=format_lsn(snap.received_lsn),
            confirmed_lsn=format_lsn(snap.confirmed_lsn),
            slot_lag_bytes=snap.slot_lag_bytes,
            slot_lag_ms=round(snap.slot_lag_ms, 1),
        )


def _has_rows(conn: psycopg.Connection[Any], shape: TableShape) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
        sql.Identifier(shape.schema, shape.name)
    )
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _with_position(
    batches: Iterator[list[tuple[ColumnValue, ...]]],
) -> Iterator[tuple[tuple[ColumnValue, ...], bool, bool]]:
    """Yield each row with (first in table, last in table), looking one row ahead."""
    previous: tuple[ColumnValue, ...] | None = None
    first = True
    for batch in batches:
        for row in batch:
            if previous is not None:
                yield previous, first, False
                first = False
            previous = row
    if previous is not None:
        yield previous, first, True


def _snapshot_marker(
    first_overall: bool, last_overall: bool, first_in_table: bool, last_in_table: bool
) -> SnapshotMarker:
    # "last" wins over "first" (as in Debezium): consumers watch for it to know the snapshot ended.
    if last_overall:
        return "last"
    if first_overall:
        return "first"
    if last_in_table:
        return "last_in_data_collection"
    if first_in_table:
        return "first_in_data_collection"
    return "true"


_HEARTBEAT_KEY_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [{"type": "string", "optional": False, "field": "serverName"}],
    "optional": False,
    "name": "io.debezium.connector.common.ServerNameKey",
}
_HEARTBEAT_VALUE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [{"type": "int64", "optional": False, "field": "ts_ms"}],
    "optional": False,
    "name": "io.debezium.connector.common.Heartbeat",
}

__all__ = ["Connector", "SourceError", "heartbeat_topic", "table_topic"]
