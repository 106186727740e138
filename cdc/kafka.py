"""The Kafka transport: the only module that touches kafka-python.

Works with any Kafka-protocol broker (Apache Kafka, Redpanda, MSK, Tansu). Producer settings favour
"nothing lost, order kept per row": ``acks=all`` and the idempotent producer, so a retried batch
cannot be reordered or duplicated within a partition; records are keyed by primary key so all
events of one row land in one partition.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import structlog
from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .config import KafkaConfig
from .envelope import ChangeEvent, serialize
from .errors import SinkError
from .offsets import ConnectorOffset

log = structlog.get_logger(__name__)


def ensure_topics(
    config: KafkaConfig, topics: Iterable[str], compacted: Iterable[str] = ()
) -> None:
    """Create missing topics with the configured partitions (compacted ones with one partition).

    Raises:
        SinkError: The broker is unreachable or refused to create a topic.
    """
    wanted = [
        NewTopic(t, config.topic_partitions, config.topic_replication_factor) for t in topics
    ] + [
        NewTopic(t, 1, config.topic_replication_factor, topic_configs={"cleanup.policy": "compact"})
        for t in compacted
    ]
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=config.bootstrap_servers, **_client_options(config)
        )
    except KafkaError as exc:
        raise SinkError(f"cannot reach Kafka at {config.bootstrap_servers}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            # Another connector may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            log.info("kafka.topics_created", topics=[t.name for t in missing])
    except KafkaError as exc:
        raise SinkError(f"could not create topics on {config.bootstrap_servers}: {exc}") from exc
    finally:
        admin.close()


class KafkaSink:
    """Publishes change events to Kafka and tracks which are acknowledged, in order.

    The kafka-python producer runs in a child process: its per-record work then has a core and an
    interpreter lock of its own instead of competing with decoding and encoding (measured: the two
    together on one lock reach about 0.4x the producer's own rate). This process serialises the
    events and ships the bytes over a pipe; the child reports how many, counted from the first,
    the broker has acknowledged. If either process dies the other notices at once (end of pipe).
    """

    def __init__(
        self, config: KafkaConfig, schemas_enable: bool, max_event_bytes: int = 1_000_000
    ) -> None:
        self._schemas_enable = schemas_enable
        # A plain subprocess (not multiprocessing) so daemonic hosts may use the sink too.
        parent_socket, child_socket = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(child_socket.fileno())],
            pass_fds=[child_socket.fileno()],
        )
        child_socket.close()
        self._pipe = Connection(parent_socket.detach())
        self._published = 0
        self._acknowledged = 0
        self._closed = False
        self._ready = False
        # The connector keeps events within max_event_bytes; the producer's own limit leaves room
        # for the schema wrapper so that it never refuses what the connector let through.
        max_request_size = max(_MIN_REQUEST_BYTES, max_event_bytes + _SCHEMA_ROOM_BYTES)
        self._send(("config", config, max_request_size))
        self._wait_for(lambda: self._ready, timeout=60, what="the Kafka producer to start")

    def publish(self, events: Sequence[ChangeEvent]) -> int:
        """Send events (asynchronously; acknowledgements are collected by :meth:`acknowledged`)."""
        schemas = self._schemas_enable
        records = [(e.topic, *serialize(e, schemas)) for e in events]
        self._send(("send", records))
        self._published += len(records)
        return self._published

    def acknowledged(self) -> int:
        """Events acknowledged by the broker, counted from the first without gaps.

        Raises:
            SinkError: A send failed for good (after the producer's own retries), or the
                producer process died.
        """
        try:
            while self._pipe.poll(0):
                self._receive()
        except (EOFError, OSError) as exc:
            raise SinkError("the Kafka producer process exited unexpectedly") from exc
        return self._acknowledged

    def flush(self, timeout: float) -> None:
        """Wait until the broker acknowledged everything published."""
        self._send(("flush", timeout))
        self._wait_for(
            lambda: self._acknowledged >= self._published,
            timeout=timeout + 5,
            what=f"{self._published - self._acknowledged} events to be acknowledged",
        )

    def close(self) -> None:
        """Stop the producer without waiting for in-flight sends (they will be re-sent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._pipe.send(("close",))
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._pipe.close()

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._pipe.send(message)
        except (OSError, ValueError) as exc:
            raise SinkError("the Kafka producer process exited unexpectedly") from exc

    def _receive(self) -> None:
        kind, payload = self._pipe.recv()
        if kind == "acked":
            self._acknowledged = payload
        elif kind == "ready":
            self._ready = True
        elif kind == "error":
            raise SinkError(payload)

    def _wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SinkError(f"kafka: timed out after {timeout:.0f}s waiting for {what}")
            try:
                if self._pipe.poll(min(remaining, 0.5)):
                    self._receive()
            except (EOFError, OSError) as exc:
                raise SinkError("the Kafka producer process exited unexpectedly") from exc


_ACK_POLL_S = 0.002
_MIN_REQUEST_BYTES = 16 * 1024 * 1024
_SCHEMA_ROOM_BYTES = 1024 * 1024


def _run_producer(pipe: Connection) -> None:
    """The producer process: send what the parent ships, report acknowledgements in order."""
    # The parent decides when to stop (after its final flush); a Ctrl-C to the process group must
    # not end this process first. When the parent dies, the pipe closes and this loop ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _, config, max_request_size = pipe.recv()
    except EOFError:
        return
    try:
        producer = KafkaProducer(
            bootstrap_servers=config.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=config.linger_ms,
            batch_size=512 * 1024,
            max_request_size=max_request_size,
            **_client_options(config),
        )
    except KafkaError as exc:
        pipe.send(("error", f"cannot reach Kafka at {config.bootstrap_servers}: {exc}"))
        return
    pipe.send(("ready", None))
    pending: deque[Any] = deque()
    acknowledged = reported = 0
    try:
        while True:
            # Poll briefly while sends are in flight so acknowledgements are reported promptly.
            if pipe.poll(_ACK_POLL_S if pending else 0.1):
                message = pipe.recv()
                if message[0] == "send":
                    send = producer.send
                    for topic, key, value in message[1]:
                        pending.append(send(topic, key=key, value=value))
                elif message[0] == "flush":
                    producer.flush(timeout=message[1])
                else:  # close
                    break
            while pending and pending[0].is_done:
                future = pending.popleft()
                if future.failed():
                    pipe.send(("error", f"kafka rejected an event: {future.exception}"))
                    return
                acknowledged += 1
            if acknowledged != reported:
                pipe.send(("acked", acknowledged))
                reported = acknowledged
    except (EOFError, OSError):
        pass  # the parent is gone: nothing more will be acknowledged to anyone
    except KafkaError as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", f"kafka send failed: {exc}"))
    finally:
        producer.close(timeout=0)


class KafkaOffsetStore:
    """Connector offsets in a compacted topic, keyed by source name (like Kafka Connect's)."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._topic = config.offsets_topic

    def load(self, source: str) -> ConnectorOffset | None:
        """Read the topic to its end and return the newest offset saved for ``source``."""
        consumer = KafkaConsumer(
            bootstrap_servers=self._config.bootstrap_servers,
            enable_auto_commit=False,
            **_client_options(self._config),
        )
        try:
            partitions = consumer.partitions_for_topic(self._topic) or set()
            assigned = [TopicPartition(self._topic, p) for p in partitions]
            if not assigned:
                return None
            consumer.assign(assigned)
            consumer.seek_to_beginning()
            end = consumer.end_offsets(assigned)
            latest: ConnectorOffset | None = None
            deadline = time.monotonic() + 30
            while any(consumer.position(tp) < end[tp] for tp in assigned):
                if time.monotonic() > deadline:
                    raise SinkError(f"timed out reading connector offsets from {self._topic}")
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        if record.key == source.encode() and record.value is not None:
                            latest = ConnectorOffset.from_json(record.value)
            return latest
        except KafkaError as exc:
            raise SinkError(f"could not read connector offsets from {self._topic}: {exc}") from exc
        finally:
            consumer.close()

    def save(self, source: str, offset: ConnectorOffset) -> None:
        """Write the offset and wait for ``acks=all``."""
        producer = KafkaProducer(
            bootstrap_servers=self._config.bootstrap_servers,
            acks="all",
            **_client_options(self._config),
        )
        try:
            producer.send(self._topic, key=source.encode(), value=offset.to_json()).get(timeout=30)
        except KafkaError as exc:
            raise SinkError(f"could not save connector offset to {self._topic}: {exc}") from exc
        finally:
            producer.close()


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """One record read from Kafka, as bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def partition_stream(topic: str, partition: int) -> str:
    """The name positions of a topic partition are stored under."""
    return f"kafka:{topic}:{partition}"


class KafkaEventSource:
    """A member of the engine's consumer group over the change-event topics.

    Positions live in two places: Kafka's committed offsets (so any Kafka tool shows the lag) and
    the store (committed with the effects, so they are exact). On assignment the consumer seeks to
    the store's position, which wins: Kafka's offset commit happens after the store commit and may
    be lost in a crash, the store's cannot. So each batch's offsets go to Kafka without waiting for
    the group coordinator's answer, which held up the next poll (~10 ms of the end-to-end p50 at
    700 changes/s); a commit that fails is logged, and the next batch's commit covers it.

    Args:
        config: The Kafka transport settings (``group_id`` names the group).
        topics: The topics to consume.
        stored_positions: Returns stream → last applied offset, from the store.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Sequence[str],
        stored_positions: Callable[[], dict[str, int]],
        max_poll_interval_ms: int = 300_000,
    ) -> None:
        self._stored_positions = stored_positions
        try:
            options: dict[str, Any] = {
                "max_poll_interval_ms": max_poll_interval_ms,
                **_client_options(config),
                **config.consumer_options,
            }
            self._consumer = KafkaConsumer(
                bootstrap_servers=config.bootstrap_servers,
                group_id=config.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **options,
            )
            self._consumer.subscribe(list(topics), listener=_SeekToStored(self))
        except KafkaError as exc:
            raise SinkError(f"cannot reach Kafka at {config.bootstrap_servers}: {exc}") from exc

    def poll(self, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise SinkError(f"kafka poll failed: {exc}") from exc
        return [
            ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value)
            for records in batches.values()
            for r in records
        ]

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet consumed per assigned partition, as of the last fetch.

        Partitions not fetched yet (no high watermark known) are left out.
        """
        lag: dict[tuple[str, int], int] = {}
        try:
            for tp in self._consumer.assignment():
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    lag[(tp.topic, tp.partition)] = max(0, highwater - self._consumer.position(tp))
        except KafkaError as exc:  # a figure for metrics: never worth failing a batch over
            log.debug("kafka.lag_unavailable", error=str(exc))
        return lag

    def commit(self, records: Sequence[ConsumedRecord]) -> None:
        """Commit, to Kafka, the offsets after these records (call after the store commit).

        Sent without waiting for the answer; failures are logged (see the class notes).
        """
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit_async(offsets, callback=_log_commit_failure)
        except KafkaError as exc:
            # Harmless: the store holds the exact positions and is used on the next assignment.
            log.warning("kafka.commit_failed", error=str(exc))

    def _seek_to_stored(self, assigned: Sequence[TopicPartition]) -> None:
        positions = self._stored_positions()
        for tp in assigned:
            applied = positions.get(partition_stream(tp.topic, tp.partition))
            if applied is not None:
                self._consumer.seek(tp, applied + 1)
        log.info(
            "kafka.partitions_assigned",
            partitions=[partition_stream(tp.topic, tp.partition) for tp in assigned],
        )

    def close(self) -> None:
        """Leave the group (its partitions are reassigned to the other members)."""
        self._consumer.close()


def _log_commit_failure(
    _offsets: dict[TopicPartition, OffsetAndMetadata], response: object
) -> None:
    if isinstance(response, Exception):
        log.warning("kafka.commit_failed", error=str(response))


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaEventSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass  # nothing buffered between polls: each batch is committed before the next poll

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._source._seek_to_stored(assigned)


def _client_options(config: KafkaConfig) -> dict[str, Any]:
    return dict(config.client_options)


if __name__ == "__main__":
    _run_producer(Connection(int(sys.argv[1])))
