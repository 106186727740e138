"""The configured mapping as the pipeline's :class:`~.pipeline.EventMapper`."""

from __future__ import annotations

import json
from dataclasses import replace

from unified_profile.cdc.envelope import DecodedEvent
from unified_profile.cdc.lsn import format_lsn

from ..engine.mapping import MappingError
from ..engine.mapping_config import MappingConfig
from ..engine.records import SourceRecord
from .pipeline import MappingFailed, TableTruncated


class ConfiguredMapper:
    """Maps events of the configured tables; anything else is a dead letter."""

    def __init__(self, mapping: MappingConfig) -> None:
        self._mapping = mapping

    def map_event(self, event: DecodedEvent) -> SourceRecord | TableTruncated | None:
        """The record image an event leaves behind (``None`` for a tombstone)."""
        if event.is_tombstone:
            return None  # the delete before it already removed the row
        if event.oversized is not None:
            raise MappingFailed(oversized_reason(event))
        found = self._mapping.for_topic(event.topic)
        if found is None:
            raise MappingFailed(
                f"{event.topic}: no [[sources.tables]] mapping for this topic's table"
            )
        source, table = found
        if event.op == "t":
            return TableTruncated(
                source,
                f"{event.source.get('schema')}.{event.source.get('table')}",
                event.lsn or 0,
                int(event.source.get("ts_us") or 0),
            )
        try:
            record = table.map_event(source, event)
        except MappingError as exc:
            raise MappingFailed(str(exc), loggable=exc.without_value) from exc
        if event.op == "r" and record.position > 0:
            # A snapshot read carries the slot's consistent point C as its LSN (as Debezium's
            # does), but it shows the row as of *before* C: the first change streamed after the
            # snapshot may be the WAL record at exactly C. Ranked at C, the read would make that
            # change look like a redelivery and it would be skipped for good; ranked just below
            # C, every streamed change supersedes it. (WAL records start 8-byte aligned, so no
            # change sits at C - 1.)
            record = replace(record, position=record.position - 1)
        return record


def oversized_reason(event: DecodedEvent) -> str:
    """Why a marker for a too-large event is a dead letter, and how to get its row applied."""
    assert event.oversized is not None
    source = event.source.get("name")
    table = f"{event.source.get('schema')}.{event.source.get('table')}"
    key = json.dumps(event.key, sort_keys=True, separators=(",", ":"))
    return (
        f"source {source!r} table {table} key {key} at LSN {format_lsn(event.lsn or 0)}: the "
        f"change event is {event.oversized.bytes:,} bytes, over max_event_bytes = "
        f"{event.oversized.limit:,}, so the connector sent a marker in its place; raise "
        f"max_event_bytes for source {source!r} (with Kafka, also the broker's message.max.bytes "
        "or the topic's max.message.bytes), then run `unified-profile dead-letters replay`: it "
        "reads the row again from the source"
    )
