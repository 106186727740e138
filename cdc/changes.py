"""From decoded pgoutput messages to Debezium change events (pure: no I/O, no clock).

The translator follows transactions (Begin … Commit), keeps one event builder per captured table and
replaces it whenever the server sends a new Relation message, so columns added, dropped or retyped
while the connector runs are encoded with the table's new shape from that point on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .envelope import ChangeEvent, SourceInfo, TableEventBuilder
from .model import (
    Begin,
    ColumnValue,
    Commit,
    Delete,
    Insert,
    PgOutputMessage,
    Relation,
    TableShape,
    Truncate,
    Update,
)
from .type_encoding import EncodingOptions

ShapeResolver = Callable[[Relation], TableShape | None]
"""Turns a Relation message into the table's shape, or ``None`` if the table is not captured."""


@dataclass(frozen=True, slots=True)
class TranslatorConfig:
    """How the events of one source look."""

    prefix: str
    database: str
    options: EncodingOptions = field(default_factory=EncodingOptions)
    tombstones_on_delete: bool = True
    provide_transaction_metadata: bool = False


@dataclass(slots=True)
class _Transaction:
    xid: int
    commit_time_us: int
    final_lsn: int
    total_order: int = 0
    per_table: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.xid}:{self.final_lsn}"


@dataclass(frozen=True, slots=True)
class CommittedTransaction:
    """Returned when a transaction ends: its end LSN may be confirmed once its events are acked."""

    end_lsn: int
    commit_time_us: int
    events: int


