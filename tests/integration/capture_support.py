"""Running a real connector against the test PostgreSQL and broker, and reading what it wrote."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from kafka import KafkaConsumer, TopicPartition

from unified_profile.cdc.config import (
    CaptureConfig,
    KafkaConfig,
    SourceConfig,
    parse_capture_config,
)
from unified_profile.cdc.connector import Connector
from unified_profile.cdc.kafka import KafkaOffsetStore, KafkaSink, ensure_topics


@dataclass(frozen=True)
class Record:
    """One Kafka record, JSON-decoded."""

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any

    @property
    def op(self) -> str | None:
        return None if self.value is None else self.value.get("op")


def capture_config(
    name: str, dsn: str, bootstrap: str, tables: list[str], **source: Any
) -> CaptureConfig:
    """A config with one source and the Kafka transport, validated like a file would be."""
    return parse_capture_config(
        {
            "transport": {
                "kind": "kafka",
                "bootstrap_servers": bootstrap,
                "topic_partitions": 2,
                "offsets_topic": f"{name}.offsets",
            },
            "sources": [
                {
                    "name": name,
                    "dsn": dsn,
                    "slot": name.replace(".", "_"),
                    "publication": name.replace(".", "_"),
                    "heartbeat_interval_s": 1.0,
                    "status_interval_s": 0.5,
                    "tables": [{"table": t} for t in tables],
                    **source,
                }
            ],
        }
    )


@contextmanager
def running_connector(config: CaptureConfig) -> Iterator[Connector]:
    """Run the config's only source in a thread until the block ends; fail on connector errors."""
    source: SourceConfig = config.sources[0]
    assert isinstance(config.transport, KafkaConfig)
    kafka = config.transport
    ensure_topics(
        kafka,
        [f"{source.name}.{t.table.schema}.{t.table.name}" for t in source.tables]
        + [f"__debezium-heartbeat.{source.name}"],
        compacted=[kafka.offsets_topic],
    )
    sink = KafkaSink(kafka, schemas_enable=source.schemas_enable)
    connector = Connector(source, sink, KafkaOffsetStore(kafka))
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            connector.run(stop)
        except BaseException as exc:
            errors.append(exc)
            connector.ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert connector.ready.wait(60), "connector did not start streaming within 60 s"
    if errors:
        raise errors[0]
    try:
        yield connector
    finally:
        stop.set()
        thread.join(60)
        sink.close()
    if errors:
        raise errors[0]


class TopicReader:
    """Reads topics from the beginning, without a consumer group (nothing to rebalance)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        partitions = []
        deadline = time.monotonic() + 20
        for topic in topics:
            while not (ids := self._consumer.partitions_for_topic(topic)):
                assert time.monotonic() < deadline, f"topic {topic} does not exist"
                time.sleep(0.2)
            partitions += [TopicPartition(topic, p) for p in ids]
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning()
        self.records: list[Record] = []

    def read_until(
        self, done: Callable[[list[Record]], bool], timeout: float = 30.0
    ) -> list[Record]:
        """Poll until ``done(all records so far)`` or fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s with {len(self.records)} records; "
                f"last: {self.records[-3:]}"
            )
            for batch in self._consumer.poll(timeout_ms=200).values():
                for r in batch:
                    self.records.append(
                        Record(
                            r.topic,
                            r.partition,
                            r.offset,
                            json.loads(r.key) if r.key is not None else None,
                            json.loads(r.value) if r.value is not None else None,
                        )
                    )
        return self.records

    def close(self) -> None:
        self._consumer.close()


def execute(dsn: str, *statements: str, params: Any = None) -> None:
    """Run statements in one autocommit session."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)  # type: ignore[arg-type]


def changes(records: list[Record], topic: str | None = None) -> list[Record]:
    """The non-tombstone change events (optionally of one topic), in the order read."""
    return [r for r in records if r.value is not None and "op" in r.value
            and (topic is None or r.topic == topic)]
