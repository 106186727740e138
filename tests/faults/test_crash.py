"""Crash anywhere: ``unified-profile run`` SIGKILLed at random moments under load, many times.

A seeded simulator writes customer traffic into the demo's CRM and loyalty databases the whole
time; a subscriber (the Python client's ``watch``) follows the change log across every crash.
Each kill lands either a random while after the (re)start — during start-up, migration, the
snapshot or streaming — or the moment the service is seen inside a store transaction. At the end
the writer stops, the service catches up, and:

- the store equals a from-scratch recompute of the source databases (a fresh ``run`` snapshotting
  them into a fresh store), and ``reconcile`` finds no drift;
- the change log is gap-free, with no change logged twice for one source event;
- the subscriber received every change-log entry exactly once, in order.

Only the ``run`` process is killed: PostgreSQL (and the broker) are the fixtures'.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg
import pytest

from unified_profile.server.devstack import TansuBroker

from .support import (
    DemoSources,
    RunProcess,
    Subscriber,
    assert_change_log_sound,
    assert_same_as_recompute,
    change_log,
    head,
    recompute,
    reconcile,
    service_env,
    wait_for,
    write_config,
)

KILLS = 20


def _in_store_transaction(monitor: psycopg.Connection) -> bool:
    """Whether another session holds a write transaction in the store right now (a batch, a
    migration, a connector offset being saved)."""
    row = monitor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
    ).fetchone()
    return bool(row and row[0])


def _crash_repeatedly(
    service: RunProcess, store_dsn: str, rng: random.Random, kills: int, log: list[str]
) -> None:
    with psycopg.connect(store_dsn, autocommit=True) as monitor:
        for number in range(kills):
            if rng.random() < 0.5:
                delay = rng.uniform(0.2, 8.0)
                time.sleep(delay)
                moment = f"{delay:.1f}s after start"
            else:
                time.sleep(rng.uniform(0.0, 3.0))
                wait_for(
                    lambda: _in_store_transaction(monitor), "the service inside a transaction",
                    timeout=120, died=[service.died], interval=0.002,
                )
                moment = "inside a store transaction"
            assert service.died() is None, f"before kill {number + 1}: {service.died()}"
            service.kill()
            log.append(f"kill {number + 1}: {moment}, head {head(store_dsn)}")
            service.restart()


def _crash_run(
    tmp_path: Path,
    demo_sources: DemoSources,
    new_database,
    unique_name,
    seed: int,
    kafka: str | None,
) -> None:
    rng = random.Random(seed)
    store_dsn = new_database("store")  # not migrated: run migrates it (and is killed doing it)
    deployment = write_config(tmp_path, unique_name("crash"), kafka=kafka, batch_events=64)
    env = service_env(store_dsn, demo_sources)
    service = RunProcess(deployment, env, tmp_path / "crashed-run.log")
    writer = demo_sources.writer(seed, rate=25)
    subscriber: Subscriber | None = None
    kills: list[str] = []
    context = f"seed={seed}, log {service.log}"
    try:
        writer.start()
        subscriber = Subscriber(deployment.target)
        _crash_repeatedly(service, store_dsn, rng, KILLS, kills)
        writer.stop()
        assert writer.failures == 0, "the writer could not commit to the sources"
        targets = demo_sources.wal_positions()
        if kafka is None:
            # Embedded: a slot is confirmed only past what the store committed.
            wait_for(lambda: demo_sources.confirmed_past(deployment.slots, targets),
                     "the service to catch up", timeout=300, died=[service.died])
        else:
            # Kafka: confirmed means the broker has it; the engine catches up after.
            wait_for(lambda: demo_sources.confirmed_past(deployment.slots, targets),
                     "the connectors to catch up", timeout=300, died=[service.died])
            wait_for(lambda: reconcile(deployment, env)[0] == 0, "the engine to catch up",
                     timeout=300, died=[service.died], interval=2.0)
        final_head = head(store_dsn)
        wait_for(lambda: subscriber.last_sequence() >= final_head,
                 f"the subscriber to reach {final_head}", died=[lambda: _failed(subscriber)])
        assert service.stop() == 0, service.log_tail()
    finally:
        writer.stop()
        if subscriber is not None:
            subscriber.close()
        service.stop()
    context += f", kills: {kills}"
    print(context)

    assert service.kills == KILLS
    assert sum(writer.counts().values()) > 100, context
    # The subscriber ran across every crash and got the log exactly once, in order.
    assert subscriber.error is None, f"{subscriber.error!r} ({context})"
    assert subscriber.reconnects >= 1, context
    logged = change_log(store_dsn)
    assert assert_change_log_sound(store_dsn) == final_head == len(logged), context
    sequences = [s for s, _, _ in subscriber.received]
    assert sequences == sorted(set(sequences)), f"duplicates or disorder: {context}"
    assert subscriber.received == logged, (
        f"the subscriber's changes differ from the change log ({context}): missing "
        f"{sorted(set(logged) - set(subscriber.received))[:5]}, unexpected "
        f"{sorted(set(subscriber.received) - set(logged))[:5]}"
    )
    # The store is what the sources say, now.
    code, report = reconcile(deployment, env)
    assert code == 0, f"reconcile found drift ({context}): {report}"
    recompute_dsn = new_database("recompute")
    recompute(tmp_path, demo_sources, recompute_dsn, unique_name("recompute"),
              tmp_path / "recompute.log")
    assert assert_same_as_recompute(store_dsn, recompute_dsn, context) > 300, context


def test_run_sigkilled_twenty_times_under_load_equals_a_recompute(
    tmp_path, demo_sources, new_database, unique_name, seed
):
    _crash_run(tmp_path, demo_sources, new_database, unique_name, seed, kafka=None)


@pytest.mark.faults_long
def test_run_on_kafka_sigkilled_twenty_times_under_load_equals_a_recompute(
    tmp_path, demo_sources, new_database, unique_name, seed
):
    broker = TansuBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        _crash_run(tmp_path, demo_sources, new_database, unique_name, seed,
                   kafka=broker.bootstrap_servers)
    finally:
        broker.stop()


def _failed(subscriber: Subscriber) -> str | None:
    return None if subscriber.error is None else f"subscriber failed: {subscriber.error!r}"
