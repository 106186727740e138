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
from unified_profile.cdc.envelope import decoded_from
from unified_profile.cdc.errors import EnvelopeError
from unified_profile.cdc.kafka import KafkaEventSource, partition_stream
from unified_profile.cdc.sink import InMemorySink

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
    """Applies what an in-process connector publishes; acknowledges after each store commit.

    Args:
        sink: The connector's in-memory sink.
        pipeline: The ingest pipeline.
        source_name: The connector's source (positions are stored as ``source:<name>``).
    """

    def __init__(
        self,
        sink: InMemorySink,
        pipeline: IngestPipeline,
        source_name: str,
        batch_events: int = 2_000,
    ) -> None:
        self._sink = sink
        self._pipeline = pipeline
        self._stream = f"source:{source_name}"
        self._heartbeats = heartbeat_topic(source_name)
        self._batch_events = batch_events
        self.applied_events = 0

    def run(self, stop: threading.Event) -> None:
        """Take, apply, acknowledge; return when ``stop`` is set and the queue is drained."""
        progress = _Progress(self._stream)
        while True:
            events, sequence = self._sink.take(self._batch_events, timeout=0.2)
            if not events:
                if stop.is_set():
                    return
                continue
            batch: list[StreamEvent] = []
            for event in events:
                if event.topic == self._heartbeats:
                    continue
                try:
                    decoded = decoded_from(event)
                except EnvelopeError:
                    continue  # transaction markers: nothing to apply
                batch.append(StreamEvent(self._stream, event.lsn, event.topic, decoded=decoded))
            if batch:
                result = self._apply_until_committed(batch, stop)
                self.applied_events += result.events
                progress.record(result)
            # Only now may the connector confirm these LSNs to PostgreSQL. Heartbeats and
            # transaction markers alone store nothing, so they need no store transaction, which
            # would wait for the change-log head behind another source's batch.
            self._sink.acknowledge(sequence)


    def _apply_until_committed(
        self, batch: list[StreamEvent], stop: threading.Event
    ) -> BatchResult:
        """Apply ``batch``, retrying a store outage until it commits or the service stops.

        The events are out of the sink once taken, so giving up on them would lose them until
        the next start. If the service stops first, they are never acknowledged: the connector
        does not confirm them and the source sends them again.
        """
        applied: list[BatchResult] = []
        retry_transient(
            stop, f"engine.{self._stream}", lambda: applied.append(self._pipeline.apply(batch))
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
