"""The Kafka transport: the only module that touches kafka-python.

Works with any Kafka-protocol broker (Apache Kafka, Redpanda, MSK, Tansu). Producer settings favour
"nothing lost, order kept per row": ``acks=all`` and the idempotent producer, so a retried batch
cannot be reordered or duplicated within a partition; records are keyed by primary key so all
events of one row land in one partition.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
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
    """Publishes change events to Kafka and tracks which are acknowledged, in order."""

    def __init__(self, config: KafkaConfig, schemas_enable: bool) -> None:
        self._schemas_enable = schemas_enable
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=config.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                linger_ms=config.linger_ms,
                batch_size=512 * 1024,
                max_request_size=16 * 1024 * 1024,
                **_client_options(config),
            )
        except KafkaError as exc:
            raise SinkError(f"cannot reach Kafka at {config.bootstrap_servers}: {exc}") from exc
        self._pending: deque[Any] = deque()
        self._published = 0
        self._acknowledged = 0

    def publish(self, events: Sequence[ChangeEvent]) -> int:
        """Send events (asynchronously; acknowledgements are collected by :meth:`acknowledged`)."""
        send = self._producer.send
        schemas = self._schemas_enable
        try:
            for event in events:
                key, value = serialize(event, schemas)
                self._pending.append(send(event.topic, key=key, value=value))
        except KafkaError as exc:
            raise SinkError(f"kafka send failed: {exc}") from exc
        self._published += len(events)
        return self._published

    def acknowledged(self) -> int:
        """Events acknowledged by the broker, counted from the first without gaps.

        Raises:
            SinkError: A send failed for good (after the producer's own retries).
        """
        pending = self._pending
        while pending and pending[0].is_done:
            future = pending.popleft()
            if future.failed():
                raise SinkError(
                    f"kafka rejected an event: {future.exception}"
                ) from future.exception
            self._acknowledged += 1
        return self._acknowledged

    def flush(self, timeout: float) -> None:
        """Wait until the broker acknowledged everything published."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise SinkError(f"kafka flush failed: {exc}") from exc
        if self.acknowledged() < self._published:
            raise SinkError(
                f"kafka: {self._published - self._acknowledged} events unacknowledged after "
                f"{timeout:.0f}s"
            )

    def close(self) -> None:
        """Close the producer without waiting for in-flight sends."""
        self._producer.close(timeout=0)


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


def _client_options(config: KafkaConfig) -> dict[str, Any]:
    return dict(config.client_options)
