"""The demo CRM and loyalty databases → connectors → Kafka → engine → the profile store."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from kafka.admin import KafkaAdminClient

from unified_profile.cdc.config import read_config_file
from unified_profile.cdc.kafka import partition_stream
from unified_profile.server.capture import CaptureService
from unified_profile.server.config import ServiceConfig, parse_service_config
from unified_profile.server.ingest.service import open_store, run_kafka_engine
from unified_profile.server.store import migrate

from ..waiting import wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def demo_config(example: str, bootstrap: str, suffix: str) -> ServiceConfig:
    """The example's config, on Kafka, with slots, offsets and group unique to this test."""
    data = read_config_file(EXAMPLES / example / "unified-profile.toml")
    data["transport"] = {
        "kind": "kafka",
        "bootstrap_servers": bootstrap,
        "topic_partitions": 2,
        "offsets_topic": f"offsets_{suffix}",
        "group_id": f"engine_{suffix}",
    }
    for source in data["sources"]:
        source["slot"] = source["publication"] = f"{source['name']}_{suffix}"
        source["status_interval_s"] = 0.5
    return parse_service_config(data, example)


def _kafka_offsets(bootstrap: str, group: str) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {partition_stream(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}


def _profiles(store) -> dict[str, dict[str, object]]:
    return {
        pid: {path: f["value"] for path, f in p.fields.items()}
        for pid, p in store.all_profiles().items()
    }


def _by_name(profiles: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(p.get("person.full_name")): p for p in profiles.values()}


def test_demo_people_become_the_right_profiles_and_live_changes_follow(
    new_database, kafka_bootstrap, unique_name, tmp_path, monkeypatch
):
    source_dsn = new_database("demo_src")
    store_dsn = new_database("demo_store")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute((EXAMPLES / "demo" / "schema.sql").read_text())
        conn.execute((EXAMPLES / "demo" / "seed.sql").read_text())
    for name, value in {
        "UP_STORE_DSN": store_dsn,
        "UP_CRM_DSN": source_dsn,
        "UP_LOYALTY_DSN": source_dsn,
        "UP_TOKEN_LOYALTY": "loyalty-token-0123456789",
        "UP_TOKEN_CRM": "crm-token-0123456789abc",
    }.items():
        monkeypatch.setenv(name, value)
    config = demo_config("demo", kafka_bootstrap, unique_name("demo"))
    migrate.upgrade(store_dsn)
    store = open_store(config)
    capture = CaptureService(config.capture, config.capture.sources)
    stop_engine = threading.Event()
    engine = threading.Thread(target=run_kafka_engine, args=(config, store, stop_engine))
    capture.start()
    engine.start()
    try:
        profiles = wait_for(
            lambda: (
                (p := _profiles(store))
                and len(p) == 8
                and _by_name(p).get("Sally Smith", {}).get("loyalty.tier")
                and p
            ),
            what="the 8 demo people",
        )
        people = _by_name(profiles)
        assert set(people) == {
            "Sally Smith",
            "Tom Brown",
            "Priya Patel",
            "John Jones",
            "Mary Jones",
            "Noor Khan",
            "Ola Nowak",
            "Ben Closed",
        }
        sally = people["Sally Smith"]
        assert sally["person.given_name"] == "Sally"  # the CRM owns master data
        assert sally["loyalty.tier"] == "gold"  # loyalty owns tier and points
        assert sally["loyalty.points_balance"] == 5230
        assert sally["contact.phone"] == "+447700900101"
        assert people["Tom Brown"]["loyalty.member_id"] == "LM-000102"  # matched on email
        assert people["Priya Patel"]["consent.email_marketing.granted"] is False
        assert "Dan Deleted" not in people  # soft-deleted in the CRM
        assert "loyalty.tier" not in people["John Jones"]

        head = store.head_sequence()
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE loyalty.members SET tier_code = 'PLT', points_balance = 20500, "
                "updated_at = now() WHERE member_id = 'LM-000101'"
            )
        changes = wait_for(
            lambda: [c for c in store.read_changes_after(head) if "loyalty.tier" in c.changes],
            what="the tier upgrade",
        )
        (upgrade,) = changes
        assert upgrade.kind == "UPDATED"
        assert upgrade.changes["loyalty.tier"] == {"old": "gold", "new": "platinum"}
        assert upgrade.changes["loyalty.points_balance"] == {"old": 5230, "new": 20500}
        assert upgrade.cause[0]["source"] == "loyalty"
        sequences = [c.sequence for c in store.read_changes_after(0, limit=10_000)]
        assert sequences == list(range(1, len(sequences) + 1))

        # The group's offsets in Kafka follow the store's positions (monitoring and other tools
        # read them there): each is the offset after the last event the store applied.
        group = config.capture.transport.group_id

        def offsets_follow_the_store() -> bool:
            stored = {s: p + 1 for s, p in store.load_positions(group).items()}
            return bool(stored) and _kafka_offsets(kafka_bootstrap, group) == stored

        wait_for(offsets_follow_the_store, what="the group's offsets committed to Kafka")
    finally:
        capture.stop()
        stop_engine.set()
        capture.wait(60)
        engine.join(60)
        store.close()
