"""A 10 MB row written to a captured table while ``unified-profile run`` works.

A Kafka broker refuses a record that large (``message.max.bytes``, 1 MB by default), and one
re-sent after every restart would hold the replication slot for good; stored, it would make every
read and change stream of its profile exceed gRPC's message limit. So the connector keeps events
within ``max_event_bytes`` (1,000,000 by default) and sends a small marker in place of a larger one.
What the user gets, on both transports: the row is a dead letter whose reason names the source,
table, key, size and limit and how to raise it; it is counted in ``up_dead_letters_total``; every
other change keeps flowing and the slot moves on. Once the limit is raised, ``dead-letters
replay`` reads the row again from the source and applies it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from unified_profile_client import ProfileClient

from unified_profile.server.devstack import TansuBroker, pick_free_port

from .support import (
    TOKEN,
    DemoSources,
    Deployment,
    RunProcess,
    head,
    reconcile,
    service_env,
    wait_for,
    write_config,
)

BIG = 10_000_000  # characters of the oversized value (ASCII: as many bytes)


def _with_metrics(deployment: Deployment) -> int:
    port = pick_free_port()
    with deployment.config.open("a") as config:
        config.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    return port


def _raise_limit(deployment: Deployment, limit: int) -> None:
    text = deployment.config.read_text()
    raised = text.replace("status_interval_s = 0.2\n",
                          f"status_interval_s = 0.2\nmax_event_bytes = {limit}\n")
    assert raised.count("max_event_bytes") == 2
    deployment.config.write_text(raised)


def _dead_letters(config: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "unified_profile.server.cli", "--log-level", "warning",
         "dead-letters", *args, "--config", str(config), "--json"],
        env=env, capture_output=True, timeout=300, check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    return done.returncode, done.stdout.decode()


def _listed(config: Path, env: dict[str, str]) -> list[dict]:
    code, out = _dead_letters(config, env, "list")
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def _dead_letter_counts(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {m[0]: float(m[1]) for m in
            re.findall(r'^up_dead_letters_total\{topic="([^"]+)"\} (\S+)$', text, re.M)}


def _stored_length(store_dsn: str, source: str, table: str, key: dict, path: str) -> int | None:
    """Length of a profile field's value, for the profile holding this record (from the store:
    a 10 MB value is more than a gRPC read may carry)."""
    with psycopg.connect(store_dsn) as conn:
        row = conn.execute(
            "SELECT length(p.fields -> 'values' ->> %s) FROM up_source_records r"
            " JOIN up_profiles p ON p.profile_id = r.profile_id"
            " WHERE r.source = %s AND r.table_name = %s AND r.record_key::jsonb = %s::jsonb"
            " AND NOT r.deleted",
            (path, source, table, json.dumps(key)),
        ).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def broker_of(tmp_path) -> Iterator[Callable[[str], str | None]]:
    """The bootstrap servers for a transport: a broker of the test's own for ``kafka``.

    Not the session's broker: the demo's topics (``crm.crm.customers`` …) have the same names
    in every test that runs the demo config, and another test would read these records.
    """
    broker: TansuBroker | None = None

    def bootstrap(transport: str) -> str | None:
        nonlocal broker
        if transport != "kafka":
            return None
        broker = TansuBroker(log_path=tmp_path / "tansu.log")
        broker.start()
        return broker.bootstrap_servers

    yield bootstrap
    if broker is not None:
        broker.stop()


@pytest.mark.parametrize("transport", ["embedded", "kafka"])
def test_a_10_mb_row_is_dead_lettered_and_replayed_once_the_limit_is_raised(
    tmp_path, demo_sources: DemoSources, new_database, unique_name, broker_of, transport
):
    kafka = broker_of(transport)
    store_dsn = new_database("store")
    deployment = write_config(tmp_path, unique_name("big"), kafka=kafka)
    metrics_port = _with_metrics(deployment)
    env = service_env(store_dsn, demo_sources)
    crm, loyalty = demo_sources.dsns["crm"], demo_sources.dsns["loyalty"]
    with psycopg.connect(crm) as conn:
        (big_customer, old_notes), (other_customer, _) = conn.execute(
            "SELECT id, notes FROM crm.customers WHERE deleted_at IS NULL AND notes IS NOT NULL"
            " ORDER BY id LIMIT 2").fetchall()
    with psycopg.connect(loyalty) as conn:
        member, entry = conn.execute(
            "SELECT min(member_id), max(entry_id) + 1 FROM loyalty.points_ledger").fetchone()

    service = RunProcess(deployment, env, tmp_path / "run.log")
    try:
        wait_for(lambda: head(store_dsn) > 300, "the snapshot", died=[service.died])
        pid = service.process.pid
        with psycopg.connect(crm, autocommit=True) as conn:
            # A mapped column (traits.crm_notes) ...
            conn.execute("UPDATE crm.customers SET notes = repeat('0123456789', %s),"
                         " updated_at = now() WHERE id = %s", (BIG // 10, big_customer))
            # ... then a change to another column of that row (its 10 MB notes unchanged), and
            # to another row.
            conn.execute("UPDATE crm.customers SET first_name = 'Bigrow', updated_at = now()"
                         " WHERE id = %s", (big_customer,))
            conn.execute("UPDATE crm.customers SET last_name = 'Afterwards', updated_at = now()"
                         " WHERE id = %s", (other_customer,))
        with psycopg.connect(loyalty, autocommit=True) as conn:
            # A column no profile field uses: the row is too large all the same.
            conn.execute("INSERT INTO loyalty.points_ledger (entry_id, member_id, points, reason)"
                         " VALUES (%s, %s, 5, repeat('x', %s))", (entry, member, BIG))
        targets = demo_sources.wal_positions()
        # The slots move past the big rows: nothing holds them.
        wait_for(lambda: demo_sources.confirmed_past(deployment.slots, targets),
                 "the slots to move past the big rows", timeout=240, died=[service.died])
        letters = wait_for(lambda: len(found := _listed(deployment.config, env)) >= 2 and found,
                           "the dead letters", died=[service.died])

        # Everything else arrived, the changes to the big row's other columns included.
        with ProfileClient(deployment.target, token=TOKEN, timeout=20) as client:
            def name(customer: int) -> tuple[str, str]:
                person = client.lookup("crm_id", str(customer)).person
                return person.given_name, person.family_name

            wait_for(lambda: name(big_customer)[0] == "Bigrow"
                     and name(other_customer)[1] == "Afterwards",
                     "the changes after the big rows", died=[service.died])
            # The profile keeps the value it had before the big one.
            notes = client.lookup("crm_id", str(big_customer)).traits["crm_notes"]
            assert notes.string_value == old_notes

        counts = _dead_letter_counts(metrics_port)
        assert counts.get("crm.crm.customers") == 1.0, counts
        assert counts.get("loyalty.loyalty.points_ledger") == 1.0, counts
        assert service.process.pid == pid and service.died() is None
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()

    # Each dead letter says what, where, how large, the limit, and what to do.
    assert len(letters) == 2, letters
    by_table = {letter["topic"]: letter["reason"] for letter in letters}
    for topic, key in (("crm.crm.customers", {"id": big_customer}),
                       ("loyalty.loyalty.points_ledger", {"entry_id": entry})):
        reason = by_table[topic]
        source, table = topic.split(".", 1)
        assert f"source {source!r} table {table} key {json.dumps(key, separators=(',', ':'))}" \
            in reason, reason
        size = int(re.search(r"is ([\d,]+) bytes", reason)[1].replace(",", ""))
        assert size > BIG
        assert "over max_event_bytes = 1,000,000" in reason
        assert "raise max_event_bytes" in reason and "dead-letters replay" in reason
    oversized = service.log_events("cdc.event_oversized")
    assert {(e["source"], e["bytes"] > BIG) for e in oversized} == {("crm", True),
                                                                   ("loyalty", True)}

    # Replayed with the limit as it is, they stay.
    code, out = _dead_letters(deployment.config, env, "replay", "--all")
    assert code == 1 and json.loads(out)["applied"] == []

    # With the limit raised, replay reads both rows again and applies them.
    _raise_limit(deployment, 32 * 1024 * 1024)
    code, out = _dead_letters(deployment.config, env, "replay", "--all")
    report = json.loads(out)
    assert code == 0, report
    assert sorted(report["applied"]) == sorted(letter["id"] for letter in letters)
    assert _listed(deployment.config, env) == []
    assert _stored_length(store_dsn, "crm", "crm.customers", {"id": big_customer},
                          "traits.crm_notes") == BIG
    assert _stored_length(store_dsn, "loyalty", "loyalty.points_ledger", {"entry_id": entry},
                          "loyalty.member_id") is not None
    assert reconcile(deployment, env)[0] == 0
