"""The engine under faults: SIGKILL mid-batch, two workers in one group, undecodable events.

Every test runs the real pieces: the demo schema and seed in a PostgreSQL source database, its
connectors (an in-process :class:`CaptureService`) publishing to the Tansu broker, and the engine
either as the ``unified-profile engine`` process or in-process via :func:`run_kafka_engine`.

The reference for "correct" is a second store filled by one uninterrupted in-process engine of
its own consumer group over the same topics: the final profiles (field values and which records
each holds) and the record images must be the same; profile ids and the change log's batching
may differ, so ids are not compared and the change log is checked on its own (gap-free, and no
change applied twice for the same source event).
"""

from __future__ import annotations

import copy
import json
import os
import random
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from unified_profile.cdc.config import KafkaConfig
from unified_profile.cdc.connector import table_topic
from unified_profile.cdc.kafka import KafkaEventSource, ensure_topics, partition_stream
from unified_profile.server.capture import CaptureService
from unified_profile.server.config import ServiceConfig, load_service_config
from unified_profile.server.ingest.consumers import KafkaIngest
from unified_profile.server.ingest.service import build_pipeline, open_store, run_kafka_engine
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore

from ..command_process import CommandProcess
from ..store_state import assert_change_log_sound, canonical, profiles_by_members
from ..waiting import wait_for

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"

# Fast group membership: a SIGKILLed member is dropped after 1.5 s instead of kafka-python's 45 s,
# so a restarted engine gets its partitions back within a couple of seconds. Only the engine's
# consumers see these (the capture config has no client options: a producer would refuse them).
ENGINE_CONSUMER_OPTIONS = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 300}


# --- config -----------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _dump_toml(data: dict[str, Any]) -> str:
    """TOML text for config data (every table inline: valid, if not pretty)."""
    return "".join(f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in data.items())


def _demo_data(bootstrap: str, suffix: str) -> dict[str, Any]:
    """The demo config on Kafka, its sources renamed so that topics, slots are this test's own.

    Topics are ``<source name>.<schema>.<table>``: with the example's names ``crm`` and ``loyalty``
    every test of the session would share (and read) the same topics.
    """
    data = tomllib.loads((DEMO / "unified-profile.toml").read_text())
    data.pop("grpc", None)  # the engine serves no gRPC; its tokens are not this test's concern
    renamed: dict[str, str] = {}
    for source in data["sources"]:
        renamed[source["name"]] = name = f"{source['name']}_{suffix}"
        source["name"] = source["slot"] = source["publication"] = name
        source["status_interval_s"] = 0.2
        source["heartbeat_interval_s"] = 1.0
    for rule in data["rules"].values():
        if isinstance(rule, dict) and "order" in rule:
            rule["order"] = [renamed.get(name, name) for name in rule["order"]]
    data["transport"] = {
        "kind": "kafka",
        "bootstrap_servers": bootstrap,
        "topic_partitions": 2,
        "offsets_topic": f"offsets_{suffix}",
    }
    return data


