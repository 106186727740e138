"""`unified-profile reconcile`: a store corrupted on purpose is reported, then repaired."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

from unified_profile.cdc.connector import Connector
from unified_profile.cdc.sink import SinkGroup
from unified_profile.server.cli import main
from unified_profile.server.config import load_service_config
from unified_profile.server.ingest.consumers import EmbeddedIngest
from unified_profile.server.ingest.service import build_pipeline, open_store
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore, StoreOffsetStore

from ..waiting import wait_for

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


@pytest.fixture
def demo(new_database, unique_name, tmp_path, monkeypatch):
    """The demo sources captured into a store (embedded), the capture stopped; the config path."""
    source_dsn = new_database("reconcile_src")
    store_dsn = new_database("reconcile_store")
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute((DEMO / "schema.sql").read_text())
        conn.execute((DEMO / "seed.sql").read_text())
    for name, value in {
        "UP_STORE_DSN": store_dsn,
        "UP_CRM_DSN": source_dsn,
        "UP_LOYALTY_DSN": source_dsn,
        "UP_TOKEN_LOYALTY": "loyalty-token-0123456789",
        "UP_TOKEN_CRM": "crm-token-0123456789abc",
    }.items():
        monkeypatch.setenv(name, value)
    suffix = unique_name("rec")
    text = (DEMO / "unified-profile.toml").read_text()
    for source in ("crm", "loyalty"):
        text = text.replace(
            f'\nname = "{source}"\n',
            f'\nname = "{source}"\nslot = "{source}_{suffix}"\npublication = "{source}_{suffix}"\n',
            1,
        )
    path = tmp_path / "unified-profile.toml"
    path.write_text(text)
    config = load_service_config(path)
    migrate.upgrade(store_dsn)
    store = open_store(config)
    stop = threading.Event()
    sinks = SinkGroup()
    threads = [
        threading.Thread(
            target=Connector(source, sinks.add(source.name), StoreOffsetStore(store)).run,
            args=(stop,),
        )
        for source in config.capture.sources
    ]
    ingest = EmbeddedIngest(sinks, build_pipeline(config, store, "embedded"))
    threads.append(threading.Thread(target=ingest.run, args=(stop,)))
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: _sally_merged(store), "the demo people to reach the store")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        store.close()
    return path, store_dsn


def _sally_merged(store: ProfileStore) -> bool:
    for profile in store.all_profiles().values():
        fields = {p: f["value"] for p, f in profile.fields.items()}
        if fields.get("person.full_name") == "Sally Smith" and fields.get("loyalty.tier"):
            return len(store.all_profiles()) == 8
    return False


def _reconcile(capsys, config: Path, *flags: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["--log-level", "warning", "reconcile", "--config", str(config), "--json", *flags])
    return code, json.loads(capsys.readouterr().out)


def _tier_of(store_dsn: str, name: str) -> str | None:
    with psycopg.connect(store_dsn) as conn:
        row = conn.execute(
            "SELECT fields -> 'values' ->> 'loyalty.tier' FROM up_profiles"
            " WHERE fields -> 'values' ->> 'person.full_name' = %s",
            (name,),
        ).fetchone()
    return None if row is None else row[0]


def test_a_consistent_store_has_no_drift(demo, capsys):
    config, _ = demo
    code, out = _reconcile(capsys, config)
    assert code == 0, out
    assert out["report"]["drifted"] is False
    rows = {(t["source"], t["table"]): t["source_rows"] for t in out["report"]["tables"]}
    assert rows[("crm", "crm.customers")] > 0 and rows[("loyalty", "loyalty.members")] > 0
    assert out["report"]["profiles_checked"] == 8


def test_missing_stale_orphaned_and_profile_drift_are_reported_then_repaired(demo, capsys):
    config, store_dsn = demo
    with psycopg.connect(store_dsn, autocommit=True) as conn:
        # missing: the store lost Tom's CRM record
        conn.execute(
            "DELETE FROM up_source_records WHERE table_name = 'crm.customers'"
            " AND fields ->> 'person.given_name' = 'Tom'"
        )
        # stale: Priya's CRM record holds an old name
        conn.execute(
            "UPDATE up_source_records"
            " SET fields = jsonb_set(fields::jsonb, '{person.given_name}', '\"Pria\"')::json"
            " WHERE table_name = 'crm.customers' AND fields ->> 'person.given_name' = 'Priya'"
        )
        # orphaned: a record whose source row never existed
        conn.execute(
            "INSERT INTO up_source_records (source, table_name, record_key, profile_id, fields,"
            " identifiers, version, commit_time_us, position, deleted)"
            " VALUES ('crm', 'crm.customers', '{\"customer_id\":999}', NULL,"
            " '{\"person.given_name\": \"Ghost\"}', '[]', NULL, 0, 1, false)"
        )
        # profile drift: Sally's stored tier no longer matches her records
        conn.execute(
            "UPDATE up_profiles"
            " SET fields = jsonb_set(fields::jsonb, '{values,loyalty.tier}', '\"bronze\"')::json"
            " WHERE fields -> 'values' ->> 'person.full_name' = 'Sally Smith'"
        )

    code, out = _reconcile(capsys, config)
    assert code == 4
    drift = {
        (t["table"], d["kind"]): d
        for t in out["report"]["tables"]
        for d in t["drift"]
    }
    assert set(drift) == {
        ("crm.customers", "missing"),
        ("crm.customers", "stale"),
        ("crm.customers", "orphaned"),
    }
    assert drift[("crm.customers", "stale")]["differences"] == ["fields"]
    assert drift[("crm.customers", "orphaned")]["key"] == '{"customer_id":999}'
    # Sally's tampered tier; also Priya's profile, recomputed from her stale record, and Tom's,
    # which lost a record.
    paths = sorted(tuple(p["paths"]) for p in out["report"]["profile_drift"])
    assert len(paths) == 3, paths
    assert ("loyalty.tier",) in paths and ("person.given_name",) in paths
    assert any("record_count" in p and "crm.customer_id" in p for p in paths)
    assert _tier_of(store_dsn, "Sally Smith") == "bronze"

    code, out = _reconcile(capsys, config, "--repair")
    assert code == 0, out["after_repair"]
    assert out["after_repair"]["drifted"] is False
    assert out["repaired_profile_changes"] > 0
    assert _tier_of(store_dsn, "Sally Smith") == "gold"
    with psycopg.connect(store_dsn) as conn:
        names = {
            row[0]
            for row in conn.execute(
                "SELECT fields -> 'values' ->> 'person.given_name' FROM up_profiles"
            )
        }
    assert {"Tom", "Priya"} <= names and "Pria" not in names and "Ghost" not in names
    # Nothing was left to drift: a second check agrees.
    code, out = _reconcile(capsys, config)
    assert code == 0 and out["report"]["drifted"] is False
