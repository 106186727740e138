"""The server under test, in processes of its own: ``serve()`` exactly as ``unified-profile serve``.

Each child parses the service config, opens the store (``open_store``) and runs
:func:`unified_profile.server.rpc.server.serve` (gRPC server, change feed, health) until SIGTERM.
Several children may share one port (``[grpc] reuse_port = true``): the kernel spreads incoming
connections over them, so together they use every core. Readiness is checked from the outside,
with a health ``Check`` per child's connection, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_CONTEXT = multiprocessing.get_context("spawn")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of the file (utime, stime); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def postgres_cpu_s(conn: Any) -> float | None:
    """CPU seconds so far of every client backend of ``conn``'s database but ``conn``'s own.

    ``None`` when a backend's ``/proc`` entry cannot be read (PostgreSQL runs elsewhere).
    """
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchall()
    total = 0.0
    for (pid,) in rows:
        if not os.path.exists(f"/proc/{pid}/stat"):
            return None
        total += process_cpu_s(int(pid))
    return total


@dataclass
class ServerGroup:
    """``processes`` server children sharing ``port`` (``reuse_port`` when more than one).

    Attributes:
        config: The service config (as parsed TOML) without ``[grpc] listen``.
        processes: How many children.
        port: The port they share.
    """

    config: dict[str, Any]
    processes: int
    port: int = field(default_factory=free_port)
    _children: list[Any] = field(default_factory=list)

    @property
    def target(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        return [int(p.pid) for p in self._children]

    def cpu_s(self) -> float:
        """CPU seconds used by all children so far."""
        return sum(process_cpu_s(pid) for pid in self.pids)

    def start(self, timeout: float = 60.0) -> None:
        """Start the children and wait until the port answers health checks.

        Raises:
            RuntimeError: A child died or the server did not answer within ``timeout``.
        """
        grpc_section = {
            **self.config.get("grpc", {}),
            "listen": self.target,
            "reuse_port": True,
        }
        config = {**self.config, "grpc": grpc_section}
        for i in range(self.processes):
            child = _CONTEXT.Process(
                target=_main, args=(config,), name=f"bench-server-{i}", daemon=True
            )
            child.start()
            self._children.append(child)
        deadline = time.monotonic() + timeout
        while True:
            dead = [c for c in self._children if not c.is_alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited with {dead[0].exitcode}")
            if self._serving():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:.0f}s")
            time.sleep(0.2)
        if self.processes > 1:
            # Every child listens once it has bound the port; give the last ones a moment.
            time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM each child (a graceful stop), then kill what is left."""
        for child in self._children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        for child in self._children:
            child.join(15)
            if child.is_alive():
                child.kill()
                child.join(5)
        self._children.clear()

    def __enter__(self) -> ServerGroup:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _serving(self) -> bool:
        with grpc.insecure_channel(self.target) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                ).status
            except grpc.RpcError:
                return False
        return bool(status == health_pb2.HealthCheckResponse.SERVING)


def _main(config_data: dict[str, Any]) -> None:
    import logging

    import structlog

    from unified_profile.server.config import parse_service_config
    from unified_profile.server.ingest.service import open_store
    from unified_profile.server.rpc.server import serve

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    config = parse_service_config(config_data, "bench")
    store = open_store(config)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await serve(config, store, stop)  # settles the collector once up, as the command's does

    try:
        asyncio.run(run())
    finally:
        with contextlib.suppress(Exception):
            store.close()


__all__ = ["ServerGroup", "free_port", "postgres_cpu_s", "process_cpu_s"]
