"""The two ways events reach the pipeline: a Kafka consumer group, or in-process from a connector.

Both loops do the same three steps per batch — take events, apply them in one store transaction,
then acknowledge — and differ only in where events come from and what acknowledging means:
committing Kafka offsets (after the store commit; the store's positions win on reassignment), or
telling the in-process connector it may confirm the source LSN to PostgreSQL.
"""

from __future__ import annotations

import threading
import time

import structlog

from unified_profile.cdc.connector import heartbeat_topic
from unified_profile.cdc.envelope import ChangeEvent, decoded_from
from unified_profile.cdc.errors import EnvelopeError
from unified_profile.cdc.kafka import KafkaEventSource, partition_stream
from unified_profile.cdc.sink import SinkGroup

from .. import metrics
from ..retry import retry_transient
from .pipeline import BatchResult, IngestPipeline, StreamEvent

log = structlog.get_logger(__name__)

_PROGRESS_LOG_INTERVAL_S = 10.0


class KafkaIngest:
    """Runs the pipeline over a Kafka consumer group until stopped."""

    def __init__(
        self, source: KafkaEventSource, pipeline: IngestPipeline, batch_events: int = 2_000
    ) -> None:
        self._source = source
        self._pipeline = pipeline
        self._batch_events = batch_events
        self.applied_events = 0

    def run(self, stop: threading.Event) -> None:
        """Poll, apply, commit; return when ``stop`` is set (after the batch in flight)."""
        progress = _Progress("kafka")
        try:
            while not stop.is_set():
                records = self._source.poll(self._batch_events, timeout_s=0.2)
                if not records:
                    continue
                result = self._pipeline.apply(
                    [
                        StreamEvent(
                            stream=partition_stream(r.topic, r.partition),
                            position=r.offset,
                            topic=r.topic,
                            key=r.key,
                            value=r.value,
                        )
                        for r in records
                    ]
                )
                self._source.commit(records)
                self.applied_events += result.events
                progress.record(result)
                for (topic, partition), lag in self._source.lag().items():
                    metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        finally:
            self._source.close()


class EmbeddedIngest:
    """Applies what the in-process connectors publish; acknowledges after each store commit.

    One engine thread serves every source: a batch takes events from each source's sink (each
    gets an equal share of ``batch_events`` first, so a busy source cannot starve a quiet one)
    and applies them in one store transaction. A thread per source would take turns on the
    change-log head lock, each waiting out the other's whole transaction, and pay a
    transaction's fixed cost once per source.

    Args:
        sinks: The connectors' in-memory sinks, by source name (positions are stored as
            ``source:<name>``).
        pipeline: The ingest pipeline.
    """

    def __init__(
        self, sinks: SinkGroup, pipeline: IngestPipeline, batch_events: int = 2_000
    ) -> None:
        self._group = sinks
        self._pipeline = pipeline
        self._batch_events = batch_events
        self._heartbeats = {name: heartbeat_topic(name) for name in sinks.sinks}
        self.applied_events = 0

    def run(self, stop: threading.Event) -> None:
        """Take, apply, acknowledge; return when ``stop`` is set and every sink is drained."""
        progress = _Progress("embedded")
        while True:
            taken = self._take(timeout=0.2)
            if not taken:
                if stop.is_set():
                    return
                continue
            batch = [
                event
                for name, (events, _) in taken.items()
                for event in self._stream_events(name, events)
            ]
            if batch:
                result = self._apply_until_committed(batch, stop)
                self.applied_events += result.events
                progress.record(result)
            # Only now may the connectors confirm these LSNs to PostgreSQL. Heartbeats and
            # transaction markers alone store nothing, so they need no store transaction.
            for name, (_, sequence) in taken.items():
                self._group.sinks[name].acknowledge(sequence)

    def _take(self, timeout: float) -> dict[str, tuple[list[ChangeEvent], int]]:
        """Up to ``batch_events`` events over all sinks, in order per sink, with the sequence
        to acknowledge for each sink that had any; empty if none came within ``timeout``."""
        if not self._group.wait(timeout):
            return {}
        sinks = self._group.sinks
        share = max(1, self._batch_events // len(sinks))
        taken: dict[str, tuple[list[ChangeEvent], int]] = {}
        room = self._batch_events
        # An equal share each first, then what is left to whoever has more.
        for limit in (share, None):
            for name, sink in sinks.items():
                if room <= 0:
                    break
                events, sequence = sink.take(room if limit is None else min(limit, room), 0)
                if events:
                    earlier = taken.get(name, ([], 0))[0]
                    taken[name] = (earlier + events, sequence)
                    room -= len(events)
        return taken

    def _stream_events(self, name: str, events: list[ChangeEvent]) -> list[StreamEvent]:
        """A source's events as the pipeline takes them (heartbeats and markers left out)."""
        stream = f"source:{name}"
        batch: list[StreamEvent] = []
        for event in events:
            if event.topic == self._heartbeats[name]:
                continue
            try:
                decoded = decoded_from(event)
            except EnvelopeError:
                continue  # transaction markers: nothing to apply
            batch.append(StreamEvent(stream, event.lsn, event.topic, decoded=decoded))
        return batch

    def _apply_until_committed(
        self, batch: list[StreamEvent], stop: threading.Event
    ) -> BatchResult:
        """Apply ``batch``, retrying a store outage until it commits or the service stops.

        The events are out of the sinks once taken, so giving up on them would lose them until
        the next start. If the service stops first, they are never acknowledged: the connectors
        do not confirm them and the sources send them again.
        """
        applied: list[BatchResult] = []
        retry_transient(
            stop, "engine.embedded", lambda: applied.append(self._pipeline.apply(batch))
        )
        return applied[0]


class _Progress:
    """Logs applied events and change-log head every few seconds."""

    def __init__(self, stream: str) -> None:
        self._stream = stream
        self._events = 0
        self._changes = 0
        self._dead = 0
        self._next = time.monotonic() + _PROGRESS_LOG_INTERVAL_S

    def record(self, result: BatchResult) -> None:
        self._events += result.events
        self._changes += len(result.changes)
        self._dead += result.dead_letters
        now = time.monotonic()
        if now >= self._next:
            log.info(
                "ingest.progress",
                stream=self._stream,
                events=self._events,
                profile_changes=self._changes,
                dead_letters=self._dead,
                head=result.head,
            )
            self._next = now + _PROGRESS_LOG_INTERVAL_S
