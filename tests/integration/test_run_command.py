"""`unified-profile run`: connectors, engine and gRPC server in one process, as an operator runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from unified_profile.server.devstack import pick_free_port
from unified_profile.v1 import profile_service_pb2 as pb

from ..waiting import wait_for
from .rpc_support import bearer, stub_for

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
CRM_TOKEN = "crm-token-0123456789abc"


def _demo_config(tmp_path: Path, port: int, metrics_port: int, suffix: str) -> Path:
    """The demo config (embedded transport) serving gRPC on ``port`` and metrics on
    ``metrics_port``, with slots unique to the test."""
    text = (DEMO / "unified-profile.toml").read_text()
    text = text.replace('listen = "127.0.0.1:50051"', f'listen = "127.0.0.1:{port}"')
    text = text.replace("\n[grpc]\n", f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n\n[grpc]\n', 1)
    for name in ("crm", "loyalty"):
        text = text.replace(
            f'\nname = "{name}"\n',
            f'\nname = "{name}"\nslot = "{name}_{suffix}"\npublication = "{name}_{suffix}"\n'
            "status_interval_s = 0.5\n",
            1,
        )
    path = tmp_path / "unified-profile.toml"
    path.write_text(text)
    return path


def _start(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "unified_profile.server.cli", "run", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
    )


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape ``/metrics``: (sample name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_run_captures_applies_serves_and_stops_cleanly(new_database, unique_name, tmp_path):
    source_dsn = new_database("run_src")
    store_dsn = new_database("run_store")  # not migrated: run migrates it
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute((DEMO / "schema.sql").read_text())
        conn.execute((DEMO / "seed.sql").read_text())
    port = pick_free_port()
    suffix = unique_name("run")
    metrics_port = pick_free_port()
    config = _demo_config(tmp_path, port, metrics_port, suffix)
    env = {
        **os.environ,
        "UP_STORE_DSN": store_dsn,
        "UP_CRM_DSN": source_dsn,
        "UP_LOYALTY_DSN": source_dsn,
        "UP_TOKEN_LOYALTY": "loyalty-token-0123456789",
        "UP_TOKEN_CRM": CRM_TOKEN,
    }
    process = _start(config, env)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = stub_for(channel)

        def lookup(email: str) -> pb.LookupProfileResponse | None:
            try:
                return stub.LookupProfile(
                    pb.LookupProfileRequest(identifier_type="email", value=email),
                    metadata=bearer(CRM_TOKEN),
                    timeout=5,
                )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return None

        # Sally is in both systems: the CRM's name, the loyalty platform's tier, one profile.
        sally = wait_for(
            lambda: (found := lookup("sally.smith@example.com"))
            and found.profile.loyalty.tier
            and found,
            what="Sally's merged profile",
        )
        assert sally.profile.person.given_name == "Sally"
        assert sally.profile.loyalty.tier == "gold"

        # A live change in the loyalty database reaches the served record.
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE loyalty.members SET tier_code = 'PLT', updated_at = now()"
                " WHERE member_id = 'LM-000101'"
            )
        wait_for(
            lambda: lookup("sally.smith@example.com").profile.loyalty.tier
            == "platinum",
            what="the tier upgrade to be served",
        )

        # The metrics endpoint shows what happened, per source and table.
        scraped = _metrics(metrics_port)
        assert scraped[("up_capture_events_total", (("source", "loyalty"), ("table", "loyalty.members")))] >= 1
        assert scraped[("up_applied_events_total", (("source", "crm"), ("table", "crm.customers")))] >= 1
        assert scraped[("up_profile_changes_total", (("kind", "CREATED"),))] >= 8
        assert scraped[("up_change_log_head", ())] >= 8
        assert ("up_slot_lag_bytes", (("source", "crm"),)) in scraped
        assert scraped[("up_apply_batch_seconds_count", ())] >= 1
        assert not any(name == "up_dead_letters_total" for name, _ in scraped)
        lookups = ("up_rpc_seconds_count", (("code", "OK"), ("method", "LookupProfile")))
        assert scraped[lookups] >= 2
        assert scraped[("up_subscribers", ())] == 0

        # A second run on the same store is refused, and the first one keeps going.
        second = _start(config, {**env})
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 3
        assert b"another unified-profile run is using this profile store" in stderr
        assert process.poll() is None

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The store holds both sources' positions, and each slot was confirmed up to what it applied.
    with psycopg.connect(store_dsn) as conn:
        applied = dict(conn.execute("SELECT stream, position FROM up_positions").fetchall())
    with psycopg.connect(source_dsn) as conn:
        confirmed = dict(
            conn.execute(
                "SELECT slot_name, (confirmed_flush_lsn - '0/0')::bigint"
                " FROM pg_replication_slots WHERE slot_name = ANY(%s)",
                ([f"crm_{suffix}", f"loyalty_{suffix}"],),
            ).fetchall()
        )
    assert set(applied) == {"source:crm", "source:loyalty"}
    assert confirmed[f"loyalty_{suffix}"] >= applied["source:loyalty"] > 0
    assert confirmed[f"crm_{suffix}"] >= applied["source:crm"] > 0
