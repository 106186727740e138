"""Helpers for the gRPC service tests: a real server in a background event loop, records, certs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from unified_profile.server.engine.identity import IdentifierType
from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord
from unified_profile.server.engine.survivorship import Rule, RuleSet
from unified_profile.server.ingest.applier import IncomingRecord, ProfileApplier
from unified_profile.server.rpc.server import RunningServer, start_server
from unified_profile.server.rpc.service import ProfileService
from unified_profile.server.rpc.settings import GrpcConfig
from unified_profile.server.store.profile_store import ProfileStore
from unified_profile.v1 import profile_service_pb2_grpc

TYPES = {
    "crm_id": IdentifierType("crm_id", max_per_profile=1),
    "loyalty_id": IdentifierType("loyalty_id", max_per_profile=1),
    "email": IdentifierType("email", normalize=("trim", "lower"), max_per_profile=5),
}
RULES = RuleSet(
    default=Rule("last_writer_wins", ("crm", "loyalty")),
    patterns=(
        ("person.*", Rule("source_priority", ("crm", "loyalty"))),
        ("loyalty.*", Rule("source_priority", ("loyalty",))),
    ),
)

READER = "reader-token-0123456789abcdef"
STEWARD = "steward-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
SUBSCRIBER = "subscriber-token-0123456789abcdef"
TOKENS = [
    {"name": "reader", "token": READER, "scopes": ["profiles.read"]},
    {"name": "steward", "token": STEWARD, "scopes": ["profiles.read", "profiles.steward"]},
    {"name": "ops", "token": ADMIN, "scopes": ["admin"]},
    {"name": "watcher", "token": SUBSCRIBER, "scopes": ["profiles.subscribe"]},
]
COMMIT_US = 1_700_000_000_000_000


def crm(key: int, position: int, *, email: str | None = None, name: str = "Anne",
        deleted: bool = False) -> SourceRecord:
    identifiers = {Identifier("crm_id", str(key))}
    if email:
        identifiers.add(Identifier("email", email))
    return SourceRecord(
        key=RecordKey.of("crm", "public.customers", {"id": key}),
        fields={} if deleted else {
            "person.given_name": name, "contact.email": email,
            "crm.last_interaction_at": "2024-05-01T10:00:00.000000Z",
        },
        identifiers=frozenset() if deleted else frozenset(identifiers),
        version=position * 1_000,
        commit_time_us=COMMIT_US + position,
        position=position,
        deleted=deleted,
    )


def member(key: str, position: int, *, crm_id: int | None, tier: str = "gold",
           points: float = 100, name: str = "Annie") -> SourceRecord:
    identifiers = {Identifier("loyalty_id", key)}
    if crm_id is not None:
        identifiers.add(Identifier("crm_id", str(crm_id)))
    return SourceRecord(
        key=RecordKey.of("loyalty", "public.members", {"member_id": key}),
        fields={"loyalty.tier": tier, "loyalty.points_balance": points,
                "person.given_name": name, "consent.push.granted": True,
                "traits.lifetime_spend": 12.5},
        identifiers=frozenset(identifiers),
        version=position * 1_000,
        commit_time_us=COMMIT_US + position,
        position=position,
    )


def apply(store: ProfileStore, *records: SourceRecord) -> list[tuple[str, str, dict[str, Any]]]:
    """Apply record images as the pipeline would; ``(profile_id, kind, related)`` per change."""
    applier = ProfileApplier(TYPES, RULES)
    with store.batch() as batch:
        rows = applier.apply(batch, [
            IncomingRecord(r, {"source": r.key.source, "table": r.key.table,
                               "key": json.loads(r.key.key),
                               "lsn": r.position, "commit_time_us": r.commit_time_us})
            for r in records
        ])
    return [(row.profile_id, row.kind, row.related) for row in rows]


class ServerThread:
    """A started :func:`start_server` on 127.0.0.1:0, its event loop in a daemon thread."""

    def __init__(self, service: ProfileService, config: GrpcConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = self.call(
            start_server(config, service, listen="127.0.0.1:0")
        )
        self.port = self.running.port

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.running.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def grpc_config(**overrides: Any) -> GrpcConfig:
    return GrpcConfig.model_validate({"tokens": TOKENS, **overrides})


def stub_for(channel: grpc.Channel) -> profile_service_pb2_grpc.ProfileServiceStub:
    return profile_service_pb2_grpc.ProfileServiceStub(channel)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# --- certificates (openssl CLI) -------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all EC."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=unified-profile test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    for name, extensions in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(extensions)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=directory)
    return {name: directory / name for name in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