@dataclass
class Demo:
    """The demo source database being captured to this test's own topics."""

    source_dsn: str
    bootstrap: str
    tmp: Path
    base: dict[str, Any]
    capture: CaptureService | None = None

    @property
    def source_names(self) -> dict[str, str]:
        """Example name (``crm``, ``loyalty``) → this test's source name."""
        return {s["name"].split("_", 1)[0]: s["name"] for s in self.base["sources"]}

    @property
    def topics(self) -> list[str]:
        return [
            f"{source['name']}.{table['table']}"
            for source in self.base["sources"]
            for table in source["tables"]
        ]

    @property
    def streams(self) -> set[str]:
        """Every partition of the table topics, as stream names."""
        partitions = self.base["transport"]["topic_partitions"]
        return {partition_stream(t, p) for t in self.topics for p in range(partitions)}

    @property
    def slots(self) -> list[str]:
        return [source["slot"] for source in self.base["sources"]]

    def topic(self, example_source: str, table: str) -> str:
        return f"{self.source_names[example_source]}.{table}"

    def write_config(
        self,
        name: str,
        *,
        group: str,
        store_env: str,
        batch_events: int = 2_000,
        consumer_options: dict[str, Any] = ENGINE_CONSUMER_OPTIONS,
    ) -> Path:
        """An engine config file: this group, the store named by ``$store_env``."""
        data = copy.deepcopy(self.base)
        data["store"] = {"dsn": f"env:{store_env}"}
        data["transport"] |= {"group_id": group, "consumer_options": consumer_options}
        data["engine"] = {"batch_events": batch_events}
        path = self.tmp / f"{name}.toml"
        path.write_text(_dump_toml(data))
        return path

    def start_capture(self) -> None:
        data = copy.deepcopy(self.base)
        data["store"] = {"dsn": "dbname=unused_by_capture"}
        path = self.tmp / "capture.toml"
        path.write_text(_dump_toml(data))
        config = load_service_config(path)
        self.capture = capture = CaptureService(config.capture, config.capture.sources)
        capture.start()
        for name in self.source_names.values():
            connector = wait_for(lambda n=name: capture.connectors.get(n), f"connector {name}")
            assert connector.ready.wait(60), f"connector {name} did not start streaming"

    def stop_capture(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture.wait(60)
            self.capture = None

    def wait_captured(self, timeout: float = 60) -> None:
        """Wait until both connectors confirmed (so Kafka acknowledged) every write made so far."""
        assert self.capture is not None
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            deadline = time.monotonic() + timeout
            while True:
                assert self.capture.failure is None, f"capture failed: {self.capture.failure}"
                behind = conn.execute(
                    "SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = ANY(%s) AND (confirmed_flush_lsn IS NULL "
                    "OR confirmed_flush_lsn < %s::pg_lsn)",
                    (self.slots, target),
                ).fetchall()
                if not behind:
                    return
                assert time.monotonic() < deadline, f"capture behind {target}: {behind}"
                time.sleep(0.1)


@pytest.fixture
def demo(new_database, kafka_bootstrap, unique_name, tmp_path, monkeypatch):
    source_dsn = new_database("faults_src")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute((DEMO / "schema.sql").read_text())
        conn.execute((DEMO / "seed.sql").read_text())
    monkeypatch.setenv("UP_CRM_DSN", source_dsn)
    monkeypatch.setenv("UP_LOYALTY_DSN", source_dsn)
    demo = Demo(source_dsn, kafka_bootstrap, tmp_path, _demo_data(kafka_bootstrap, unique_name("ef")))
    try:
        yield demo
    finally:
        demo.stop_capture()


def _new_store(new_database, monkeypatch, env: str) -> str:
    dsn = new_database("faults_store")
    migrate.upgrade(dsn)
    monkeypatch.setenv(env, dsn)
    return dsn


# --- source traffic ---------------------------------------------------------------------------


class Traffic:
    """Seeded random writes to the demo source: points changes, new customers and members
    (some linked by CRM id, some matching by email), email and phone moves that merge and split
    people, tier changes and soft deletes — one transaction each (a new customer with its
    consents in one)."""

    def __init__(self, dsn: str, seed: int) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.customers = [1, 2, 3, 4, 5, 7]
        self.members = ["LM-000101", "LM-000102", "LM-000103", "LM-000104", "LM-000105"]
        self.emails = ["sally.smith@example.com", "tom.brown@example.com", "the.joneses@example.net"]
        self.next_customer = 1000
        self.next_member = 900_000
        self.writes = 0

    def run(self, count: int, pace_s: float = 0.0, until: threading.Event | None = None) -> None:
        """``count`` writes, or with ``until`` at least ``count`` and then until it is set."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            done = 0
            while done < count or (until is not None and not until.is_set() and done < 20 * count):
                self._write(conn)
                done += 1
                self.writes += 1
                if pace_s:
                    time.sleep(pace_s)

    def _email(self) -> str:
        if self.rng.random() < 0.5:
            return self.rng.choice(self.emails)
        email = f"person{self.rng.randrange(10_000)}@example.com"
        self.emails.append(email)
        return email

    def _write(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            points = rng.randrange(-200, 900)
            conn.execute(
                "UPDATE loyalty.members SET points_balance = points_balance + %s, "
                "lifetime_points = lifetime_points + greatest(%s, 0), updated_at = clock_timestamp() "
                "WHERE member_id = %s",
                (points, points, rng.choice(self.members)),
            )
        elif roll < 0.53:
            customer = self.next_customer
            self.next_customer += 1
            with conn.transaction():
                conn.execute(
                    "INSERT INTO crm.customers (id, first_name, last_name, email, lifecycle_stage) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (customer, f"Given{customer}", rng.choice(["Smith", "Lee", "Khan"]),
                     self._email(), rng.choice(["lead", "prospect", "customer"])),
                )
                conn.execute(
                    "INSERT INTO crm.consents (customer_id, email_opt_in, email_opt_in_at) "
                    "VALUES (%s, %s, clock_timestamp())",
                    (customer, rng.random() < 0.5),
                )
            self.customers.append(customer)
        elif roll < 0.68:
            member = f"LM-{self.next_member:06d}"
            self.next_member += 1
            link = rng.choice(self.customers) if rng.random() < 0.3 else None
            conn.execute(
                "INSERT INTO loyalty.members (member_id, crm_customer_id, email, given_name, "
                "family_name, tier_code, points_balance) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (member, link, self._email().upper(), "Member", member[-3:],
                 rng.choice(["BRZ", "SLV", "GLD"]), rng.randrange(5_000)),
            )
            self.members.append(member)
        elif roll < 0.80:
            conn.execute(
                "UPDATE crm.customers SET email = %s, updated_at = clock_timestamp() WHERE id = %s",
                (self._email(), rng.choice(self.customers)),
            )
        elif roll < 0.88:
            conn.execute(
                "UPDATE loyalty.members SET tier_code = %s, updated_at = clock_timestamp() "
                "WHERE member_id = %s",
                (rng.choice(["BRZ", "SLV", "GLD", "PLT"]), rng.choice(self.members)),
            )
        elif roll < 0.94:
            conn.execute(
                "UPDATE crm.customers SET deleted_at = CASE WHEN deleted_at IS NULL "
                "THEN clock_timestamp() END, updated_at = clock_timestamp() WHERE id = %s",
                (rng.choice(self.customers),),
            )
        else:
            conn.execute(
                "INSERT INTO crm.contact_details (customer_id, phone, city) VALUES (%s, %s, %s) "
                "ON CONFLICT (customer_id) DO UPDATE SET phone = excluded.phone, "
                "city = excluded.city, updated_at = clock_timestamp()",
                (rng.choice(self.customers), f"07700 9001{rng.randrange(10, 30)}",
                 rng.choice(["Leeds", "York"])),
            )


# --- engines ----------------------------------------------------------------------------------


class EngineProcess(CommandProcess):
    """``unified-profile engine --config FILE`` as a child process, its log appended to a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        super().__init__(
            ["engine", "--config", str(config)], dict(os.environ), log, "engine process",
            stop_timeout=30.0,
        )


class EngineThread:
    """An in-process engine (``run_kafka_engine``, or ``target``) that keeps its exception."""

    def __init__(
        self,
        config: ServiceConfig,
        target: Callable[[ServiceConfig, ProfileStore, threading.Event], None] = run_kafka_engine,
    ) -> None:
        self.store = open_store(config)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                target(config, self.store, self.stop_event)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name="engine", daemon=True)
        self.thread.start()

    def died(self) -> str | None:
        if self.error is not None:
            return f"in-process engine failed: {self.error!r}"
        if not self.thread.is_alive() and not self.stop_event.is_set():
            return "in-process engine returned without being stopped"
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        self.store.close()


