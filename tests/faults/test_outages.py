"""Outages: the source PostgreSQL restarted, the store PostgreSQL restarted, the broker
unreachable for 30 s — while ``unified-profile run`` works under load.

Each test gets a PostgreSQL (or broker) of its own, so that it can stop it: the session's
server is shared. Nothing restarts the service: it must ride out the outage by itself, say so in
its log, and afterwards hold every change made meanwhile — ``reconcile`` finds no drift, the
change log is gap-free, and a subscriber that stayed connected throughout got all of it.

"Broker down" with Tansu: its storage is in memory, so a stopped broker comes back empty, which
is a lost cluster, not an outage. The broker is paused instead (SIGSTOP, then SIGCONT after
30 s): connections stay open and nothing answers — what clients see of an unreachable broker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from unified_profile_client import ProfileClient

from unified_profile.server.devstack import TansuBroker

from .support import (
    TOKEN,
    DemoSources,
    Deployment,
    RunProcess,
    Subscriber,
    assert_change_log_sound,
    change_log,
    head,
    reconcile,
    service_env,
    wait_for,
    write_config,
)


def _retries(service: RunProcess, prefix: str) -> list[dict]:
    return [e for e in service.log_events("retrying") if str(e.get("what", "")).startswith(prefix)]


def _under_load(
    service: RunProcess,
    deployment: Deployment,
    sources: DemoSources,
    store_dsn: str,
    env: dict[str, str],
    seed: int,
    outage: Callable[[], None],
    recovered: Callable[[], None] = lambda: None,
) -> Subscriber:
    """Write traffic, let ``outage`` happen, recover, drain; check nothing was lost.

    ``recovered`` runs once the service caught up, before it is stopped.
    """
    writer = sources.writer(seed, rate=25)
    subscriber = Subscriber(deployment.target)
    pid = service.process.pid
    try:
        wait_for(lambda: head(store_dsn) > 300, "the snapshot to be applied", died=[service.died])
        writer.start()
        wait_for(lambda: sum(writer.counts().values()) > 50, "traffic", died=[service.died])
        outage()
        wait_for(lambda: sum(writer.counts().values()) > 150, "traffic after the outage",
                 died=[service.died], timeout=180)
        writer.stop()
        targets = sources.wal_positions()
        wait_for(lambda: sources.confirmed_past(deployment.slots, targets),
                 "the service to catch up", timeout=240, died=[service.died])
        if "kafka" in deployment.config.read_text():
            wait_for(lambda: reconcile(deployment, env)[0] == 0, "the engine to catch up",
                     timeout=240, died=[service.died], interval=2.0)
        final = head(store_dsn)
        wait_for(lambda: subscriber.last_sequence() >= final, f"the subscriber to reach {final}",
                 timeout=120, died=[service.died])
        # Reads are served again too.
        with ProfileClient(deployment.target, token=TOKEN, timeout=20) as client:
            assert client.lookup("email", "sally.smith@example.com").loyalty.tier
        recovered()
        assert service.process.pid == pid and service.died() is None
        assert service.stop() == 0, service.log_tail()
    finally:
        writer.stop()
        subscriber.close()
        service.stop()
    assert subscriber.error is None, repr(subscriber.error)
    assert assert_change_log_sound(store_dsn) == final
    assert subscriber.received == change_log(store_dsn)
    code, report = reconcile(deployment, env)
    assert code == 0, f"drift after the outage: {report}"
    return subscriber


def test_source_postgres_restarted_while_running(
    own_postgres, new_database, unique_name, tmp_path, seed
):
    sources = DemoSources.create(
        own_postgres.create_database("crm"), own_postgres.create_database("loyalty"), 400, seed
    )
    store_dsn = new_database("store")
    deployment = write_config(tmp_path, unique_name("srcpg"))
    env = service_env(store_dsn, sources)
    service = RunProcess(deployment, env, tmp_path / "run.log")

    def restart_source() -> None:
        own_postgres.stop()
        # Down until both connectors said they are retrying, and a while longer.
        wait_for(lambda: {e["what"] for e in _retries(service, "cdc.")} >= {"cdc.crm",
                 "cdc.loyalty"}, "the connectors to retry", died=[service.died])
        time.sleep(5)
        own_postgres.start()

    _under_load(service, deployment, sources, store_dsn, env, seed, restart_source)
    retry = _retries(service, "cdc.")[0]
    assert retry["level"] == "warning" and retry["error"] and retry["next_in_s"] > 0


def test_store_postgres_restarted_while_running(
    own_postgres, demo_sources, unique_name, tmp_path, seed
):
    store_dsn = own_postgres.create_database("store")
    deployment = write_config(tmp_path, unique_name("storepg"))
    env = service_env(store_dsn, demo_sources)
    service = RunProcess(deployment, env, tmp_path / "run.log")

    def restart_store() -> None:
        own_postgres.stop()
        wait_for(lambda: _retries(service, "engine."), "the engine to retry",
                 died=[service.died])
        time.sleep(5)
        own_postgres.start()

    def still_the_only_run() -> None:
        # The restart ended the connection holding the store's lock; the service took it again,
        # so a second run on the store is still refused.
        wait_for(lambda: service.log_events("run.store_claim_retaken"), "the claim retaken",
                 died=[service.died])
        second = RunProcess(deployment, env, tmp_path / "second.log")
        assert second.process.wait(120) == 3, second.log_tail()
        assert "another unified-profile run is using this profile store" in second.log_tail()

    _under_load(service, deployment, demo_sources, store_dsn, env, seed, restart_store,
                still_the_only_run)
    retry = _retries(service, "engine.")[0]
    assert retry["level"] == "warning" and retry["error"]


@pytest.mark.faults_long
def test_broker_unreachable_for_30_seconds(demo_sources, new_database, unique_name, tmp_path,
                                           seed):
    broker = TansuBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    store_dsn = new_database("store")
    deployment = write_config(tmp_path, unique_name("broker"), kafka=broker.bootstrap_servers)
    env = service_env(store_dsn, demo_sources)
    service = RunProcess(deployment, env, tmp_path / "run.log")

    def pause_broker() -> None:
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            os.kill(broker.pid, signal.SIGCONT)

    try:
        _under_load(service, deployment, demo_sources, store_dsn, env, seed, pause_broker)
    finally:
        broker.stop()
    # The connectors said, in the service's own words, that the broker stopped acknowledging,
    # and that it came back.
    stalled = service.log_events("cdc.sink_stalled")
    assert {e["source"] for e in stalled} >= {"crm", "loyalty"}, service.log_tail()
    assert all(e["level"] == "warning" and "broker" in e["note"] for e in stalled)
    assert {e["source"] for e in service.log_events("cdc.sink_recovered")} >= {"crm", "loyalty"}
