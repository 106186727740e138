"""The connector process killed with SIGKILL mid-stream loses nothing after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from .capture_support import TopicReader, changes, execute

pytestmark = pytest.mark.integration


def _write_config(path: Path, name: str, dsn: str, bootstrap: str) -> None:
    path.write_text(
        f"""
[transport]
kind = "kafka"
bootstrap_servers = "{bootstrap}"
topic_partitions = 2
offsets_topic = "{name}.offsets"

[[sources]]
name = "{name}"
dsn = "env:TEST_SOURCE_DSN"
slot = "{name}"
publication = "{name}"
status_interval_s = 0.2

[[sources.tables]]
table = "orders"
"""
    )


def _start(config: Path, dsn: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "unified_profile.server.cli", "cdc", "--config", str(config)],
        env={**os.environ, "TEST_SOURCE_DSN": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_mid_stream_then_restart_loses_no_change(
    new_database, kafka_bootstrap, unique_name, tmp_path
):
    dsn = new_database()
    execute(dsn, "CREATE TABLE orders (id int PRIMARY KEY, total int)",
            "ALTER TABLE orders REPLICA IDENTITY FULL")
    name = unique_name("shop")
    config = tmp_path / "unified-profile.toml"
    _write_config(config, name, dsn, kafka_bootstrap)
    topic = f"{name}.public.orders"

    inserted: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                i += 1
                conn.execute("INSERT INTO orders VALUES (%s, %s)", (i, i * 10))
                inserted.append(i)
                time.sleep(0.001)

    process = _start(config, dsn)
    thread = threading.Thread(target=writer)
    try:
        # Wait until the connector streams, then write while killing it twice.
        reader = TopicReader(kafka_bootstrap, [topic]) if _wait_for_topic(kafka_bootstrap, topic) else None
        thread.start()
        for _ in range(2):
            time.sleep(1.5)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            process = _start(config, dsn)
        time.sleep(1.5)
        stop.set()
        thread.join()
        assert reader is not None
        records = reader.read_until(
            lambda rs: {r.key["id"] for r in changes(rs)} >= set(inserted), timeout=90
        )
        reader.close()
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""

    events = changes(records)
    assert {r.key["id"] for r in events} == set(inserted)
    # Re-sent events (the unacknowledged window) are exact copies: same row, same source LSN.
    by_key: dict[int, set[int]] = {}
    for record in events:
        by_key.setdefault(record.key["id"], set()).add(record.value["source"]["lsn"])
    assert all(len(lsns) == 1 for lsns in by_key.values())
    assert len(inserted) > 100


def _wait_for_topic(bootstrap: str, topic: str, timeout: float = 60) -> bool:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if consumer.partitions_for_topic(topic):
                return True
            time.sleep(0.2)
        return False
    finally:
        consumer.close()
