"""``[grpc]``: where the ProfileService listens, who may call it, and how.

```toml
[grpc]
listen = "127.0.0.1:50051"           # host:port; port 0 picks a free port
max_message_bytes = 4194304          # per message, both directions
read_cache_profiles = 10000          # answers cached per server process; 0: none

[[grpc.tokens]]
name = "crm-backend"                 # audited as the actor of steward operations; logged
token = "env:UP_TOKEN_CRM"           # the bearer secret; never logged
scopes = ["profiles.read", "profiles.subscribe", "profiles.steward"]

[grpc.tls]                           # optional: TLS; with client_ca_file, mutual TLS
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "clients-ca.pem"
```

Scopes are independent: ``admin`` (GetPipelineStatus) grants no access to profile data, so an
operator's token cannot read personal data unless it also lists ``profiles.read``.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

Scope = Literal["profiles.read", "profiles.subscribe", "profiles.steward", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
"""Every scope a token may hold."""

MIN_TOKEN_LENGTH = 16
"""Shorter bearer secrets are refused: they could be guessed over the network."""

_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):(?P<port>\d{1,5})")


class TokenConfig(BaseModel):
    """``[[grpc.tokens]]``: one caller's bearer token and the scopes it grants.

    Attributes:
        name: Who the caller is (``crm-backend``): logged, and the actor of steward operations.
        token: The bearer secret (``env:NAME`` in the file); kept as a ``SecretStr`` so that it
            never appears in a repr, a log line or a validation message.
        scopes: What the token may do.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    token: SecretStr
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
        if secret != secret.strip() or any(c.isspace() for c in secret):
            raise ValueError("must not contain whitespace")
        return value


class TlsConfig(BaseModel):
    """``[grpc.tls]``: serve TLS; with ``client_ca_file``, require client certificates (mTLS).

    Attributes:
        cert_file: PEM certificate chain of the server.
        key_file: PEM private key of the server.
        client_ca_file: PEM CA certificates that sign client certificates; when set, a client
            without a certificate signed by one of them cannot connect.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: FilePath
    key_file: FilePath
    client_ca_file: FilePath | None = None


class GrpcConfig(BaseModel):
    """``[grpc]``: the gRPC server's settings (every key optional).

    Attributes:
        listen: ``host:port`` (``[::]:50051`` for IPv6); port 0 picks a free port.
        tokens: The callers; without any, every ProfileService call is refused (health and
            reflection stay open).
        tls: TLS / mTLS; plaintext when absent.
        max_message_bytes: The largest message received or sent.
        max_concurrent_rpcs: Calls beyond this many in flight are refused with
            RESOURCE_EXHAUSTED instead of queueing without bound; unlimited when absent.
        db_threads: Threads running the store work that is not on the read hot path (history,
            explain, status, steward writes; the store's connection pool holds 8).
        read_connections: Connections of the read hot path (GetProfile, LookupProfile,
            BatchGetProfiles) per server process; calls beyond them wait for one.
        shutdown_grace_seconds: On stop, how long calls in flight may finish.
        reflection: Serve gRPC server reflection (for grpcurl and similar tools).
        reuse_port: Let several server processes share the port (SO_REUSEPORT). Off by default
            so that a second server started by mistake fails instead of silently sharing it.
        read_cache_profiles: GetProfile and LookupProfile answers each server process keeps in
            memory (each kind; ~1-2 KB per typical profile), dropped as soon as the process
            hears the store wrote their profile; ``0`` sends every read to the store.
        read_cache_ttl_seconds: The longest an answer is kept, whatever happens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:50051"
    tokens: list[TokenConfig] = Field(default_factory=list)
    tls: TlsConfig | None = None
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    db_threads: int = Field(default=8, ge=1, le=64)
    read_connections: int = Field(default=8, ge=1, le=64)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    reflection: bool = True
    reuse_port: bool = False
    read_cache_profiles: int = Field(default=10_000, ge=0, le=10_000_000)
    read_cache_ttl_seconds: float = Field(default=60.0, gt=0, le=86_400)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        match = _LISTEN.fullmatch(value)
        if match is None or int(match["port"]) > 65535:
            raise ValueError("must be host:port, such as 127.0.0.1:50051 or [::]:50051")
        return value

    @model_validator(mode="after")
    def _distinct_tokens(self) -> GrpcConfig:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("two tokens have the same name")
        secrets = [t.token.get_secret_value() for t in self.tokens]
        if len(set(secrets)) != len(secrets):
            # Callers sharing a secret could not be told apart in logs and audit.
            raise ValueError("two tokens have the same secret")
        return self

    @property
    def host(self) -> str:
        """The host part of :attr:`listen`."""
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """The port part of :attr:`listen`."""
        return int(self.listen.rsplit(":", 1)[1])


__all__ = ["MIN_TOKEN_LENGTH", "SCOPES", "GrpcConfig", "Scope", "TlsConfig", "TokenConfig"]
