"""The services the test suite and the demo run on: what a user of them would notice."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from psycopg.conninfo import conninfo_to_dict

from unified_profile.server.devstack import EmbeddedPostgres, TansuBroker, pick_free_port
from unified_profile.server.devstack.postgres import postgres_bin_dir

pytestmark = pytest.mark.integration


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once no process ``pid`` exists (zombies count as existing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.05)
    return False


def _slots(admin_dsn: str, dbname: str) -> list[tuple[str, int | None]]:
    with psycopg.connect(admin_dsn) as conn:
        return conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s "
            "ORDER BY slot_name",
            (dbname,),
        ).fetchall()


# -- PostgreSQL -------------------------------------------------------------------------


def test_server_has_logical_decoding_enabled(pg_server):
    with psycopg.connect(pg_server.admin_dsn) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('wal_level', 'max_replication_slots', 'max_wal_senders')"
            ).fetchall()
        )
    assert settings["wal_level"] == "logical"
    if pg_server.embedded is not None:
        assert settings["max_replication_slots"] == "32"
        assert settings["max_wal_senders"] == "32"
        assert conninfo_to_dict(pg_server.admin_dsn)["host"] == "127.0.0.1"


def test_new_database_hosts_a_pgoutput_slot_that_sees_changes(new_database, unique_name):
    dsn = new_database("slot")
    slot, publication = unique_name("slot"), unique_name("pub")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customer (id int PRIMARY KEY, email text)")
        conn.execute(f"CREATE PUBLICATION {publication} FOR TABLE customer")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        conn.execute("INSERT INTO customer VALUES (1, 'a@example.com')")
        messages = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', %s)",
            (slot, publication),
        ).fetchall()
    kinds = [bytes(row[0])[:1] for row in messages]
    # Begin, Relation, Insert, Commit: pgoutput's framing of one inserted row.
    assert kinds == [b"B", b"R", b"I", b"C"]
    assert b"a@example.com" in bytes(messages[2][0])


def test_dropping_test_databases_ends_replication_and_frees_slots(
    pg_server, new_database, unique_name
):
    dsn = new_database("drop")
    dbname = conninfo_to_dict(dsn)["dbname"]
    streamed, temporary, publication = (
        unique_name("streamed"), unique_name("temporary"), unique_name("pub"),
    )
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute(f"CREATE PUBLICATION {publication} FOR ALL TABLES")
    holder.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (streamed,))
    # A temporary slot stays held by the session that created it.
    holder.execute(
        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', temporary => true)",
        (temporary,),
    )
    # A real walsender streaming from the other slot, as capture would.
    receiver = subprocess.Popen(
        [str(postgres_bin_dir() / "pg_recvlogical"), "-d", dsn, "--slot", streamed,
         "--start", "--no-loop", "-f", "-", "-o", "proto_version=1",
         "-o", f"publication_names={publication}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not all(pid for _, pid in _slots(pg_server.admin_dsn, dbname)):
            assert receiver.poll() is None, "pg_recvlogical exited before streaming"
            assert time.monotonic() < deadline, _slots(pg_server.admin_dsn, dbname)
            time.sleep(0.1)
        assert sorted(name for name, _ in _slots(pg_server.admin_dsn, dbname)) == sorted(
            [streamed, temporary]
        )

        new_database.drop_all()

        assert _slots(pg_server.admin_dsn, dbname) == []
        with psycopg.connect(pg_server.admin_dsn) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone() == (0,)
        assert receiver.wait(timeout=15) != 0  # its walsender was terminated
        with pytest.raises(psycopg.OperationalError):
            holder.execute("SELECT 1")
        assert new_database.names == []
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        holder.close()


def test_embedded_postgres_restart_keeps_data_and_stop_leaves_no_process(tmp_path):
    server = EmbeddedPostgres(tmp_path / "data", settings={"fsync": "off"})
    with server:
        dsn = server.create_database("kept")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT 42 AS answer")
        port = server.port
        first_pid = server.pid
        assert first_pid is not None

        server.restart()

        assert server.port == port
        assert server.pid not in (None, first_pid)
        assert _gone(first_pid)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT answer FROM t").fetchone() == (42,)
        postmaster = psutil.Process(server.pid)
        children = [child.pid for child in postmaster.children(recursive=True)]
        assert children, "a running postmaster has background processes"
        assert server.log_path.read_text().strip(), "the server logs to its data directory"

    assert not server.is_running
    assert server.pid is None
    assert _gone(postmaster.pid)
    assert [pid for pid in children if not _gone(pid)] == []
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    server.stop()  # stopping again is harmless


def test_embedded_postgres_start_failure_names_the_cause(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "stray-file").write_text("not a cluster")
    server = EmbeddedPostgres(data_dir)
    with pytest.raises(RuntimeError, match="initdb failed"):
        server.start()
    assert not server.is_running


def test_embedded_postgres_reports_a_server_that_cannot_start(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedPostgres(tmp_path / "data", port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"exited with code .*\n(.|\n)*could not bind"):
            server.start()
    assert not server.is_running


# -- Kafka ------------------------------------------------------------------------------


def test_broker_creates_topics_accepts_acked_writes_and_serves_a_consumer_group(
    kafka_bootstrap: str, unique_name: Callable[..., str]
):
    topic, group = unique_name("topic"), unique_name("group")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
        assert topic in admin.list_topics()
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        metadata = producer.send(topic, key=b"customer-1", value=b"hello").get(timeout=30)
    finally:
        producer.close()
    assert (metadata.topic, metadata.partition, metadata.offset) == (topic, 0, 0)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_interval_ms=3000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        received = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(records)
        assert [(r.key, r.value) for r in received] == [(b"customer-1", b"hello")]
        consumer.commit()
        assert consumer.committed(TopicPartition(topic, 0)) == 1
    finally:
        consumer.close()


def test_broker_restart_keeps_its_address_and_stop_leaves_no_process(tmp_path: Path):
    broker = TansuBroker(port=pick_free_port(), log_path=tmp_path / "tansu.log")
    with broker:
        first_pid = broker.pid
        assert first_pid is not None
        bootstrap = broker.bootstrap_servers

        broker.restart()

        assert broker.bootstrap_servers == bootstrap
        assert broker.pid not in (None, first_pid)
        assert _gone(first_pid)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.list_topics()
        admin.close()
        pid = broker.pid
        assert pid is not None

    assert not broker.is_running
    assert _gone(pid)
    broker.stop()  # stopping again is harmless
    assert (tmp_path / "tansu.log").exists()


_FORK_BESIDE_BUSY_GRPC = r"""
import asyncio, subprocess, sys, threading, time

import unified_profile.server  # what is under test: importing the service configures gRPC
import grpc
from grpc import aio

def call_forever():
    async def main():
        server = aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            while True:
                try:
                    await channel.unary_unary("/none.Such/Method")(b"", timeout=0.05)
                except grpc.RpcError:
                    pass
    asyncio.run(main())

for _ in range(4):
    threading.Thread(target=call_forever, daemon=True).start()
time.sleep(0.5)
# A preexec_fn makes subprocess use fork() rather than vfork(), as switching user does.
codes = [subprocess.run(["true"], preexec_fn=lambda: None).returncode for _ in range(300)]
print(sum(code != 0 for code in codes))
"""


def test_children_forked_beside_busy_grpc_threads_start():
    """The devstack restarts PostgreSQL while gRPC clients and servers run in other threads.

    With gRPC's at-fork handlers on, about one child in three died before exec (SIGSEGV or
    SIGABRT), so a restarted PostgreSQL never came up.
    """
    result = subprocess.run(
        [sys.executable, "-c", _FORK_BESIDE_BUSY_GRPC],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", f"children that died before exec: {result.stdout}"
