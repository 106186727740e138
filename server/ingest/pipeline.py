"""One batch of change events → one store transaction.

Whatever the transport (Kafka partitions or the embedded in-memory hand-over), a batch is decoded,
mapped and applied, and its stream positions are written in the same transaction as its effects:
after a crash the store says exactly which events it has, and a redelivered event changes nothing.
An event that cannot be decoded or mapped is kept as a dead letter, with the reason, in that same
transaction; the batch goes on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from unified_profile.cdc.envelope import DecodedEvent, decode_event, encode_decoded
from unified_profile.cdc.errors import EnvelopeError

from .. import metrics
from ..engine.mapping import MappingError
from ..engine.records import SourceRecord
from ..store.profile_store import ChangeRow, ProfileStore, StoreBatch, StoreError
from .applier import IncomingRecord, ProfileApplier

log = structlog.get_logger(__name__)


class EventRejected(Exception):
    """An event that cannot become a record image: it is kept as a dead letter with ``reason``.

    Attributes:
        reason: Why, with the rejected value: stored with the dead letter, for whoever fixes it.
        loggable: Why, without values that may be personal data: what the log says.
        missing_column: (source, table, column) when the event lacks a mapped column: the
            source's schema changed under the mapping.
    """

    def __init__(
        self,
        reason: str,
        loggable: str | None = None,
        missing_column: tuple[str, str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.loggable = reason if loggable is None else loggable
        self.missing_column = missing_column


class MappingFailed(Exception):
    """An event that decoded but cannot become a source record (the message says why).

    Attributes:
        loggable: The message without the rejected value (for logs).
    """

    def __init__(self, message: str, loggable: str | None = None) -> None:
        super().__init__(message)
        self.loggable = message if loggable is None else loggable


@dataclass(frozen=True, slots=True)
class TableTruncated:
    """A truncate: every live record of the table is deleted at this position."""

    source: str
    table: str
    position: int
    commit_time_us: int


class EventMapper(Protocol):
    """Turns a decoded change event into a source record (``None``: nothing to apply)."""

    def map_event(self, event: DecodedEvent) -> SourceRecord | TableTruncated | None:
        """Map one event; raise :class:`MappingFailed` (or a subclass) when it cannot be mapped."""
        ...


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event as a transport delivers it.

    Attributes:
        stream: Where positions are counted: ``kafka:<topic>:<partition>`` or ``source:<name>``.
        position: The event's position in its stream (Kafka offset, or the source LSN).
        topic: The topic (or ``<prefix>.<schema>.<table>`` for the embedded transport).
        key: The raw record key (Kafka), if the event is not decoded yet.
        value: The raw record value (Kafka), if the event is not decoded yet.
        decoded: The event already decoded (embedded transport).
    """

    stream: str
    position: int
    topic: str
    key: bytes | None = None
    value: bytes | None = None
    decoded: DecodedEvent | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one applied batch did."""

    events: int
    records: int
    dead_letters: int
    changes: list[ChangeRow] = field(default_factory=list)
    head: int = 0


class IngestPipeline:
    """Applies batches of stream events to the profile store.

    Args:
        store: The profile store.
        mapper: Decoded event → source record.
        applier: Recomputes profiles inside the batch's transaction.
        consumer: The name positions are stored under (the Kafka group id, or ``embedded``).
    """

    def __init__(
        self, store: ProfileStore, mapper: EventMapper, applier: ProfileApplier, consumer: str
    ) -> None:
        self._store = store
        self._mapper = mapper
        self._applier = applier
        self.consumer = consumer
        # Mapped columns found missing, reported once each: every later event of the table
        # fails the same way, and its dead-letter lines already say so one by one.
        self._missing_reported: set[tuple[str, str, str]] = set()

    def apply(self, events: Sequence[StreamEvent]) -> BatchResult:
        """Decode, map and apply ``events`` in one transaction (retried on transient failures).

        Raises:
            StoreError: The store kept failing; nothing of the batch was committed.
        """
        started = time.perf_counter()
        applied: Counter[tuple[str, str]] = Counter()
        incoming: list[IncomingRecord] = []
        truncates: list[tuple[TableTruncated, dict[str, object]]] = []
        dead: list[tuple[StreamEvent, str]] = []
        positions: dict[str, int] = {}
        for event in events:
            positions[event.stream] = max(positions.get(event.stream, -1), event.position)
            try:
                record, cause = self.map_event(event)
            except EventRejected as exc:
                self._dead_letter(dead, event, exc)
                continue
            applied[(str(cause["source"]), str(cause["table"]))] += 1
            if isinstance(record, TableTruncated):
                truncates.append((record, cause))
            elif record is not None:
                incoming.append(IncomingRecord(record, cause))
        for attempt in Retrying(
            retry=retry_if_exception_type(StoreError),
            wait=wait_exponential_jitter(multiplier=0.1, max=5),
            stop=stop_after_attempt(5),
            reraise=True,
        ):
            with attempt, self._store.batch() as batch:
                # Deferred: it goes to the store with the applier's writes.
                batch.save_positions(self.consumer, positions)
                changes = self._applier.apply(batch, _expand(batch, truncates) + incoming)
                for event, reason in dead:
                    key, value = _record_bytes(event)
                    batch.add_dead_letter(
                        self.consumer, event.stream, event.position, event.topic, key, value, reason
                    )
                head = batch.head
        _record_metrics(applied, dead, changes, head, len(events), time.perf_counter() - started)
        _log_changes(changes, head)
        return BatchResult(len(events), len(incoming), len(dead), changes, head)

    def map_event(
        self, event: StreamEvent
    ) -> tuple[SourceRecord | TableTruncated | None, dict[str, object]]:
        """Decode and map one event: its record image (or truncate) and its cause.

        Raises:
            EventRejected: It cannot be decoded or mapped (the reason says why).
        """
        try:
            decoded = event.decoded or decode_event(event.topic, event.key, event.value)
            record = self._mapper.map_event(decoded)
            if isinstance(record, SourceRecord):
                _check_storable(record)
            return record, _cause(decoded, event)
        except MappingFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, MappingError) and cause.missing_column and cause.column:
                fix = f"; fix: {missing_column_fix(cause.source, cause.table, cause.column)}"
                raise EventRejected(
                    f"{exc}{fix}", f"{exc.loggable}{fix}", (cause.source, cause.table, cause.column)
                ) from exc
            raise EventRejected(str(exc), exc.loggable) from exc
        except EnvelopeError as exc:
            raise EventRejected(str(exc)) from exc
        except Exception as exc:
            # A shape the decoder let through (a text LSN, an object where a number belongs):
            # still this event's problem only, so it is kept with the reason, not raised.
            raise EventRejected(
                f"malformed event: {type(exc).__name__}: {exc}",
                f"malformed event: {type(exc).__name__}",
            ) from exc

    def apply_records(
        self,
        incoming: list[IncomingRecord],
        truncates: list[tuple[TableTruncated, dict[str, object]]],
        also: Callable[[StoreBatch], None],
    ) -> list[ChangeRow]:
        """Apply mapped records in one transaction with ``also`` (dead-letter replay)."""
        with self._store.batch() as batch:
            changes = self._applier.apply(batch, _expand(batch, truncates) + incoming)
            also(batch)
        return changes

    def _dead_letter(
        self, dead: list[tuple[StreamEvent, str]], event: StreamEvent, rejected: EventRejected
    ) -> None:
        dead.append((event, rejected.reason))
        missing = rejected.missing_column
        if missing is not None and missing not in self._missing_reported:
            self._missing_reported.add(missing)
            source, table, column = missing
            log.error(
                "ingest.mapped_column_missing",
                source=source,
                table=table,
                column=column,
                topic=event.topic,
                note="this table's changes are kept as dead letters, not applied, until the "
                "mapping is fixed; other tables go on",
                fix=missing_column_fix(source, table, column),
            )
        # The stored reason names the rejected value; the log line does not (personal data).
        log.warning(
            "ingest.dead_letter",
            topic=event.topic,
            stream=event.stream,
            position=event.position,
            reason=rejected.loggable,
        )

    def positions(self) -> dict[str, int]:
        """The last applied position of each stream, as committed in the store."""
        return self._store.load_positions(self.consumer)


def missing_column_fix(source: str, table: str, column: str) -> str:
    """What the operator does when a mapped column is gone from the source (renamed, dropped)."""
    return (
        f"in the config's [[sources.tables]] entry for {table} (source {source!r}), map the "
        f"column's new name or remove the fields that use {column!r}; restart the service; then "
        "run `unified-profile dead-letters replay --config <file> --all` to apply the held-back "
        "changes, and `unified-profile reconcile --config <file>` (with `--repair` if it reports "
        "stale records)"
    )


def _record_bytes(event: StreamEvent) -> tuple[bytes | None, bytes | None]:
    """What a dead letter keeps: the record as consumed, or an in-memory event as JSON."""
    if event.value is None and event.decoded is not None:
        return encode_decoded(event.decoded)
    return event.key, event.value


def _record_metrics(
    applied: Counter[tuple[str, str]],
    dead: list[tuple[StreamEvent, str]],
    changes: list[ChangeRow],
    head: int,
    events: int,
    seconds: float,
) -> None:
    for (source, table), count in applied.items():
        metrics.EVENTS_APPLIED.labels(source, table).inc(count)
    for event, _ in dead:
        metrics.DEAD_LETTERS.labels(event.topic).inc()
    for kind, count in Counter(c.kind for c in changes).items():
        metrics.PROFILE_CHANGES.labels(kind).inc(count)
    metrics.APPLY_BATCH_EVENTS.observe(events)
    metrics.APPLY_SECONDS.observe(seconds)
    metrics.CHANGE_LOG_HEAD.set(head)


def _log_changes(changes: list[ChangeRow], head: int) -> None:
    """At debug level, one line per profile change: where it came from, where it went.

    With the connector's ``cdc.event`` lines this follows one change end to end: source, table,
    key and LSN; the stream (``kafka:<topic>:<partition>`` or ``source:<name>``) and position
    (offset or LSN) it was applied from; the profile and its change-log sequence. Keys and ids
    only, never field values: nothing personal even at debug level.
    """
    first = head - len(changes) + 1
    # Resolve the (lazily configured) logger once per batch rather than once per line.
    debug = log.debug
    for sequence, change in enumerate(changes, start=first):
        for cause in change.cause:
            debug(
                "ingest.change_applied",
                sequence=sequence,
                profile_id=change.profile_id,
                kind=change.kind,
                source=cause.get("source"),
                table=cause.get("table"),
                key=cause.get("key"),
                lsn=cause.get("lsn"),
                stream=cause.get("stream"),
                position=cause.get("position"),
            )


def _check_storable(record: SourceRecord) -> None:
    """Refuse what PostgreSQL cannot store, before it fails the whole batch's transaction."""
    for path, value in record.fields.items():
        if _has_nul(value):
            raise MappingFailed(
                f"{record.key}: {path} contains a NUL character, which PostgreSQL cannot store"
            )
    for identifier in record.identifiers:
        if "\x00" in identifier.value:
            raise MappingFailed(f"{record.key}: a {identifier.type} identifier contains a NUL")


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _expand(
    batch: StoreBatch, truncates: list[tuple[TableTruncated, dict[str, object]]]
) -> list[IncomingRecord]:
    """Deleted images, at the truncate's position, of every live record of truncated tables."""
    deleted: list[IncomingRecord] = []
    for truncate, cause in truncates:
        for key in batch.live_records_of_table(truncate.source, truncate.table):
            record = SourceRecord(
                key,
                commit_time_us=truncate.commit_time_us,
                position=truncate.position,
                deleted=True,
            )
            deleted.append(IncomingRecord(record, cause))
    return deleted


def _cause(decoded: DecodedEvent, event: StreamEvent) -> dict[str, object]:
    source = decoded.source
    return {
        "source": source.get("name"),
        "table": f"{source.get('schema')}.{source.get('table')}",
        "key": decoded.key,
        "op": decoded.op,
        "lsn": source.get("lsn"),
        "commit_time_us": source.get("ts_us") or (source.get("ts_ms") or 0) * 1000,
        "stream": event.stream,
        "position": event.position,
    }
