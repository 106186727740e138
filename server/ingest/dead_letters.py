"""Listing dead letters and replaying them once the mapping (or the data) is fixed.

A replayed event goes through the same decode and map as ingest and is applied in one
transaction that also removes its dead letter, so it is either applied and gone or still there.
An event that fails again stays, and the report says why. Replaying never reorders a record's
history: the image carries its source position, so an event older than what the store holds for
that record changes nothing (and its dead letter is removed: it is no longer needed).

A marker the connector published instead of a too-large event holds no row to replay: given the
capture config, replay reads the row again from its source and applies it if it is now within
``max_event_bytes`` (a row that no longer exists is applied as deleted). The row as read now is at
least as new as anything the store holds for it, which may include later changes applied while the
marker waited; so, as ``reconcile --repair`` does, it is applied as a forced image at the stored
position (or the marker's, if later), and changes still in flight apply over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import structlog

from unified_profile.cdc.config import CaptureConfig
from unified_profile.cdc.envelope import DecodedEvent, decode_event, decoded_from
from unified_profile.cdc.errors import CaptureError, EnvelopeError
from unified_profile.cdc.identifiers import TableName
from unified_profile.cdc.oversized import fit_event, is_marker
from unified_profile.cdc.postgres.reread import reread_row

from ..engine.records import SourceRecord
from ..store.profile_store import ProfileStore
from ..store.store_batch import StoreBatch
from .applier import IncomingRecord
from .mapper import oversized_reason
from .pipeline import EventRejected, IngestPipeline, StreamEvent, TableTruncated

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as an operator lists it (its payload is not shown: it may be personal)."""

    id: int
    recorded_at: str
    consumer: str
    stream: str
    position: int
    topic: str
    reason: str
    replayable: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> DeadLetter:
        """From a ``up_dead_letters`` row."""
        return cls(
            id=int(row["id"]),
            recorded_at=row["recorded_at"].isoformat() if row["recorded_at"] else "",
            consumer=row["consumer"],
            stream=row["stream"],
            position=int(row["position"]),
            topic=row["topic"],
            reason=row["reason"],
            replayable=row["key"] is not None or row["value"] is not None,
        )


@dataclass
class ReplayReport:
    """What a replay did.

    Attributes:
        applied: Ids applied (or found superseded) and removed.
        failed: Id → why it still cannot be applied (kept).
        profile_changes: Change-log entries the replay appended.
    """

    applied: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    profile_changes: int = 0


def list_dead_letters(store: ProfileStore, limit: int | None = None) -> list[DeadLetter]:
    """The oldest dead letters first."""
    return [DeadLetter.of(row) for row in store.dead_letters(limit=limit)]


def replay(
    store: ProfileStore,
    pipeline: IngestPipeline,
    ids: Collection[int] | None = None,
    capture: CaptureConfig | None = None,
) -> ReplayReport:
    """Replay these dead letters (``None``: all of them).

    ``capture`` lets markers of too-large events be replayed by reading their rows again.
    """
    report = ReplayReport()
    incoming: list[IncomingRecord] = []
    truncates: list[tuple[TableTruncated, dict[str, object]]] = []
    rows = store.dead_letters(ids=ids)
    missing = set(ids or ()) - {int(row["id"]) for row in rows}
    for absent in sorted(missing):
        report.failed[absent] = "no dead letter with this id"
    for row in rows:
        letter_id = int(row["id"])
        if row["key"] is None and row["value"] is None:
            report.failed[letter_id] = "no record kept to replay"
            continue
        event = StreamEvent(
            row["stream"], int(row["position"]), row["topic"], row["key"], row["value"]
        )
        reread = False
        try:
            if capture is not None:
                event, reread = _current_row(capture, event)
            record, cause = pipeline.map_event(event)
        except EventRejected as exc:
            report.failed[letter_id] = exc.reason
            continue
        cause = {**cause, "replayed_dead_letter": letter_id}
        if isinstance(record, TableTruncated):
            truncates.append((record, cause))
        elif isinstance(record, SourceRecord) and reread:
            stored = store.records([record.key]).get(record.key)
            if stored is not None and stored.record.position > record.position:
                record = dataclasses.replace(record, position=stored.record.position)
            incoming.append(IncomingRecord(record, cause, force=True))
        elif isinstance(record, SourceRecord):
            incoming.append(IncomingRecord(record, cause))
        report.applied.append(letter_id)

    def remove(batch: StoreBatch) -> None:
        batch.delete_dead_letters(report.applied)

    if report.applied:
        report.profile_changes = len(pipeline.apply_records(incoming, truncates, remove))
    log.info(
        "dead_letters.replayed",
        applied=len(report.applied),
        failed=len(report.failed),
        profile_changes=report.profile_changes,
    )
    return report


def _current_row(capture: CaptureConfig, letter: StreamEvent) -> tuple[StreamEvent, bool]:
    """For a too-large event's marker, the row as its source holds it now (and ``True``);
    else ``letter`` (and ``False``).

    Raises:
        EventRejected: The row is still over the limit, or cannot be read.
    """
    try:
        marker = decode_event(letter.topic, letter.key, letter.value)
    except EnvelopeError:
        return letter, False  # mapping it says why, as ingest did
    if marker.oversized is None or marker.key is None:
        return letter, False
    name = str(marker.source.get("name"))
    table = TableName(str(marker.source.get("schema")), str(marker.source.get("table")))
    try:
        source = capture.source(name)
        current = reread_row(source, table, marker.key, marker.lsn or 0)
    except CaptureError as exc:
        raise EventRejected(f"could not read the row again from source {name!r}: {exc}") from exc
    if current is None:
        # Deleted since: the row's last image is a deleted one, at the marker's position.
        gone = DecodedEvent(letter.topic, marker.key, "d", None, None, marker.source, None)
        return StreamEvent(letter.stream, letter.position, letter.topic, decoded=gone), True
    fitted, _ = fit_event(current, source.max_event_bytes)
    if is_marker(fitted):
        raise EventRejected(oversized_reason(decoded_from(fitted)))
    row = StreamEvent(letter.stream, letter.position, letter.topic, decoded=decoded_from(fitted))
    return row, True