def _last_offsets(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    """Stream name → offset of the partition's last record, for every non-empty partition.

    Found by reading the topics through: Tansu answers ListOffsets(latest) with the last record
    *batch*'s base offset + 1 (a partition holding one 3-record batch reports end offset 1), so
    ``end_offsets`` is only a lower bound here.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = []
        for topic in topics:
            ids = wait_for(lambda t=topic: consumer.partitions_for_topic(t), f"topic {topic}")
            partitions += [TopicPartition(topic, p) for p in ids]
        at_least = {tp: end - 1 for tp, end in consumer.end_offsets(partitions).items()}
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        last = dict.fromkeys(partitions, -1)
        deadline = time.monotonic() + 30
        while True:
            batches = consumer.poll(timeout_ms=500)
            for tp, records in batches.items():
                last[tp] = max(last[tp], *(r.offset for r in records))
            if not batches and all(last[tp] >= at_least[tp] for tp in partitions):
                break
            assert time.monotonic() < deadline, f"could not read {topics} to the end"
        return {partition_stream(tp.topic, tp.partition): o for tp, o in last.items() if o >= 0}
    finally:
        consumer.close()


def _wait_applied(
    store: ProfileStore,
    group: str,
    last: dict[str, int],
    died: Sequence[Callable[[], str | None]] = (),
    timeout: float = 90,
) -> int:
    """Wait until the store holds ``group``'s positions at every partition's last record, then
    check its change-log head stands still; return the head."""

    def behind() -> dict[str, tuple[int, int]]:
        positions = store.load_positions(group)
        return {
            stream: (positions.get(stream, -1), offset)
            for stream, offset in last.items()
            if positions.get(stream, -1) < offset
        }

    deadline = time.monotonic() + timeout
    while lagging := behind():
        for check in died:
            problem = check()
            assert problem is None, f"{group} stopped applying: {problem}"
        assert time.monotonic() < deadline, f"{group} still behind (applied, last): {lagging}"
        time.sleep(0.2)
    head = store.head_sequence()
    time.sleep(1.0)
    assert store.head_sequence() == head, f"{group}: change-log head still moving after drain"
    assert store.load_positions(group) == last
    return head


# --- comparing stores -------------------------------------------------------------------------


def _record_images(dsn: str) -> dict[tuple[str, str, str], str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT source, table_name, record_key, fields, identifiers, version, position, "
            "deleted FROM up_source_records"
        ).fetchall()
    return {(r[0], r[1], r[2]): canonical(r[3:]) for r in rows}


def _assert_same_store(actual_dsn: str, reference_dsn: str) -> int:
    """The stores hold the same record images and the same profiles; returns the profile count."""
    images, reference_images = _record_images(actual_dsn), _record_images(reference_dsn)
    assert images.keys() == reference_images.keys()
    differing = [k for k in images if images[k] != reference_images[k]]
    assert not differing, f"record images differ: {[(k, images[k], reference_images[k]) for k in differing[:3]]}"
    profiles, reference = profiles_by_members(actual_dsn), profiles_by_members(reference_dsn)
    only_here = {sorted(k)[0]: v for k, v in profiles.items() if reference.get(k) != v}
    only_there = {sorted(k)[0]: v for k, v in reference.items() if profiles.get(k) != v}
    assert not only_here and not only_there, (
        f"profiles differ:\n  this store: {list(only_here.items())[:3]}\n"
        f"  reference:  {list(only_there.items())[:3]}"
    )
    return len(profiles)


def _in_batch(monitor: psycopg.Connection) -> bool:
    """Whether a session other than ours holds a write transaction in the store right now (the
    engine's batch: it starts by locking the change-log head row, which takes a transaction id)."""
    return bool(
        monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        ).fetchone()[0]
    )


# --- 1. SIGKILL mid-batch ---------------------------------------------------------------------


def test_engine_sigkilled_mid_batch_and_restarted_ends_as_an_uninterrupted_run(
    demo, new_database, unique_name, monkeypatch
):
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    store_dsn = _new_store(new_database, monkeypatch, "UP_TEST_STORE_DSN")
    reference_dsn = _new_store(new_database, monkeypatch, "UP_TEST_REFERENCE_DSN")
    group, reference_group = unique_name("killed"), unique_name("reference")
    killed_config = demo.write_config(
        "killed", group=group, store_env="UP_TEST_STORE_DSN", batch_events=16
    )
    reference_config = demo.write_config(
        "reference", group=reference_group, store_env="UP_TEST_REFERENCE_DSN"
    )
    traffic = Traffic(demo.source_dsn, seed)
    demo.start_capture()
    traffic.run(200)  # a backlog before the engine starts

    store = ProfileStore.connect(store_dsn)
    engine = EngineProcess(killed_config, demo.tmp / "killed-engine.log")
    reference = EngineThread(load_service_config(reference_config))
    kills_done = threading.Event()
    writer = threading.Thread(target=traffic.run, args=(150, 0.01, kills_done), daemon=True)
    writer.start()
    kills: list[dict[str, int]] = []
    try:
        with psycopg.connect(store_dsn, autocommit=True) as monitor:
            for _ in range(3):
                # This run commits at least one batch of its own, works a random while, and is
                # killed the moment it is seen inside a batch transaction.
                committed = sum(store.load_positions(group).values())
                wait_for(
                    lambda c=committed: sum(store.load_positions(group).values()) > c,
                    "the engine to commit a batch", died=[engine.died, reference.died],
                )
                time.sleep(rng.uniform(0.0, 0.6))
                wait_for(
                    lambda: _in_batch(monitor), "the engine inside a batch",
                    died=[engine.died], timeout=30, interval=0.002,
                )
                engine.kill()
                kills.append({"head": store.head_sequence(), "writes": traffic.writes})
                engine.restart()
            kills_done.set()
            writer.join(60)
        assert not writer.is_alive()
        demo.wait_captured()
        last = _last_offsets(demo.bootstrap, demo.topics)
        head = _wait_applied(store, group, last, died=[engine.died])
        reference_head = _wait_applied(
            reference.store, reference_group, last, died=[reference.died]
        )
        assert engine.stop() == 0, engine.log_tail()
    finally:
        kills_done.set()
        engine.stop()
        reference.stop()
        store.close()

    context = f"seed={seed}, kills={kills}, log: {demo.tmp / 'killed-engine.log'}"
    assert len(kills) == 3
    assert sum(last.values()) > 350, context  # snapshot and traffic: plenty to apply
    profiles = _assert_same_store(store_dsn, reference_dsn)
    assert profiles > 50, context
    assert assert_change_log_sound(store_dsn) == head, context
    assert assert_change_log_sound(reference_dsn) == reference_head
    # The killed batches left nothing behind: the kills happened between ``kills[i].head`` and
    # the next run's first commit, and the final log is still gap-free without repeats.
    assert all(k["head"] <= head for k in kills), context


# --- 2. two workers, one group ----------------------------------------------------------------


def test_two_engine_workers_in_one_group_end_as_a_single_engine(
    demo, new_database, unique_name, monkeypatch
):
    seed = random.randrange(1_000_000)
    store_dsn = _new_store(new_database, monkeypatch, "UP_TEST_STORE_DSN")
    reference_dsn = _new_store(new_database, monkeypatch, "UP_TEST_REFERENCE_DSN")
    group, reference_group = unique_name("pair"), unique_name("reference")
    # Nobody is killed here: a longer session keeps a loaded machine from causing rebalances
    # after the second worker joined (the assignment checks below read the last one).
    pair_config = demo.write_config(
        "pair", group=group, store_env="UP_TEST_STORE_DSN", batch_events=16,
        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    )
    reference_config = demo.write_config(
        "reference", group=reference_group, store_env="UP_TEST_REFERENCE_DSN"
    )
    traffic = Traffic(demo.source_dsn, seed)
    demo.start_capture()
    traffic.run(150)

    store = ProfileStore.connect(store_dsn)
    first = EngineProcess(pair_config, demo.tmp / "worker-1.log")
    second: EngineProcess | None = None
    reference = EngineThread(load_service_config(reference_config))
    try:
        # The second worker joins while the first is applying: the group rebalances mid-stream.
        wait_for(lambda: store.load_positions(group), "the first worker to commit a batch",
                  died=[first.died])
        second = EngineProcess(pair_config, demo.tmp / "worker-2.log")
        joined = second
        traffic.run(100, pace_s=0.005)
        # On a loaded machine the join can take a while: wait for it rather than assume it.
        wait_for(
            lambda: any(e["partitions"] for e in joined.log_events("kafka.partitions_assigned")),
            "the second worker to be given partitions",
            timeout=120,
            died=[first.died, second.died],
        )
        traffic.run(150, pace_s=0.005)
        demo.wait_captured()
        last = _last_offsets(demo.bootstrap, demo.topics)
        workers = [first, second]
        head = _wait_applied(store, group, last, died=[w.died for w in workers])
        reference_head = _wait_applied(
            reference.store, reference_group, last, died=[reference.died]
        )
        assignments = [w.log_events("kafka.partitions_assigned") for w in workers]
        for worker in workers:
            assert worker.stop() == 0, worker.log_tail()
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        reference.stop()
        store.close()

    # Both workers had partitions of their own at the end (the group split the work).
    mine = [set(a[-1]["partitions"]) if a else set() for a in assignments]
    assert all(mine), f"a worker ended with no partitions: {assignments}"
    assert not mine[0] & mine[1], f"a partition assigned to both workers: {mine}"
    assert mine[0] | mine[1] == demo.streams, f"unassigned: {demo.streams - mine[0] - mine[1]}"
    assert len(assignments[0]) >= 2, "the first worker never saw the group rebalance"

    assert sum(last.values()) > 350
    assert _assert_same_store(store_dsn, reference_dsn) > 50, f"seed={seed}"
    assert assert_change_log_sound(store_dsn) == head
    assert assert_change_log_sound(reference_dsn) == reference_head


# --- 3. dead letters --------------------------------------------------------------------------


@dataclass
class _Extra:
    """The engine's loop (as :func:`run_kafka_engine`) subscribed to some more topics."""

    topics: list[str] = field(default_factory=list)

    def __call__(self, config: ServiceConfig, store: ProfileStore, stop: threading.Event) -> None:
        transport = config.capture.transport
        assert isinstance(transport, KafkaConfig)
        pipeline = build_pipeline(config, store, transport.group_id)
        topics = [table_topic(s.name, t.table) for s in config.capture.sources for t in s.tables]
        source = KafkaEventSource(transport, topics + self.topics, pipeline.positions)
        KafkaIngest(source, pipeline, config.engine.batch_events).run(stop)


def _person(store: ProfileStore, full_name: str) -> dict[str, Any] | None:
    for profile in store.all_profiles().values():
        values = {path: f["value"] for path, f in profile.fields.items()}
        if values.get("person.full_name") == full_name:
            return values
    return None


def test_undecodable_and_unmapped_events_become_dead_letters_between_applied_events(
    demo, new_database, unique_name, monkeypatch
):
    _new_store(new_database, monkeypatch, "UP_TEST_STORE_DSN")
    group = unique_name("dead")
    config = load_service_config(
        demo.write_config("dead", group=group, store_env="UP_TEST_STORE_DSN")
    )
    customers = demo.topic("crm", "crm.customers")
    unknown = demo.topic("crm", "crm.invoices")  # no [[sources.tables]] entry maps it
    assert isinstance(config.capture.transport, KafkaConfig)
    # (without the consumer-only client options, which the admin client refuses)
    ensure_topics(config.capture.transport, [unknown])
    demo.start_capture()
    engine = EngineThread(config, target=_Extra([unknown]))
    producer = KafkaProducer(bootstrap_servers=demo.bootstrap, acks="all")
    try:
        # Valid events before: the snapshot of Tom Brown (CRM customer 2) and everyone else.
        wait_for(lambda: (tom := _person(engine.store, "Tom Brown")) and tom.get("loyalty.tier"),
                  "the demo snapshot", died=[engine.died])
        head = engine.store.head_sequence()

        # Keyed like customer 2's own events, so they land in its partition, between its
        # snapshot event and the update below.
        key = b'{"id":2}'
        source = {"name": demo.source_names["crm"], "schema": "crm", "table": "customers",
                  "lsn": 1, "ts_us": 1}
        bad = {
            "garbage": (customers, b"\x00\xffnot json at all\x9c"),
            "a list": (customers, b"[1, 2, 3]"),
            "an unknown op": (customers, json.dumps(
                {"before": None, "after": {"id": 2}, "source": source, "op": "x"}).encode()),
            "a row without the mapped columns": (customers, json.dumps(
                {"before": None, "after": {"id": 2}, "source": source, "op": "u"}).encode()),
            "an unmapped table": (unknown, json.dumps(
                {"before": None, "after": {"id": 2, "total": 10},
                 "source": {**source, "table": "invoices"}, "op": "c"}).encode()),
        }
        sent = {
            name: producer.send(topic, key=key, value=value).get(timeout=30)
            for name, (topic, value) in bad.items()
        }
        # Valid events after: Tom's CRM record and Sally's loyalty record change.
        with psycopg.connect(demo.source_dsn, autocommit=True) as conn:
            conn.execute("UPDATE crm.customers SET lifecycle_stage = 'customer', "
                         "updated_at = now() WHERE id = 2")
            conn.execute("UPDATE loyalty.members SET tier_code = 'PLT', updated_at = now() "
                         "WHERE member_id = 'LM-000101'")
        wait_for(
            lambda: (
                (tom := _person(engine.store, "Tom Brown"))
                and tom.get("crm.lifecycle_stage") == "customer"
                and (_person(engine.store, "Sally Smith") or {}).get("loyalty.tier") == "platinum"
            ),
            "the updates after the bad events", died=[engine.died],
        )
        dead = wait_for(lambda: (d := engine.store.dead_letters()) and len(d) >= len(bad) and d,
                         "the dead letters", died=[engine.died])
        updates = engine.store.read_changes_after(head)
        assert engine.died() is None
    finally:
        producer.close()
        engine.stop()

    assert len(dead) == len(bad), dead
    by_position = {(d["stream"], d["position"]): d for d in dead}
    expected_reasons = {
        "garbage": "record value is not JSON",
        "a list": "value is list, expected an object",
        "an unknown op": "value.op is 'x', expected one of c, u, d, r, t",
        "a row without the mapped columns": "not in the event's row",
        "an unmapped table": f"{unknown}: no [[sources.tables]] mapping for this topic's table",
    }
    for name, metadata in sent.items():
        letter = by_position.get((partition_stream(metadata.topic, metadata.partition),
                                  metadata.offset))
        assert letter is not None, f"{name}: no dead letter at its offset; have {dead}"
        assert expected_reasons[name] in letter["reason"], (name, letter["reason"])
        assert letter["consumer"] == group
        assert letter["topic"] == metadata.topic
        assert (letter["key"], letter["value"]) == (key, bad[name][1])  # kept byte for byte

    # The valid event after them in the same partition was applied, and caused by exactly that.
    (tom_update,) = [c for c in updates if "crm.lifecycle_stage" in c.changes]
    assert tom_update.changes["crm.lifecycle_stage"] == {"old": "prospect", "new": "customer"}
    (cause,) = [c for c in tom_update.cause if c["table"] == "crm.customers"]
    customers_dead = [d for d in dead if d["topic"] == customers]
    assert {d["stream"] for d in customers_dead} == {cause["stream"]}
    assert all(d["position"] < cause["position"] for d in customers_dead)


# --- 4. events that decode but break the engine -----------------------------------------------

_CUSTOMER_ROW = {
    "first_name": "Poison", "last_name": "Pill", "birth_date": None, "owner_email": None,
    "lifecycle_stage": "lead", "last_contacted_at": None, "notes": None,
    "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
    "deleted_at": None,
}

@pytest.mark.parametrize(
    ("source", "row", "names"),
    [
        pytest.param(
            {"lsn": "0/16B3748"}, {}, "lsn", id="textual-source-lsn",
        ),
        pytest.param(
            {"lsn": 3, "ts_us": None, "ts_ms": {"ms": 1}}, {}, "ts_ms", id="source-ts_ms-an-object",
        ),
        pytest.param(
            {"lsn": 3}, {"notes": "note\u0000with a NUL"}, "", id="nul-in-a-text-value",
        ),
    ],
)
def test_an_event_that_decodes_but_cannot_be_applied_is_a_dead_letter_not_a_stalled_engine(
    demo, new_database, unique_name, monkeypatch, source, row, names
):
    _new_store(new_database, monkeypatch, "UP_TEST_STORE_DSN")
    group = unique_name("poison")
    config = load_service_config(
        demo.write_config("poison", group=group, store_env="UP_TEST_STORE_DSN")
    )
    assert isinstance(config.capture.transport, KafkaConfig)
    ensure_topics(config.capture.transport, demo.topics)
    topic = demo.topic("crm", "crm.customers")
    crm = demo.source_names["crm"]

    def event(customer: int, source_fields: dict[str, Any], row_fields: dict[str, Any]) -> bytes:
        after = {**_CUSTOMER_ROW, "id": customer, "email": f"c{customer}@example.com"}
        return json.dumps({
            "before": None, "after": after | row_fields, "op": "c", "ts_ms": 1,
            "source": {"name": crm, "schema": "crm", "table": "customers", "ts_us": 1}
            | source_fields,
        }).encode()

    producer = KafkaProducer(bootstrap_servers=demo.bootstrap, acks="all")
    try:
        # A valid event, the bad one, a valid one: in one partition, in this order.
        for customer, value in [
            (9001, event(9001, {"lsn": 1}, {})),
            (9002, event(9002, source, row)),
            (9003, event(9003, {"lsn": 2}, {})),
        ]:
            key = json.dumps({"id": customer}, separators=(",", ":")).encode()
            producer.send(topic, key=key, value=value, partition=0).get(timeout=30)
    finally:
        producer.close()

    engine = EngineThread(config)
    try:
        wait_for(
            lambda: {p.get("crm.customer_id") for p in map(_values, engine.store.all_profiles().values())}
            >= {"9001", "9003"} and engine.store.dead_letters(),
            "the valid events applied and the bad one dead-lettered", died=[engine.died],
            timeout=30,
        )
        (letter,) = engine.store.dead_letters()
    finally:
        engine.stop()
    assert (letter["stream"], letter["position"]) == (partition_stream(topic, 0), 1)
    assert names in letter["reason"]


def _values(profile: Any) -> dict[str, Any]:
    return {path: f["value"] for path, f in profile.fields.items()}
