"""A replication slot dropped (as an operator would), or invalidated by the server (its WAL
removed under ``max_slot_wal_keep_size``).

With ``snapshot = "initial"`` the service refuses to start, saying what happened and how to fix
it (exit 3). With ``snapshot = "when_needed"`` it creates a new slot and re-reads the tables; a
record whose values did not change while the slot was gone causes no profile change.
"""

from __future__ import annotations

import json
import os
import signal

import psycopg
import pytest

from .support import (
    DemoSources,
    Deployment,
    RunProcess,
    assert_change_log_sound,
    head,
    reconcile,
    service_env,
    wait_for,
    write_config,
)


def _caught_up(service: RunProcess, deployment: Deployment, sources: DemoSources) -> None:
    targets = sources.wal_positions()
    wait_for(lambda: sources.confirmed_past(deployment.slots, targets),
             "the service to catch up", timeout=240, died=[service.died])


def _drop_slot(dsn: str, slot: str) -> None:
    """Drop ``slot``, ending the session reading it first (it may come back: repeat)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            conn.execute(
                "SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            try:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                continue
    raise AssertionError(f"slot {slot} kept being reacquired")


def _promote_a_member(loyalty_dsn: str) -> str:
    """Move the first member not yet platinum to platinum; return the member's id."""
    with psycopg.connect(loyalty_dsn, autocommit=True) as conn:
        row = conn.execute(
            "UPDATE loyalty.members SET tier_code = 'PLT', updated_at = now()"
            " WHERE member_id = (SELECT min(member_id) FROM loyalty.members"
            " WHERE tier_code <> 'PLT') RETURNING member_id").fetchone()
    assert row is not None, "every member is platinum already"
    return str(row[0])


def _changes_after(store_dsn: str, sequence: int) -> list[tuple[int, str, dict, list]]:
    with psycopg.connect(store_dsn) as conn:
        return conn.execute(
            "SELECT sequence, kind, changes, cause FROM up_change_log WHERE sequence > %s"
            " ORDER BY sequence", (sequence,)).fetchall()


def _assert_only_the_tier_change(
    store_dsn: str, before: int, member: str, deployment: Deployment, env: dict[str, str]
) -> None:
    """The one profile change after ``before`` is ``member``'s tier becoming platinum, made
    while the slot was gone: the re-read records of that profile are among its causes (they
    were recomputed with it), and no unchanged record caused a change of its own."""
    after = _changes_after(store_dsn, before)
    assert [(kind, changes) for _, kind, changes, _ in after] == [
        ("UPDATED", {"loyalty.tier": {"old": after[0][2]["loyalty.tier"]["old"],
                                      "new": "platinum"}})
    ], after[:5]
    causes = {(c["table"], json.dumps(c["key"])) for c in after[0][3]}
    assert ("loyalty.members", json.dumps({"member_id": member})) in causes
    assert assert_change_log_sound(store_dsn) == before + 1
    assert reconcile(deployment, env)[0] == 0


def _first_run(tmp_path, sources: DemoSources, store_dsn: str, suffix: str, snapshot: str):
    deployment = write_config(tmp_path, suffix, snapshot=snapshot)
    env = service_env(store_dsn, sources)
    service = RunProcess(deployment, env, tmp_path / "run.log")
    try:
        wait_for(lambda: head(store_dsn) > 300, "the snapshot", died=[service.died])
        _caught_up(service, deployment, sources)
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()
    return deployment, env


def test_lost_slot_with_snapshot_initial_refuses_and_names_the_fix(
    tmp_path, demo_sources, new_database, unique_name
):
    store_dsn = new_database("store")
    deployment, env = _first_run(tmp_path, demo_sources, store_dsn, unique_name("initial"),
                                 "initial")
    _drop_slot(demo_sources.dsns["loyalty"], deployment.slots["loyalty"])

    service = RunProcess(deployment, env, tmp_path / "refused.log")
    try:
        assert service.process.wait(120) == 3, service.log_tail()
    finally:
        service.stop()
    said = service.log.read_text()
    assert f"replication slot {deployment.slots['loyalty']!r} is gone" in said, said[-2000:]
    assert 'set snapshot = "when_needed"' in said
    # Nothing was re-read or changed.
    assert reconcile(deployment, env)[0] == 0


@pytest.mark.parametrize("when", ["stopped", "running"])
def test_lost_slot_with_when_needed_resnapshots_without_spurious_changes(
    tmp_path, demo_sources, new_database, unique_name, when
):
    store_dsn = new_database("store")
    deployment, env = _first_run(tmp_path, demo_sources, store_dsn, unique_name("needed"),
                                 "when_needed")
    before = head(store_dsn)
    loyalty = demo_sources.dsns["loyalty"]
    service: RunProcess | None = None
    try:
        if when == "stopped":
            _drop_slot(loyalty, deployment.slots["loyalty"])
            member = _promote_a_member(loyalty)
            service = RunProcess(deployment, env, tmp_path / "again.log")
        else:
            service = RunProcess(deployment, env, tmp_path / "again.log")
            wait_for(lambda: len(service.log_events("cdc.streaming")) >= 2, "streaming",
                     died=[service.died])
            _drop_slot(loyalty, deployment.slots["loyalty"])
            member = _promote_a_member(loyalty)
        wait_for(lambda: service.log_events("cdc.snapshot_completed"), "the re-snapshot",
                 died=[service.died])
        _caught_up(service, deployment, demo_sources)
        assert service.stop() == 0, service.log_tail()
    finally:
        if service is not None:
            service.stop()

    # The loyalty tables were read again in full ...
    (completed,) = service.log_events("cdc.snapshot_completed")
    assert completed["source"] == "loyalty" and completed["rows"] > 500
    # ... and the only profile change is the one made while the slot was gone.
    _assert_only_the_tier_change(store_dsn, before, member, deployment, env)


