"""`unified-profile serve` as an operator runs it: a process, its config file, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from unified_profile.server.devstack import pick_free_port
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore
from unified_profile.v1 import profile_service_pb2 as pb

from .rpc_support import READER, SUBSCRIBER, apply, bearer, crm, member, stub_for

pytestmark = pytest.mark.integration

CONFIG = """
[store]
dsn = "env:UP_STORE_DSN"

[grpc]
listen = "127.0.0.1:{port}"

[[grpc.tokens]]
name = "reader"
token = "{reader}"
scopes = ["profiles.read"]

[[grpc.tokens]]
name = "watcher"
token = "{subscriber}"
scopes = ["profiles.subscribe"]

[identity.crm_id]
max_per_profile = 1

[identity.loyalty_id]
max_per_profile = 1

[rules]
"loyalty.*" = {{ rule = "source_priority", order = ["loyalty"] }}

[[sources]]
name = "crm"
dsn = "dbname=unused"

[[sources.tables]]
table = "public.customers"
"""


def test_serve_answers_reads_and_streams_changes_then_stops_on_sigterm(new_database, tmp_path):
    dsn = new_database("serve")
    migrate.upgrade(dsn)
    store = ProfileStore.connect(dsn)
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    port = pick_free_port()
    config = tmp_path / "up.toml"
    config.write_text(CONFIG.format(port=port, reader=READER, subscriber=SUBSCRIBER))
    server = subprocess.Popen(
        [sys.executable, "-m", "unified_profile.server.cli", "serve", "--config", str(config)],
        env={**os.environ, "UP_STORE_DSN": dsn},
        stderr=subprocess.PIPE,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = stub_for(channel)
        got = stub.GetProfile(pb.GetProfileRequest(profile_id=anne), metadata=bearer(READER),
                              timeout=5)
        assert got.profile.person.given_name == "Anne"

        stream = stub.SubscribeProfileChanges(
            pb.SubscribeProfileChangesRequest(
                start=pb.SubscribeProfileChangesRequest.START_EARLIEST, heartbeat_seconds=1
            ),
            metadata=bearer(SUBSCRIBER),
            timeout=30,
        )
        first = next(stream)
        assert (first.change.sequence, first.change.profile_id) == (1, anne)
        apply(store, member("L1", 20, crm_id=1, tier="gold"))   # goes live through NOTIFY
        live = next(m for m in stream if m.HasField("change"))
        assert live.change.sequence == 2
        assert abs(live.change.committed_at.seconds - time.time()) < 120
        assert [c.path for c in live.change.changes if c.path == "loyalty.tier"] == ["loyalty.tier"]
        # Anne was read (and cached) before; a change delivered here is in this server's next read.
        after = stub.GetProfile(pb.GetProfileRequest(profile_id=anne), metadata=bearer(READER),
                                timeout=5)
        assert after.profile.loyalty.tier == "gold"
        stream.cancel()
        channel.close()

        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, server.stderr.read().decode() if server.stderr else ""
    finally:
        if server.poll() is None:
            server.kill()
        store.close()
