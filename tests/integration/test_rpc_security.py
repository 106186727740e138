"""The gRPC server's edges: tokens and scopes, open health and reflection, deadlines, TLS and
mutual TLS, message limits, and ``unified-profile serve`` as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from unified_profile.server.rpc.service import ProfileService
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore
from unified_profile.v1 import profile_service_pb2 as pb

from .rpc_support import (
    ADMIN,
    READER,
    RULES,
    STEWARD,
    SUBSCRIBER,
    TYPES,
    ServerThread,
    apply,
    bearer,
    crm,
    grpc_config,
    make_certificates,
    rpc_error,
    stub_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_dsn(new_database):
    dsn = new_database("rpcsec")
    migrate.upgrade(dsn)
    return dsn


@pytest.fixture
def store(store_dsn):
    store = ProfileStore.connect(store_dsn)
    yield store
    store.close()


@pytest.fixture
def start(store):
    """``start(**grpc_overrides) -> ServerThread``; stopped after the test."""
    started: list[ServerThread] = []

    def start_with(**overrides) -> ServerThread:
        thread = ServerThread(ProfileService(store, TYPES, RULES), grpc_config(**overrides))
        started.append(thread)
        return thread

    yield start_with
    for thread in started:
        thread.stop()


def test_calls_without_a_valid_token_or_scope_are_refused_and_tokens_never_logged(
    store, start, capfd
):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    server = start()
    wrong = "not-a-configured-token-at-all"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = stub_for(channel)
        get = pb.GetProfileRequest(profile_id=anne)
        for metadata in ([], bearer(wrong), [("authorization", f"Basic {READER}")],
                         [("authorization", "Bearer ")]):
            error = rpc_error(lambda metadata=metadata: stub.GetProfile(get, metadata=metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in error.details()
        assert stub.GetProfile(
            get, metadata=[("authorization", f"bearer {READER}")]).profile.profile_id == anne
        refused = [
            (lambda: stub.GetProfile(get, metadata=bearer(ADMIN))),      # admin is not a data scope
            (lambda: stub.GetProfile(get, metadata=bearer(SUBSCRIBER))),
            (lambda: stub.GetPipelineStatus(pb.GetPipelineStatusRequest(),
                                            metadata=bearer(STEWARD))),
            (lambda: stub.ForgetProfile(pb.ForgetProfileRequest(profile_id=anne, reason="x"),
                                        metadata=bearer(READER))),
            (lambda: next(iter(stub.SubscribeProfileChanges(
                pb.SubscribeProfileChangesRequest(), metadata=bearer(READER))))),
        ]
        for call in refused:
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "scope" in error.details()
        # Refused calls changed nothing.
        assert stub.GetProfile(get, metadata=bearer(READER)).profile.profile_id == anne
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert "rpc.unauthenticated" in output or "rpc.permission_denied" in output
    for secret in (READER, ADMIN, STEWARD, SUBSCRIBER, wrong):
        assert secret not in output


def test_refused_and_failed_calls_are_counted_by_status_code(store, start):
    def count(method: str, code: str) -> float:
        value = REGISTRY.get_sample_value(
            "up_rpc_seconds_count", {"method": method, "code": code}
        )
        return value or 0.0

    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    server = start()
    before = {
        code: count("GetProfile", code) for code in ("OK", "UNAUTHENTICATED", "NOT_FOUND")
    }
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = stub_for(channel)
        stub.GetProfile(pb.GetProfileRequest(profile_id=anne), metadata=bearer(READER))
        rpc_error(lambda: stub.GetProfile(pb.GetProfileRequest(profile_id=anne)))
        rpc_error(lambda: stub.GetProfile(
            pb.GetProfileRequest(profile_id="p_" + "0" * 24), metadata=bearer(READER)))
    assert count("GetProfile", "OK") == before["OK"] + 1
    assert count("GetProfile", "UNAUTHENTICATED") == before["UNAUTHENTICATED"] + 1
    assert count("GetProfile", "NOT_FOUND") == before["NOT_FOUND"] + 1


def test_health_and_reflection_answer_without_a_token(start):
    server = start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "unified_profile.v1.ProfileService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert "unified_profile.v1.ProfileService" in names
        [described] = list(reflection.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="unified_profile.v1.ProfileService")])))
        assert described.file_descriptor_response.file_descriptor_proto


def test_a_stuck_store_gives_deadline_exceeded_and_the_query_is_cancelled(
    store, store_dsn, start
):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    server = start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, \
            psycopg.connect(store_dsn) as locker, psycopg.connect(store_dsn) as observer:
        stub = stub_for(channel)
        get = pb.GetProfileRequest(profile_id=anne)
        error = rpc_error(lambda: stub.GetProfile(get, metadata=bearer(READER), timeout=1e-6))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        locker.execute("LOCK TABLE up_profiles IN ACCESS EXCLUSIVE MODE")
        error = rpc_error(lambda: stub.GetProfile(get, metadata=bearer(READER), timeout=1.0))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        observer.autocommit = True

        def waiting() -> int:
            (count,) = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").fetchone()
            return int(count)

        # The lock is still held, but the server's query was cancelled at the deadline (on a loaded
        # machine the cancelled backend can take a few seconds to leave pg_stat_activity).
        deadline = time.monotonic() + 20
        while waiting() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting() == 0
        locker.rollback()
        assert stub.GetProfile(get, metadata=bearer(READER), timeout=5).profile.profile_id == anne


def test_requests_over_the_message_limit_are_refused(start):
    server = start(max_message_bytes=64 * 1024)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = stub_for(channel)
        refs = [pb.ProfileRef(profile_id=f"p_{i:0100d}") for i in range(1000)]
        error = rpc_error(lambda: stub.BatchGetProfiles(
            pb.BatchGetProfilesRequest(refs=refs), metadata=bearer(READER)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tls_and_mutual_tls(store, start, tmp_path):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    certs = make_certificates(tmp_path)
    ca = certs["ca.pem"].read_bytes()
    get = pb.GetProfileRequest(profile_id=anne)
    tls = {"cert_file": str(certs["server.pem"]), "key_file": str(certs["server.key"])}
    server = start(tls=tls)
    address = f"127.0.0.1:{server.port}"
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
        assert stub_for(ch).GetProfile(get, metadata=bearer(READER)).profile.profile_id == anne
    with grpc.insecure_channel(address) as ch:
        error = rpc_error(lambda: stub_for(ch).GetProfile(get, metadata=bearer(READER), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    mutual = start(tls={**tls, "client_ca_file": str(certs["ca.pem"])})
    address = f"127.0.0.1:{mutual.port}"
    without_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(address, without_cert) as ch:
        error = rpc_error(lambda: stub_for(ch).GetProfile(get, metadata=bearer(READER), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=certs["client.key"].read_bytes(),
        certificate_chain=certs["client.pem"].read_bytes(),
    )
    with grpc.secure_channel(address, with_cert) as ch:
        assert stub_for(ch).GetProfile(get, metadata=bearer(READER)).profile.profile_id == anne


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_serve_command_serves_until_sigterm(store_dsn, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "UP_STORE_DSN": store_dsn,
        "UP_CRM_DSN": "host=127.0.0.1 dbname=unused",
        "UP_LOYALTY_DSN": "host=127.0.0.1 dbname=unused",
        "UP_TOKEN_CRM": STEWARD,
        "UP_TOKEN_LOYALTY": READER,
    }
    command = [sys.executable, "-m", "unified_profile.server.cli", "--log-format", "json",
               "serve", "--config", str(ROOT / "examples/demo/unified-profile.toml"),
               "--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == \
                health_pb2.HealthCheckResponse.SERVING
            error = rpc_error(lambda: stub_for(channel).GetProfile(
                pb.GetProfileRequest(profile_id="p_x"), metadata=bearer(READER)))
            assert error.code() == grpc.StatusCode.NOT_FOUND
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert '"grpc.started"' in output and '"grpc.stopped"' in output
    assert READER not in output and STEWARD not in output
