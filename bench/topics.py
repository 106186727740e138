"""Reading the connector's topics back: record sizes, and receive times for latency."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition

# A consumer's fetch waits at most this long on the broker when there is nothing new. Short,
# because some brokers (Tansu) answer a fetch only when the wait expires, not when data arrives;
# every fetch costs CPU on this 2-core box, so not shorter.
FETCH_MAX_WAIT_MS = 10


def _assigned_consumer(
    bootstrap: str, topic: str, from_end: bool = False, timeout: float = 30.0
) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        # The connector is measured, not this reader: skip its CRC checks (pure Python in
        # kafka-python when the crc32c package is missing, ~150 µs per 1 KB record).
        check_crcs=False,
        max_poll_records=10_000,
    )
    deadline = time.monotonic() + timeout
    while not (ids := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            consumer.close()
            raise TimeoutError(f"topic {topic} does not exist")
        time.sleep(0.2)
    consumer.assign([TopicPartition(topic, p) for p in sorted(ids)])
    if from_end:
        consumer.seek_to_end()
    else:
        consumer.seek_to_beginning()
    return consumer


@dataclass(frozen=True)
class RecordSizes:
    """How many records a topic holds and their average key and value size in bytes."""

    records: int
    avg_key_bytes: float
    avg_value_bytes: float


def record_sizes(bootstrap: str, topic: str, expected: int, timeout: float) -> RecordSizes:
    """Read ``topic`` from the beginning until ``expected`` records (or ``timeout``)."""
    consumer = _assigned_consumer(bootstrap, topic)
    records = key_bytes = value_bytes = 0
    deadline = time.monotonic() + timeout
    try:
        while records < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    records += 1
                    key_bytes += len(record.key or b"")
                    value_bytes += len(record.value or b"")
    finally:
        consumer.close()
    if records == 0:
        raise TimeoutError(f"no records in {topic} after {timeout:.0f}s")
    return RecordSizes(records, key_bytes / records, value_bytes / records)


@dataclass
class ReceiveListener:
    """Consumes a change topic in a thread, recording commit → receive per event.

    For each change event: ``receive time - source.ts_us`` (the PostgreSQL commit timestamp;
    PostgreSQL and this process read the same clock) and the row id from ``after.id``. Only
    records produced after :meth:`start` returns are read.
    """

    bootstrap: str
    topic: str
    latencies_s: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start consuming; returns once the consumer is positioned at the topic's start."""
        self._thread = threading.Thread(target=self._run, name="bench-listener", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"listener on {self.topic} did not start")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop consuming and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        try:
            consumer = _assigned_consumer(self.bootstrap, self.topic, from_end=True)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        try:
            consumer.poll(timeout_ms=100)  # resolve the start offsets before the writes begin
            self._ready.set()
            while not self._stop.is_set():
                for batch in consumer.poll(timeout_ms=100).values():
                    received = time.time()
                    for record in batch:
                        if record.value is None:
                            continue
                        event = json.loads(record.value)
                        self.latencies_s.append(received - event["source"]["ts_us"] / 1e6)
                        self.ids.append(int(event["after"]["id"]))
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()
