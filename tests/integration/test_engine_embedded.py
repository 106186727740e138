"""The embedded transport end to end: connector and engine in one process, no broker.

Uses the second example, a CRM whose schema looks nothing like the demo's (quoted camelCase
columns, composite name columns, a jsonb array of extra emails, soft deletes).
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from unified_profile.cdc.config import read_config_file
from unified_profile.cdc.connector import Connector, heartbeat_topic
from unified_profile.cdc.envelope import ChangeEvent
from unified_profile.cdc.sink import SinkGroup
from unified_profile.server.config import parse_service_config
from unified_profile.server.engine.records import Identifier
from unified_profile.server.ingest.consumers import EmbeddedIngest
from unified_profile.server.ingest.service import build_pipeline, open_store
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import StoreOffsetStore

from ..waiting import wait_for

pytestmark = pytest.mark.integration

ACME = Path(__file__).resolve().parents[2] / "examples" / "acme"


def test_acme_crm_through_the_embedded_transport(new_database, unique_name, monkeypatch):
    source_dsn = new_database("acme_src")
    store_dsn = new_database("acme_store")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute((ACME / "schema.sql").read_text())
        conn.execute((ACME / "seed.sql").read_text())
    monkeypatch.setenv("UP_STORE_DSN", store_dsn)
    monkeypatch.setenv("UP_ACME_DSN", source_dsn)
    data = read_config_file(ACME / "unified-profile.toml")
    slot = unique_name("acme")
    data["sources"][0].update(slot=slot, publication=slot, status_interval_s=0.5)
    config = parse_service_config(data, "acme")
    migrate.upgrade(store_dsn)
    store = open_store(config)
    source = config.capture.sources[0]
    sinks = SinkGroup()
    connector = Connector(source, sinks.add(source.name), StoreOffsetStore(store))
    ingest = EmbeddedIngest(sinks, build_pipeline(config, store, "embedded"))
    stop = threading.Event()
    threads = [threading.Thread(target=connector.run, args=(stop,)),
               threading.Thread(target=ingest.run, args=(stop,))]
    for thread in threads:
        thread.start()
    try:
        def people():
            found = {}
            for profile in store.all_profiles().values():
                fields = {path: f["value"] for path, f in profile.fields.items()}
                if "person.full_name" in fields:
                    found[fields["person.full_name"]] = (profile, fields)
            return found if len(found) == 3 else None

        found = wait_for(people, what="three acme people")
        assert set(found) == {"Sally Smith", "Raj Mehta", "Kim"}   # Eve is soft-deleted
        raj_profile, raj = found["Raj Mehta"]
        assert raj["person.birth_date"] == "1990-02-28"           # from the jsonb custom fields
        assert raj["traits.lifetime_value"] == 250
        assert {"raj@mehta.example", "raj.mehta@oldjob.example", "raj@personal.example"} <= {
            value for kind, value in raj_profile.identifiers if kind == "email"
        }
        assert store.find_profile(Identifier("email", "raj@personal.example")) == \
            raj_profile.profile_id
        assert found["Sally Smith"][1]["contact.address.country"] == "GB"

        head = store.head_sequence()
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute('UPDATE "workspace_7f3a"."person" SET "nameFirstName" = \'Rajesh\', '
                         '"updatedAt" = now() WHERE "nameFirstName" = \'Raj\'')
        (change,) = wait_for(lambda: [c for c in store.read_changes_after(head)
                                       if "person.given_name" in c.changes], what="the rename")
        assert change.profile_id == raj_profile.profile_id
        assert change.changes["person.given_name"] == {"old": "Raj", "new": "Rajesh"}
        # The source position is stored with the effects; the slot is confirmed after them.
        assert store.load_positions("embedded")[f"source:{source.name}"] > 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        store.close()
    with psycopg.connect(source_dsn) as conn:
        (confirmed,) = conn.execute(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots "
            "WHERE slot_name = %s", (slot,)).fetchone()
    assert confirmed >= store_position_floor(store_dsn)


def test_heartbeats_are_acknowledged_without_waiting_for_the_store(
    new_database, monkeypatch
):
    """An idle source's heartbeats let its slot advance even while another batch holds the store.

    They store nothing, so acknowledging them must not wait for the change-log head, which an
    applying transaction (another source's, another engine's) holds until it commits.
    """
    store_dsn = new_database("acme_store")
    monkeypatch.setenv("UP_STORE_DSN", store_dsn)
    monkeypatch.setenv("UP_ACME_DSN", store_dsn)
    config = parse_service_config(read_config_file(ACME / "unified-profile.toml"), "acme")
    migrate.upgrade(store_dsn)
    store = open_store(config)
    source = config.capture.sources[0]
    sinks = SinkGroup()
    sink = sinks.add(source.name)
    ingest = EmbeddedIngest(sinks, build_pipeline(config, store, "embedded"))
    stop = threading.Event()
    thread = threading.Thread(target=ingest.run, args=(stop,))
    with psycopg.connect(store_dsn) as holder:
        holder.execute("SELECT sequence FROM up_change_log_head WHERE id = 1 FOR UPDATE")
        thread.start()
        try:
            heartbeat = ChangeEvent(
                topic=heartbeat_topic(source.name), key={"serverName": source.name},
                value={"ts_ms": 1}, lsn=1234,
            )
            published = sink.publish([heartbeat])
            wait_for(
                lambda: sink.acknowledged() >= published, what="the heartbeat acknowledged",
                timeout=15,
            )
        finally:
            holder.rollback()
            stop.set()
            thread.join(60)
            store.close()


def store_position_floor(store_dsn: str) -> int:
    """The highest source LSN the store says it applied."""
    with psycopg.connect(store_dsn) as conn:
        (position,) = conn.execute("SELECT max(position) FROM up_positions").fetchone()
    return int(position)
