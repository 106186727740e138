"""Settings of a :class:`~unified_profile_client.ProfileClient`: TLS and retries."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Connect with TLS; with a client certificate and key, with mutual TLS.

    Attributes:
        ca_cert: PEM CA certificates that sign the server's certificate; the system's roots when
            ``None``.
        client_cert: PEM certificate chain presented to a server that requires client
            certificates (set together with ``client_key``).
        client_key: PEM private key of ``client_cert``.
        server_name: The name to verify the server's certificate against when it differs from
            the target's host (an IP address target, a proxy).
    """

    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key must be given together")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        *,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read the PEM files (paths as a user gives them on a command line).

        Raises:
            OSError: A file cannot be read.
        """

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca_file), read(cert_file), read(key_file), server_name)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How reads are retried and how :meth:`~unified_profile_client.ProfileClient.watch` reconnects.

    Only idempotent reads are retried, and only on UNAVAILABLE (the server or its store could not
    be reached, so nothing happened); steward operations never are. Delays grow exponentially from
    ``initial_backoff`` to ``max_backoff`` with random jitter, so that clients cut off together do
    not come back together.

    Attributes:
        max_attempts: Attempts of a read in all (the first one included); 1 disables retries.
        initial_backoff: Seconds before the first retry or reconnect.
        max_backoff: The longest pause between two attempts.
        multiplier: Growth of the pause per attempt.
        jitter: Each pause is drawn from ``[pause * (1 - jitter), pause]``.
        max_reconnects: Reconnects a watch tries in a row without receiving anything before it
            raises the last error; ``None`` keeps trying (a watch outlives server restarts).
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_reconnects: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_reconnects is not None and self.max_reconnects < 0:
            raise ValueError("max_reconnects must not be negative")

    def backoffs(self) -> Iterator[float]:
        """The pauses before successive retries (endless; the caller bounds it)."""
        pause = self.initial_backoff
        while True:
            yield pause * (1 - self.jitter * random.random())  # noqa: S311 (not cryptographic)
            pause = min(pause * self.multiplier, self.max_backoff)


__all__ = ["RetryConfig", "TlsConfig"]
