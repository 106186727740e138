"""The demo's running parts, started in order and stopped in reverse: :class:`DemoStack`.

PostgreSQL (one embedded server holding the ``crm``, ``loyalty`` and ``profiles`` databases), a
Tansu broker, and ``unified-profile run`` with the Kafka transport as a child process — the same
command an operator runs, on a configuration generated from ``examples/demo``. Everything lives
under one data directory that each start recreates, so a second demo starts as cleanly as the
first (the broker keeps topics in memory only: a store kept from an earlier run would point
past the new broker's offsets).

Every child runs in its own session, so a Ctrl-C in the terminal reaches only the demo, which
stops them in order; if the demo itself dies, the kernel signals them (see
:func:`~unified_profile.server.devstack.processes.spawn`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from unified_profile_client import ProfileClient, ProfileServiceError

from ..config import load_service_config
from ..devstack import EmbeddedPostgres, TansuBroker, pick_free_port
from ..devstack.processes import log_tail, spawn
from .people import Population
from .seeding import EXAMPLE_DIR, load_example, load_population

#: The gRPC port the demo prefers (the README's), when it is free.
PREFERRED_GRPC_PORT = 50051
DATABASES = {"crm": "crm", "loyalty": "loyalty", "store": "profiles"}
_READY_TIMEOUT_S = 180.0
_SERVICE_STOP_TIMEOUT_S = 60.0


class DemoInterrupted(Exception):
    """A stop was asked for while the demo was starting."""


class DemoFailed(Exception):
    """A part of the demo could not start or stopped by itself; the message says which."""


@dataclass(frozen=True)
class DemoEndpoints:
    """Where the running demo can be reached (also written to ``demo.json``).

    Attributes:
        grpc_target: ``host:port`` of the ProfileService.
        token: A bearer token with every scope.
        dsns: libpq DSNs of the ``crm``, ``loyalty`` and ``store`` databases.
        bootstrap_servers: The Kafka-protocol broker.
    """

    grpc_target: str
    token: str
    dsns: dict[str, str]
    bootstrap_servers: str


def demo_config_text(example: str, bootstrap_servers: str, listen: str) -> str:
    """The example configuration, on the Kafka transport, listening on ``listen``, with a
    ``demo`` token (every scope, from ``UP_TOKEN_DEMO``) for the live view and profilectl."""
    text, found = re.subn(
        r"(?m)^\[transport\]\n(?:(?!\[).*\n)*",
        f'[transport]\nkind = "kafka"\nbootstrap_servers = "{bootstrap_servers}"\n'
        # Tansu hands a new group its partitions only after a while that grows with the session
        # timeout (measured: ~23 s with kafka-python's defaults, ~3 s with these).
        "consumer_options = { session_timeout_ms = 6000, heartbeat_interval_ms = 1000 }\n\n",
        example,
    )
    text, listens = re.subn(
        r'(?m)^listen = ".*"\n',
        f'listen = "{listen}"\n\n[[grpc.tokens]]\nname = "demo"\ntoken = "env:UP_TOKEN_DEMO"\n'
        'scopes = ["profiles.read", "profiles.subscribe", "profiles.steward", "admin"]\n',
        text,
    )
    if found != 1 or listens != 1:
        raise DemoFailed(
            "examples/demo/unified-profile.toml: expected one [transport] and one listen"
        )
    return (
        "# Written by the demo from examples/demo/unified-profile.toml (Kafka transport); "
        "recreated on every start.\n" + text
    )


class DemoStack:
    """Starts and stops the demo's services under ``data_dir``.

    Args:
        data_dir: The demo's directory (``.demo``); recreated on start, except its lock file.
        out: Where progress lines go.
        example_dir: The example's schema, seed and configuration.
        grpc_port: The gRPC port; ``None`` prefers :data:`PREFERRED_GRPC_PORT`, else a free one.
    """

    def __init__(
        self,
        data_dir: Path,
        out: TextIO,
        *,
        example_dir: Path = EXAMPLE_DIR,
        grpc_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self._out = out
        self._example_dir = example_dir
        self._grpc_port = grpc_port
        self._lock_file: IO[str] | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.broker: TansuBroker | None = None
        self.service: subprocess.Popen[bytes] | None = None
        self._service_log: IO[bytes] | None = None
        self.endpoints: DemoEndpoints | None = None

    @property
    def service_log(self) -> Path:
        return self.data_dir / "service.log"

    # -- start ----------------------------------------------------------------------------

    def start(self, population: Population, stop: threading.Event) -> DemoEndpoints:
        """Start everything and seed the sources; returns once the gRPC service answers.

        Raises:
            DemoInterrupted: ``stop`` was set meanwhile (what started is left for :meth:`stop`).
            DemoFailed: A part could not start.
        """
        self._claim_directory()
        self._clean()
        self.postgres = EmbeddedPostgres(
            self.data_dir / "postgres", settings={"fsync": "off", "synchronous_commit": "off"}
        )
        self.postgres.start()
        dsns = {role: self.postgres.create_database(name) for role, name in DATABASES.items()}
        self._say(
            f"PostgreSQL on 127.0.0.1:{self.postgres.port}: databases "
            f"{', '.join(DATABASES.values())} (data in {self._shown(self.data_dir)})"
        )
        _check(stop)
        load_example(dsns["crm"], dsns["loyalty"], self._example_dir)
        load_population(dsns["crm"], dsns["loyalty"], population)
        self._say(
            f"seeded {len(population.people):,} people (+8 from seed.sql): "
            f"{len(population.crm_customers):,} CRM customers, "
            f"{len(population.members):,} loyalty members"
        )
        _check(stop)
        self.broker = TansuBroker(log_path=self.data_dir / "tansu.log")
        self.broker.start()
        self._say(f"Tansu broker on {self.broker.bootstrap_servers}")
        _check(stop)
        port = self._grpc_port or (
            PREFERRED_GRPC_PORT if _port_free(PREFERRED_GRPC_PORT) else pick_free_port()
        )
        endpoints = DemoEndpoints(
            grpc_target=f"127.0.0.1:{port}",
            token=secrets.token_urlsafe(18),
            dsns=dsns,
            bootstrap_servers=self.broker.bootstrap_servers,
        )
        config = self._write_config(endpoints)
        self._start_service(config)
        self._say(
            f"unified-profile run (Kafka transport): connectors, engine, gRPC on "
            f"{endpoints.grpc_target} (log {self._shown(self.service_log)})"
        )
        self._wait_ready(endpoints, stop)
        self.endpoints = endpoints
        self._write_state(endpoints)
        return endpoints

    def _claim_directory(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = (self.data_dir / "demo.lock").open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise DemoFailed(
                f"another demo is running from {self._shown(self.data_dir)}; stop it first"
            ) from None
        self._lock_file = lock_file

    def _clean(self) -> None:
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            if _alive(pid):
                raise DemoFailed(
                    f"a PostgreSQL server (pid {pid}) still runs on {self._shown(pid_file.parent)}"
                    "; stop it first"
                )
        for name in ("postgres",):
            shutil.rmtree(self.data_dir / name, ignore_errors=True)
        for name in (
            "service.log",
            "tansu.log",
            "demo.json",
            "profilectl.env",
            "unified-profile.toml",
        ):
            (self.data_dir / name).unlink(missing_ok=True)

    def _write_config(self, endpoints: DemoEndpoints) -> Path:
        example = (self._example_dir / "unified-profile.toml").read_text()
        path = self.data_dir / "unified-profile.toml"
        path.write_text(
            demo_config_text(example, endpoints.bootstrap_servers, endpoints.grpc_target)
        )
        os.environ.update(self._service_env(endpoints))
        load_service_config(path)  # fail here, with the key path, rather than in the child
        return path

    @staticmethod
    def _service_env(endpoints: DemoEndpoints) -> dict[str, str]:
        return {
            "UP_STORE_DSN": endpoints.dsns["store"],
            "UP_CRM_DSN": endpoints.dsns["crm"],
            "UP_LOYALTY_DSN": endpoints.dsns["loyalty"],
            "UP_TOKEN_DEMO": endpoints.token,
            "UP_TOKEN_LOYALTY": secrets.token_urlsafe(18),
            "UP_TOKEN_CRM": secrets.token_urlsafe(18),
        }

    def _start_service(self, config: Path) -> None:
        self._service_log = self.service_log.open("ab")
        self.service = spawn(
            [
                sys.executable,
                "-m",
                "unified_profile.server.cli",
                "--log-format",
                "json",
                "run",
                "--config",
                str(config),
            ],
            log_file=self._service_log,
            # If the demo dies without stopping it, the service still stops cleanly.
            death_signal=signal.SIGTERM,
            env=dict(os.environ),
        )

    def _wait_ready(self, endpoints: DemoEndpoints, stop: threading.Event) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        with ProfileClient(endpoints.grpc_target, token=endpoints.token, timeout=5) as client:
            while True:
                self.check_service()
                try:
                    client.pipeline_status(timeout=2)
                    return
                except ProfileServiceError:
                    pass
                if time.monotonic() > deadline:
                    raise DemoFailed(
                        f"the service did not answer on {endpoints.grpc_target} within "
                        f"{_READY_TIMEOUT_S:.0f}s; {self._shown(self.service_log)}:\n"
                        f"{log_tail(self.service_log)}"
                    )
                if stop.wait(0.3):
                    raise DemoInterrupted

    def check_service(self) -> None:
        """Raise :class:`DemoFailed` (with its log's tail) if the service has exited."""
        if self.service is not None and self.service.poll() is not None:
            raise DemoFailed(
                f"unified-profile run exited with code {self.service.returncode}; "
                f"{self._shown(self.service_log)}:\n{log_tail(self.service_log)}"
            )

    def _write_state(self, endpoints: DemoEndpoints) -> None:
        state = {
            "grpc_target": endpoints.grpc_target,
            "token": endpoints.token,
            "dsns": endpoints.dsns,
            "bootstrap_servers": endpoints.bootstrap_servers,
            "pids": {
                "demo": os.getpid(),
                "postgres": self.postgres.pid if self.postgres else None,
                "broker": self.broker.pid if self.broker else None,
                "service": self.service.pid if self.service else None,
            },
        }
        (self.data_dir / "demo.json").write_text(json.dumps(state, indent=2) + "\n")
        (self.data_dir / "profilectl.env").write_text(
            f"export PROFILECTL_TARGET={endpoints.grpc_target}\n"
            f"export PROFILECTL_TOKEN={endpoints.token}\n"
        )

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop the service (SIGTERM: it finishes its batch and exits 0), the broker and
        PostgreSQL, in that order. Safe to call whatever started.

        Returns:
            What was stopped, in order, for the closing line.
        """
        stopped: list[str] = []
        if self.service is not None:
            if self.service.poll() is None:
                self.service.send_signal(signal.SIGTERM)
                try:
                    self.service.wait(_SERVICE_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.service.kill()
                    self.service.wait()
            stopped.append(f"unified-profile run (exit {self.service.returncode})")
        if self._service_log is not None:
            self._service_log.close()
            self._service_log = None
        if self.broker is not None:
            self.broker.stop()
            stopped.append("Tansu broker")
        if self.postgres is not None:
            self.postgres.stop()
            stopped.append("PostgreSQL")
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the lock
            self._lock_file = None
        return stopped

    def _say(self, text: str) -> None:
        self._out.write(f"  {text}\n")
        self._out.flush()

    @staticmethod
    def _shown(path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise DemoInterrupted


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "DATABASES",
    "PREFERRED_GRPC_PORT",
    "DemoEndpoints",
    "DemoFailed",
    "DemoInterrupted",
    "DemoStack",
    "demo_config_text",
]
