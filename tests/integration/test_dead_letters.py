"""`unified-profile dead-letters list|replay`: poison events kept, then applied once the mapping is fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unified_profile.cdc.envelope import DecodedEvent
from unified_profile.server.cli import main
from unified_profile.server.config import load_service_config
from unified_profile.server.engine.records import Identifier
from unified_profile.server.ingest import pipeline as pipeline_module
from unified_profile.server.ingest.pipeline import StreamEvent
from unified_profile.server.ingest.service import build_pipeline, open_store
from unified_profile.server.store import migrate

from .log_support import LogRecorder

pytestmark = pytest.mark.integration

CONFIG = """
[store]
dsn = "{dsn}"

[identity.crm_id]
max_per_profile = 1

[identity.phone]

[[sources]]
name = "crm"
dsn = "dbname=unused"

[[sources.tables]]
table = "public.customers"
identifiers = {{ crm_id = "id" }}

[sources.tables.fields]
"person.given_name" = "first_name"
"contact.phone" = {{ column = "phone", transform = "e164", region = "GB"{lenient} }}
"""
TOPIC = "crm.public.customers"


def _config(tmp_path: Path, dsn: str, *, lenient: bool) -> Path:
    path = tmp_path / ("lenient.toml" if lenient else "strict.toml")
    path.write_text(
        CONFIG.format(dsn=dsn, lenient=', on_invalid = "null"' if lenient else "")
    )
    return path


def _event(customer: int, phone: str, lsn: int) -> bytes:
    return json.dumps({
        "before": None,
        "after": {"id": customer, "first_name": f"Customer {customer}", "phone": phone},
        "source": {"name": "crm", "schema": "public", "table": "customers", "lsn": lsn,
                   "ts_us": lsn},
        "op": "c",
    }).encode()


def _cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--log-level", "warning", "dead-letters", *args])
    return code, capsys.readouterr().out


def test_poison_events_are_listed_and_replayed_after_the_mapping_is_fixed(
    new_database, tmp_path, capsys, monkeypatch
):
    recorder = LogRecorder()
    monkeypatch.setattr(pipeline_module, "log", recorder)
    dsn = new_database("dead_letters")
    migrate.upgrade(dsn)
    strict = _config(tmp_path, dsn, lenient=False)
    config = load_service_config(strict)
    store = open_store(config)
    try:
        pipeline = build_pipeline(config, store, "engine")
        result = pipeline.apply([
            StreamEvent("kafka:crm.public.customers:0", 0, TOPIC, b'{"id":1}',
                        _event(1, "+44 7700 900123", 100)),
            # A phone the strict e164 transform rejects: dead-lettered, the batch goes on.
            StreamEvent("kafka:crm.public.customers:0", 1, TOPIC, b'{"id":2}',
                        _event(2, "ring zz-7 please", 101)),
            StreamEvent("kafka:crm.public.customers:0", 2, TOPIC, b'{"id":3}', b"\x00garbage"),
            # An in-memory (embedded) event keeps a replayable copy of itself too.
            StreamEvent("source:crm", 102, TOPIC, decoded=DecodedEvent(
                TOPIC, {"id": 4}, "c", None,
                {"id": 4, "first_name": "Customer 4", "phone": "call me"},
                {"name": "crm", "schema": "public", "table": "customers", "lsn": 102,
                 "ts_us": 102}, None)),
        ])
        assert result.dead_letters == 3
        # The log says which column and transform refused what; the rejected values (which may
        # be personal data) stay in the store, for whoever fixes the mapping.
        logged = [line["reason"] for line in recorder.warnings if line["event"] == "ingest.dead_letter"]
        assert len(logged) == 3
        assert "column 'phone'" in logged[0] and "e164" in logged[0]
        assert "ring zz-7" not in repr(logged) and "call me" not in repr(logged)
    finally:
        store.close()

    code, out = _cli(capsys, "list", "--config", str(strict), "--json")
    assert code == 0
    letters = [json.loads(line) for line in out.splitlines()]
    assert [(d["stream"], d["position"]) for d in letters] == [
        ("kafka:crm.public.customers:0", 1),
        ("kafka:crm.public.customers:0", 2),
        ("source:crm", 102),
    ]
    assert "ring zz-7 please" in letters[0]["reason"] and "e164" in letters[0]["reason"]
    assert "not JSON" in letters[1]["reason"]
    assert all(d["replayable"] for d in letters)
    # The payload (the record as consumed) is not listed.
    assert set(letters[0]) == {"id", "recorded_at", "consumer", "stream", "position", "topic",
                               "reason", "replayable"}

    # Replaying with the mapping unchanged applies nothing and keeps them all.
    code, out = _cli(capsys, "replay", "--config", str(strict), "--all", "--json")
    report = json.loads(out)
    assert code == 1 and report["applied"] == [] and len(report["failed"]) == 3

    # The mapping is fixed (an invalid phone becomes null): the two rejected rows apply and
    # their dead letters go; the garbage stays, with its reason.
    lenient = _config(tmp_path, dsn, lenient=True)
    code, out = _cli(capsys, "replay", "--config", str(lenient), "--all", "--json")
    report = json.loads(out)
    ids = [d["id"] for d in letters]
    assert code == 1
    assert sorted(report["applied"]) == [ids[0], ids[2]]
    assert list(report["failed"]) == [str(ids[1])]
    assert report["profile_changes"] == 2
    store = open_store(load_service_config(lenient))
    try:
        for customer in ("2", "4"):
            profile_id = store.find_profile(Identifier("crm_id", customer))
            assert profile_id is not None
            found = store.get_profile(profile_id)
            assert found is not None
            fields = {path: f["value"] for path, f in found[0].fields.items()}
            assert fields == {"person.given_name": f"Customer {customer}"}
        assert [d["id"] for d in store.dead_letters()] == [ids[1]]
    finally:
        store.close()
    code, out = _cli(capsys, "list", "--config", str(lenient))
    assert code == 0 and "1 dead letter(s)" in out