# --- invalidated by the server, not dropped -----------------------------------------------------


@pytest.fixture
def sources_loyalty_apart(own_postgres, new_database, seed) -> DemoSources:
    """The demo's sources, the loyalty database on a server of its own."""
    return DemoSources.create(new_database("crm"), own_postgres.create_database("loyalty"), 400,
                              seed)


def _invalidate_slot(dsn: str, slot: str) -> str:
    """Make the server invalidate ``slot`` (not in use) by removing WAL it needs; return why."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            for _ in range(30):
                # WAL nobody captures, then a new segment and a checkpoint, which invalidates
                # the slots that hold more than max_slot_wal_keep_size behind.
                conn.execute("SELECT pg_logical_emit_message(false, 'filler', repeat('x', 2000000))")
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
                row = conn.execute(
                    "SELECT wal_status, invalidation_reason FROM pg_replication_slots"
                    " WHERE slot_name = %s", (slot,)).fetchone()
                if row is not None and row[0] == "lost":
                    return str(row[1])
        finally:
            # The slot that replaces it must not be invalidated in turn.
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    raise AssertionError(f"slot {slot} was not invalidated")


def test_invalidated_slot_with_snapshot_initial_refuses_and_names_the_fix(
    tmp_path, sources_loyalty_apart, new_database, unique_name
):
    sources = sources_loyalty_apart
    store_dsn = new_database("store")
    deployment, env = _first_run(tmp_path, sources, store_dsn, unique_name("lost"), "initial")
    slot = deployment.slots["loyalty"]
    assert _invalidate_slot(sources.dsns["loyalty"], slot) == "wal_removed"

    service = RunProcess(deployment, env, tmp_path / "refused.log")
    try:
        assert service.process.wait(120) == 3, service.log_tail()
    finally:
        service.stop()
    said = service.log.read_text()
    assert f"replication slot {slot!r} was invalidated by the server (wal_removed)" in said, \
        said[-2000:]
    assert 'set snapshot = "when_needed"' in said and "max_slot_wal_keep_size" in said
    # The slot is left for the operator to see, and nothing was re-read or changed.
    with psycopg.connect(sources.dsns["loyalty"]) as conn:
        assert conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                            (slot,)).fetchone() == ("lost",)
    assert reconcile(deployment, env)[0] == 0


def test_invalidated_slot_with_when_needed_resnapshots_without_spurious_changes(
    tmp_path, sources_loyalty_apart, new_database, unique_name
):
    sources = sources_loyalty_apart
    store_dsn = new_database("store")
    deployment, env = _first_run(tmp_path, sources, store_dsn, unique_name("lostneeded"),
                                 "when_needed")
    before = head(store_dsn)
    loyalty = sources.dsns["loyalty"]
    # Made while the service is stopped: its WAL is among what the server removes.
    member = _promote_a_member(loyalty)
    _invalidate_slot(loyalty, deployment.slots["loyalty"])

    service = RunProcess(deployment, env, tmp_path / "again.log")
    try:
        wait_for(lambda: service.log_events("cdc.snapshot_completed"), "the re-snapshot",
                 died=[service.died])
        _caught_up(service, deployment, sources)
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()

    (invalidated,) = service.log_events("cdc.slot_invalidated")
    assert invalidated["source"] == "loyalty" and invalidated["reason"] == "wal_removed"
    assert invalidated["level"] == "warning"
    (completed,) = service.log_events("cdc.snapshot_completed")
    assert completed["source"] == "loyalty" and completed["rows"] > 500
    _assert_only_the_tier_change(store_dsn, before, member, deployment, env)


def test_a_slot_invalidated_while_streaming_is_recreated_without_a_restart(
    tmp_path, sources_loyalty_apart, new_database, unique_name
):
    # The service is paused (SIGSTOP) so that its slot, still held by the server's walsender,
    # falls behind; the server then ends that walsender and invalidates the slot. Resumed, the
    # service finds its stream gone and must recover by itself, in the same process.
    sources = sources_loyalty_apart
    store_dsn = new_database("store")
    deployment, env = _first_run(tmp_path, sources, store_dsn, unique_name("lostlive"),
                                 "when_needed")
    before = head(store_dsn)
    loyalty = sources.dsns["loyalty"]
    slot = deployment.slots["loyalty"]
    service = RunProcess(deployment, env, tmp_path / "live.log")
    try:
        wait_for(lambda: len(service.log_events("cdc.streaming")) >= 2, "streaming",
                 died=[service.died])
        pid = service.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            member = _promote_a_member(loyalty)
            assert _invalidate_slot(loyalty, slot) == "wal_removed"
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: service.log_events("cdc.snapshot_completed"), "the re-snapshot",
                 died=[service.died])
        _caught_up(service, deployment, sources)
        assert service.process.pid == pid and service.died() is None
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()

    (invalidated,) = service.log_events("cdc.slot_invalidated")
    assert invalidated["source"] == "loyalty" and invalidated["reason"] == "wal_removed"
    _assert_only_the_tier_change(store_dsn, before, member, deployment, env)
