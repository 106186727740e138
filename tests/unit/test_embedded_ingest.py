"""Unit tests for EmbeddedIngest: how one engine thread takes from every source's sink.

The pipeline is a recording stand-in (what it does with a batch is tested against real stores
elsewhere); what matters here is which events make a batch and when they are acknowledged.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from unified_profile.cdc.connector import heartbeat_topic
from unified_profile.cdc.envelope import ChangeEvent
from unified_profile.cdc.sink import SinkGroup
from unified_profile.server.ingest.consumers import EmbeddedIngest
from unified_profile.server.ingest.pipeline import BatchResult, IngestPipeline, StreamEvent


def tombstones(source: str, first: int, count: int) -> list[ChangeEvent]:
    """Row events (tombstones need no envelope) with positions ``first``…"""
    return [
        ChangeEvent(topic=f"{source}.public.t", key={"id": n}, value=None, lsn=n)
        for n in range(first, first + count)
    ]


class RecordingPipeline:
    """Keeps every batch; optionally checks something at apply time or fails."""

    def __init__(self, during_apply: Any = None, error: Exception | None = None) -> None:
        self.batches: list[list[StreamEvent]] = []
        self._during_apply = during_apply
        self._error = error

    def apply(self, batch: list[StreamEvent]) -> BatchResult:
        if self._during_apply is not None:
            self._during_apply()
        if self._error is not None:
            raise self._error
        self.batches.append(list(batch))
        return BatchResult(events=len(batch), records=len(batch), dead_letters=0)


def drain(group: SinkGroup, pipeline: RecordingPipeline, batch_events: int) -> None:
    """Run the ingest until every sink is drained (stop is set from the start)."""
    stop = threading.Event()
    stop.set()
    EmbeddedIngest(group, cast(IngestPipeline, pipeline), batch_events).run(stop)


def test_a_busy_source_does_not_starve_a_quiet_one() -> None:
    group = SinkGroup()
    crm, loyalty = group.add("crm"), group.add("loyalty")
    crm.publish(tombstones("crm", 1, 5_000))
    loyalty.publish(tombstones("loyalty", 1, 10))
    pipeline = RecordingPipeline()

    drain(group, pipeline, batch_events=100)

    first = pipeline.batches[0]
    assert len(first) == 100
    assert [e.position for e in first if e.stream == "source:loyalty"] == list(range(1, 11))
    assert [e.position for e in first if e.stream == "source:crm"] == list(range(1, 91))
    # Every event applied once, in its source's order; everything acknowledged.
    applied = [e for batch in pipeline.batches for e in batch]
    assert [e.position for e in applied if e.stream == "source:crm"] == list(range(1, 5_001))
    assert max(len(b) for b in pipeline.batches) == 100
    assert crm.acknowledged() == 5_000
    assert loyalty.acknowledged() == 10


def test_events_are_acknowledged_only_after_their_batch_is_applied() -> None:
    group = SinkGroup()
    crm, loyalty = group.add("crm"), group.add("loyalty")
    crm.publish(tombstones("crm", 1, 3))
    loyalty.publish(tombstones("loyalty", 1, 2))
    seen: list[tuple[int, int]] = []
    pipeline = RecordingPipeline(
        during_apply=lambda: seen.append((crm.acknowledged(), loyalty.acknowledged()))
    )

    drain(group, pipeline, batch_events=100)

    assert seen == [(0, 0)]
    assert (crm.acknowledged(), loyalty.acknowledged()) == (3, 2)


def test_a_batch_that_fails_acknowledges_nothing() -> None:
    group = SinkGroup()
    crm, loyalty = group.add("crm"), group.add("loyalty")
    crm.publish(tombstones("crm", 1, 3))
    loyalty.publish(tombstones("loyalty", 1, 2))

    with pytest.raises(ValueError, match="a bug"):
        drain(group, RecordingPipeline(error=ValueError("a bug")), batch_events=100)

    assert (crm.acknowledged(), loyalty.acknowledged()) == (0, 0)


def test_heartbeats_are_acknowledged_but_not_applied() -> None:
    group = SinkGroup()
    crm, loyalty = group.add("crm"), group.add("loyalty")
    crm.publish(
        [ChangeEvent(topic=heartbeat_topic("crm"), key={"serverName": "crm"}, value={}, lsn=7)]
    )
    loyalty.publish(tombstones("loyalty", 1, 2))
    pipeline = RecordingPipeline()

    drain(group, pipeline, batch_events=100)

    assert [[e.stream for e in b] for b in pipeline.batches] == [["source:loyalty"] * 2]
    assert (crm.acknowledged(), loyalty.acknowledged()) == (1, 2)


def test_heartbeats_alone_are_acknowledged_without_a_store_transaction() -> None:
    group = SinkGroup()
    crm = group.add("crm")
    group.add("loyalty")
    crm.publish(
        [ChangeEvent(topic=heartbeat_topic("crm"), key={"serverName": "crm"}, value={}, lsn=7)]
    )
    pipeline = RecordingPipeline(error=AssertionError("no batch should be applied"))

    drain(group, pipeline, batch_events=100)

    assert crm.acknowledged() == 1