class ChangeTranslator:
    """Turns the pgoutput message stream of one source into change events."""

    def __init__(self, config: TranslatorConfig, resolve_shape: ShapeResolver) -> None:
        self._config = config
        self._resolve_shape = resolve_shape
        self._builders: dict[int, TableEventBuilder] = {}
        self._uncaptured: set[int] = set()
        self._tx: _Transaction | None = None
        self._last_commit_lsn: int | None = None
        self.transaction_topic = f"{config.prefix}.transaction"

    @property
    def in_transaction(self) -> bool:
        """Whether a Begin has been seen without its Commit."""
        return self._tx is not None

    def translate(
        self, message: PgOutputMessage, lsn: int, now_us: int, out: list[ChangeEvent]
    ) -> CommittedTransaction | None:
        """Append the events for one message to ``out``; return the transaction if it just ended.

        Args:
            message: The decoded pgoutput message.
            lsn: The WAL position of the message (XLogData ``data_start``).
            now_us: The current time (µs since 1970), for the envelope's ``ts_ms``.
            out: Where events are appended, in order.
        """
        if isinstance(message, Begin):
            self._tx = _Transaction(message.xid, message.commit_time_us, message.final_lsn)
            if self._config.provide_transaction_metadata:
                out.append(self._transaction_marker("BEGIN", message.commit_time_us))
        elif isinstance(message, Commit):
            return self._commit(message, out)
        elif isinstance(message, Relation):
            self._relation(message)
        elif isinstance(message, Insert):
            builder = self._builders.get(message.relation_oid)
            if builder is not None:
                after = builder.row(message.new)
                out.append(self._change(builder, "c", None, after, lsn, now_us))
        elif isinstance(message, Update):
            builder = self._builders.get(message.relation_oid)
            if builder is not None:
                self._update(builder, message, lsn, now_us, out)
        elif isinstance(message, Delete):
            builder = self._builders.get(message.relation_oid)
            if builder is not None:
                before = self._old_row(builder, message.old, message.old_kind)
                self._delete(builder, before, lsn, now_us, out)
        elif isinstance(message, Truncate):
            for oid in message.relation_oids:
                builder = self._builders.get(oid)
                if builder is not None:
                    out.append(builder.truncate(self._source(builder, lsn), now_us))
        # Origin, Type and logical messages carry nothing we publish.
        return None

    def _relation(self, message: Relation) -> None:
        shape = self._resolve_shape(message)
        if shape is None:
            self._builders.pop(message.oid, None)
            self._uncaptured.add(message.oid)
            return
        self._builders[message.oid] = TableEventBuilder(
            self._config.prefix, shape, self._config.options
        )

    def _update(
        self,
        builder: TableEventBuilder,
        message: Update,
        lsn: int,
        now_us: int,
        out: list[ChangeEvent],
    ) -> None:
        after = builder.row(message.new)
        before = (
            self._old_row(builder, message.old, message.old_kind)
            if message.old is not None
            else None
        )
        if before is not None and builder.key_of(before) != builder.key_of(after):
            # A primary-key change is a different row to consumers: Debezium emits a delete of
            # the old key (with its tombstone) and a create of the new one.
            self._delete(builder, before, lsn, now_us, out)
            out.append(self._change(builder, "c", None, after, lsn, now_us))
            return
        out.append(self._change(builder, "u", before, after, lsn, now_us))

    def _delete(
        self,
        builder: TableEventBuilder,
        before: dict[str, Any],
        lsn: int,
        now_us: int,
        out: list[ChangeEvent],
    ) -> None:
        event = self._change(builder, "d", before, None, lsn, now_us)
        out.append(event)
        if self._config.tombstones_on_delete:
            out.append(builder.tombstone(event))

    @staticmethod
    def _old_row(
        builder: TableEventBuilder, old: tuple[ColumnValue, ...], old_kind: str | None
    ) -> dict[str, Any]:
        return builder.row(old) if old_kind == "O" else builder.key_only_row(old)

    def _change(
        self,
        builder: TableEventBuilder,
        op: Any,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        lsn: int,
        now_us: int,
    ) -> ChangeEvent:
        transaction = None
        tx = self._tx
        if tx is not None:
            tx.total_order += 1
            name = f"{builder.shape.schema}.{builder.shape.name}"
            tx.per_table[name] = tx.per_table.get(name, 0) + 1
        if self._config.provide_transaction_metadata and tx is not None:
            transaction = {
                "id": tx.id,
                "total_order": tx.total_order,
                "data_collection_order": tx.per_table[name],
            }
        return builder.event(op, before, after, self._source(builder, lsn), now_us, transaction)

    def _source(self, builder: TableEventBuilder, lsn: int) -> SourceInfo:
        tx = self._tx
        return SourceInfo(
            name=self._config.prefix,
            db=self._config.database,
            schema=builder.shape.schema,
            table=builder.shape.name,
            ts_us=tx.commit_time_us if tx else 0,
            tx_id=tx.xid if tx else None,
            lsn=lsn,
            last_commit_lsn=self._last_commit_lsn,
        )

    def _commit(self, message: Commit, out: list[ChangeEvent]) -> CommittedTransaction:
        tx = self._tx
        if tx is not None and self._config.provide_transaction_metadata:
            out.append(self._transaction_marker("END", message.commit_time_us, tx))
        self._tx = None
        self._last_commit_lsn = message.commit_lsn
        return CommittedTransaction(
            message.end_lsn, message.commit_time_us, tx.total_order if tx else 0
        )

    def _transaction_marker(
        self, status: str, commit_time_us: int, tx: _Transaction | None = None
    ) -> ChangeEvent:
        current = tx or self._tx
        assert current is not None
        value: dict[str, Any] = {
            "status": status,
            "id": current.id,
            "event_count": current.total_order if status == "END" else None,
            "data_collections": (
                [{"data_collection": n, "event_count": c} for n, c in current.per_table.items()]
                if status == "END"
                else None
            ),
            "ts_ms": commit_time_us // 1000,
        }
        return ChangeEvent(
            topic=self.transaction_topic,
            key={"id": current.id},
            value=value,
            key_schema=_TX_KEY_SCHEMA,
            value_schema=_TX_VALUE_SCHEMA,
        )


_TX_KEY_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [{"type": "string", "optional": False, "field": "id"}],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataKey",
}
_TX_VALUE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "status"},
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": True, "field": "event_count"},
        {
            "type": "array",
            "items": {
                "type": "struct",
                "fields": [
                    {"type": "string", "optional": False, "field": "data_collection"},
                    {"type": "int64", "optional": False, "field": "event_count"},
                ],
                "optional": False,
            },
            "optional": True,
            "field": "data_collections",
        },
        {"type": "int64", "optional": False, "field": "ts_ms"},
    ],
    "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue",
}
