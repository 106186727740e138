"""What capture is compared with: the two halves of its work, each alone and as fast as possible.

* :func:`raw_decode` — the WAL of the same changes, streamed from a second pgoutput slot with the
  project's :class:`ReplicationConnection` and parsed with :func:`decode_message`; no events are
  built, nothing is serialised, nothing goes to Kafka.
* :func:`raw_produce` — kafka-python producing records of the connector's average key and value
  size with the producer settings of ``cdc/kafka.py``; nothing is read from PostgreSQL.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from kafka import KafkaProducer

from unified_profile.cdc.config import KafkaConfig
from unified_profile.cdc.model import Delete, Insert, Update
from unified_profile.cdc.pgoutput import decode_message
from unified_profile.cdc.postgres.replication import Keepalive, ReplicationConnection

# The KafkaSink's producer settings (cdc/kafka.py) that the configuration does not carry.
SINK_BATCH_SIZE = 512 * 1024
SINK_MAX_REQUEST_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Rate:
    """``count`` items in ``seconds``."""

    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Items per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


def raw_decode(dsn: str, slot: str, publication: str, changes: int, timeout: float) -> Rate:
    """Stream ``slot`` from its start until ``changes`` row changes are decoded.

    Args:
        dsn: The source database.
        slot: A pgoutput slot created before the changes were written.
        publication: The publication the changes' table is in.
        changes: How many Insert/Update/Delete messages to wait for.
        timeout: Give up after this many seconds.

    Raises:
        TimeoutError: Fewer changes arrived within ``timeout``.
    """
    replication = ReplicationConnection(dsn)
    try:
        started = time.perf_counter()
        replication.start(slot, publication)
        seen = 0
        received = 0
        while seen < changes:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"raw decode: {seen} of {changes} changes after {timeout:.0f}s")
            message = replication.read(1.0)
            if message is None:
                continue
            if isinstance(message, Keepalive):
                if message.reply_requested:
                    replication.send_status(max(received, message.wal_end), 0)
                continue
            received = max(received, message.wal_end)
            if isinstance(decode_message(message.payload), Insert | Update | Delete):
                seen += 1
        return Rate(seen, time.perf_counter() - started)
    finally:
        replication.close()


def raw_produce(
    kafka: KafkaConfig, topic: str, count: int, key_bytes: int, value_bytes: int, seed: int
) -> Rate:
    """Produce ``count`` records of the given sizes with ``acks=all`` and wait for every ack.

    Keys are distinct (so records spread over the partitions as the connector's do); values are
    the same random bytes each time. Timing starts at the first ``send`` and ends when ``flush``
    returns, i.e. when the broker has acknowledged every record.
    """
    rng = random.Random(seed)
    value = rng.randbytes(value_bytes)
    keys = [b"%0*d" % (key_bytes, i) for i in range(count)]
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=kafka.linger_ms,
        batch_size=SINK_BATCH_SIZE,
        max_request_size=SINK_MAX_REQUEST_SIZE,
        **kafka.client_options,
    )
    try:
        send = producer.send
        started = time.perf_counter()
        for key in keys:
            send(topic, key=key, value=value)
        producer.flush(timeout=600)
        return Rate(count, time.perf_counter() - started)
    finally:
        producer.close(timeout=5)
