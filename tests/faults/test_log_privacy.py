"""No personal data in the service's log at info level, whatever happens.

``unified-profile run`` works through the snapshot of the demo's people, their traffic, a change
the mapping rejects (a dead letter), refused and failing gRPC calls, and a restart. Then every
email, phone number and full name the sources hold is looked for in its log: none may appear.
Keys, ids and positions are what the log is for; values are what it must never carry.
"""

from __future__ import annotations

import psycopg
import pytest
from unified_profile_client import ProfileClient, ProfileServiceError, StatusCode

from .support import (
    TOKEN,
    DemoSources,
    RunProcess,
    head,
    service_env,
    wait_for,
    write_config,
)

#: A member whose tier the mapping cannot translate: their change becomes a dead letter.
_UNMAPPED_TIER = "DIA"


def _personal_values(sources: DemoSources) -> set[str]:
    """Every email, phone number and full name in the source databases (at least 6 chars)."""
    queries = {
        "crm": [
            "SELECT email FROM crm.customers",
            "SELECT first_name || ' ' || last_name FROM crm.customers",
            "SELECT phone FROM crm.contact_details",
        ],
        "loyalty": [
            "SELECT email FROM loyalty.members",
            "SELECT given_name || ' ' || family_name FROM loyalty.members",
            "SELECT mobile FROM loyalty.members",
        ],
    }
    values: set[str] = set()
    for database, statements in queries.items():
        with psycopg.connect(sources.dsns[database]) as conn:
            for statement in statements:
                values.update(
                    str(v).strip() for (v,) in conn.execute(statement) if v and len(str(v)) >= 6
                )
    return values


def _reject_a_members_change(sources: DemoSources) -> str:
    """Give one member a tier the mapping does not know; return their member id."""
    with psycopg.connect(sources.dsns["loyalty"]) as conn:
        conn.execute(
            "INSERT INTO loyalty.tiers (code, name, min_points) VALUES (%s, 'Diamond', 1000000)",
            (_UNMAPPED_TIER,),
        )
        row = conn.execute(
            "UPDATE loyalty.members SET tier_code = %s, updated_at = now()"
            " WHERE member_id = (SELECT min(member_id) FROM loyalty.members) RETURNING member_id",
            (_UNMAPPED_TIER,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _misuse_the_api(target: str, email: str) -> None:
    """Calls a client might get wrong: an unknown email, a bad token, a malformed id."""
    with ProfileClient(target, token=TOKEN, timeout=10) as client:
        with pytest.raises(ProfileServiceError):
            client.lookup("email", "nobody." + email)
        with pytest.raises(ProfileServiceError):
            client.get("not a profile id " + email)
    with ProfileClient(target, token="wrong-" + TOKEN, timeout=10) as client:
        with pytest.raises(ProfileServiceError) as refused:
            client.lookup("email", email)
        assert refused.value.code == StatusCode.UNAUTHENTICATED


def test_the_info_log_carries_no_personal_data(demo_sources, new_database, tmp_path, seed):
    store_dsn = new_database("store")
    deployment = write_config(tmp_path, "privacy")
    env = service_env(store_dsn, demo_sources)
    log = tmp_path / "run.log"
    service = RunProcess(deployment, env, log)
    writer = demo_sources.writer(seed, rate=25)
    try:
        wait_for(lambda: head(store_dsn) > 300, "the snapshot", died=[service.died])
        writer.start()
        wait_for(lambda: sum(writer.counts().values()) > 60, "traffic", died=[service.died])
        member = _reject_a_members_change(demo_sources)
        wait_for(lambda: service.log_events("ingest.dead_letter"), "the dead letter",
                 died=[service.died])
        _misuse_the_api(deployment.target, "sally.smith@example.com")
        assert service.stop() == 0, service.log_tail()
        service.restart()
        wait_for(lambda: sum(writer.counts().values()) > 120, "traffic after the restart",
                 died=[service.died])
        writer.stop()
        targets = demo_sources.wal_positions()
        wait_for(lambda: demo_sources.confirmed_past(deployment.slots, targets),
                 "the service to catch up", timeout=240, died=[service.died])
        assert service.stop() == 0, service.log_tail()
    finally:
        writer.stop()
        service.stop()

    text = log.read_text(errors="replace")
    # The log did record what happened, by keys: the test would prove nothing otherwise.
    [letter] = [e for e in service.log_events("ingest.dead_letter") if member in str(e)]
    assert letter["level"] == "warning", letter
    assert service.log_events("cdc.snapshot_completed")
    values = _personal_values(demo_sources)
    assert len(values) > 1000, "the sources should hold the demo's people"
    leaked = sorted(v for v in values if v in text)
    assert not leaked, f"personal data in the info log: {leaked[:5]}"
    assert "sally.smith@example.com" not in text
    assert "wrong-" + TOKEN not in text and TOKEN not in text
