"""``unified-profile run``: connectors, engine and gRPC server in one process.

Transports:

- **embedded** (the default): each source's connector hands its events in memory to one engine
  thread serving every source (:class:`~unified_profile.cdc.sink.SinkGroup` →
  :class:`EmbeddedIngest`); the source LSN is stored with the effects and confirmed to PostgreSQL
  after that commit; connector offsets live in the store. No broker.
- **kafka**: the connectors publish to Kafka (:class:`CaptureService`) and an engine thread
  consumes the topics as a member of the engine's consumer group.

One process per store: :class:`StoreClaim` holds a PostgreSQL advisory lock for the process's
life, so a second ``run`` on the same store is refused with a message instead of two processes
confirming the same replication slots. (Several ``engine`` workers on one store remain the way to
scale out with Kafka; they coordinate through the consumer group and the change-log head lock.)

Stopping (SIGTERM/SIGINT): the connectors finish their batch and stop; the engine applies and
commits what they handed over; then the gRPC server closes its streams (clients resume after their
last sequence) and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
import structlog

from unified_profile.cdc.config import KafkaConfig, SourceConfig
from unified_profile.cdc.connector import Connector
from unified_profile.cdc.errors import SinkError, SourceError
from unified_profile.cdc.sink import InMemorySink, SinkGroup

from . import metrics
from .capture import CaptureService
from .config import ServiceConfig
from .ingest.consumers import EmbeddedIngest
from .ingest.service import build_pipeline, run_kafka_engine
from .retry import retry_transient
from .store.profile_store import ProfileStore, StoreOffsetStore

log = structlog.get_logger(__name__)

# pg_try_advisory_lock key: "unified-profile run" (two 32-bit halves of a fixed constant).
_CLAIM_KEY = (0x75705F72, 0x756E0001)
_FAILURE_POLL_S = 0.5
_CLAIM_CHECK_S = 5.0


class StoreInUse(Exception):
    """Another ``unified-profile run`` holds this store."""


class StoreClaim:
    """A session advisory lock on the store, held by one connection for the process's life.

    PostgreSQL releases it when the connection ends, so a killed process never leaves it behind.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            StoreInUse: Another process holds it (the message names its backend's client).
        """
        connection = psycopg.connect(self._dsn, autocommit=True)
        got = connection.execute("SELECT pg_try_advisory_lock(%s, %s)", _CLAIM_KEY).fetchone()
        if got is None or not got[0]:
            holder = connection.execute(
                "SELECT a.client_addr, a.application_name, a.backend_start"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s"
                " AND l.granted",
                (_CLAIM_KEY[0], _CLAIM_KEY[1]),
            ).fetchone()
            connection.close()
            since = f" since {holder[2]:%Y-%m-%d %H:%M:%S %Z}" if holder else ""
            where = f" from {holder[0] or 'a local socket'}" if holder else ""
            raise StoreInUse(
                f"another unified-profile run is using this profile store{where}{since}; "
                "stop it first (one run process per store: it owns the stores' replication slots)"
            )
        self._connection = connection

    def keep(self) -> None:
        """Check the lock is still held; take it again if its connection was lost.

        A store restart ends the connection and with it the lock: another ``run`` could then
        start on the store. Called every few seconds.

        Raises:
            StoreInUse: Another process took the lock while ours was lost.
            psycopg.OperationalError: The store is unreachable (retried by the next call).
        """
        connection = self._connection
        if connection is not None and not connection.closed:
            try:
                connection.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                connection.close()
        self._connection = None
        self.acquire()
        log.info("run.store_claim_retaken")

    def release(self) -> None:
        """Drop the lock (closing its connection)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class Workers:
    """The capture and engine threads of one ``run``, and what stopped them for good.

    Attributes:
        failure: The first error retrying cannot fix (a preflight or configuration problem).
    """

    failure: Exception | None = None
    _capture_stop: threading.Event = field(default_factory=threading.Event)
    _engine_stop: threading.Event = field(default_factory=threading.Event)
    _capture: list[threading.Thread] = field(default_factory=list)
    _engine: list[threading.Thread] = field(default_factory=list)
    _services: list[CaptureService] = field(default_factory=list)

    def start_embedded(self, config: ServiceConfig, store: ProfileStore) -> None:
        """A connector thread per source, handing events in memory to one engine thread."""
        sinks = SinkGroup()
        for source in config.capture.sources:
            sink = sinks.add(source.name)
            self._spawn(
                self._capture, f"cdc-{source.name}", self._connector_loop(source, sink, store)
            )
        ingest = EmbeddedIngest(
            sinks, build_pipeline(config, store, "embedded"), config.engine.batch_events
        )
        self._spawn(self._engine, "engine-embedded", partial(ingest.run, self._engine_stop))

    def start_kafka(self, config: ServiceConfig, store: ProfileStore) -> None:
        """The connectors publishing to Kafka, and an engine thread consuming the topics."""
        service = CaptureService(config.capture, list(config.capture.sources))
        service.start()
        self._services.append(service)
        self._spawn(
            self._engine,
            "engine-kafka",
            lambda: retry_transient(
                self._engine_stop,
                "engine",
                lambda: run_kafka_engine(config, store, self._engine_stop),
            ),
        )

    def _connector_loop(
        self, source: SourceConfig, sink: InMemorySink, store: ProfileStore
    ) -> Callable[[], None]:
        def run() -> None:
            connector = Connector(source, sink, StoreOffsetStore(store))
            metrics.CONNECTORS.add(connector)
            try:
                retry_transient(
                    self._capture_stop, f"cdc.{source.name}", lambda: connector.run(
                        self._capture_stop
                    )
                )
            except (SourceError, SinkError) as exc:
                if not self._capture_stop.is_set():
                    raise
                log.info("cdc.stopped_while_retrying", source=source.name, error=str(exc))

        return run

    def _spawn(self, group: list[threading.Thread], name: str, body: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                body()
            except Exception as exc:  # a thread's end must reach the process, not vanish
                if self.failure is None:
                    self.failure = exc
                log.error("run.component_failed", component=name, error=str(exc))
                self._capture_stop.set()
                self._engine_stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        group.append(thread)

    @property
    def failed(self) -> bool:
        """A component stopped with an error retrying cannot fix."""
        services_failure = next((s.failure for s in self._services if s.failure), None)
        if self.failure is None and services_failure is not None:
            self.failure = services_failure
        return self.failure is not None

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop capture, let the engine apply what it was handed, then stop the engine."""
        self._capture_stop.set()
        for service in self._services:
            service.stop()
            service.wait(timeout_s)
        for thread in self._capture:
            thread.join(timeout_s)
        self._engine_stop.set()
        for thread in self._engine:
            thread.join(timeout_s)
        still = [t.name for t in self._capture + self._engine if t.is_alive()]
        if still:
            log.warning("run.threads_still_running", threads=still)


async def run_all(config: ServiceConfig, store: ProfileStore, stop: asyncio.Event) -> Workers:
    """Run connectors, engine and gRPC server until ``stop`` is set or a component fails.

    Returns:
        The workers, stopped (their ``failure`` says whether one failed for good).

    Raises:
        StoreInUse: Another ``run`` holds the store.
        MetricsStartError: ``[metrics] listen`` cannot be bound.
    """
    from .rpc.server import serve  # the gRPC stack loads only for the commands that serve

    claim = StoreClaim(config.store.dsn)
    claim.acquire()
    workers = Workers()
    try:
        metrics.serve_metrics(config.metrics)
        if isinstance(config.capture.transport, KafkaConfig):
            workers.start_kafka(config, store)
        else:
            workers.start_embedded(config, store)
        log.info(
            "run.started",
            transport=config.capture.transport.kind,
            sources=[s.name for s in config.capture.sources],
            grpc=config.grpc.listen,
        )
        server_stop = asyncio.Event()
        server = asyncio.create_task(serve(config, store, server_stop))
        watcher = asyncio.create_task(_watch(workers, claim, stop))
        try:
            # The server ends by itself only when it cannot start (its error is raised below).
            await asyncio.wait({server, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            await asyncio.to_thread(workers.stop)
            server_stop.set()
        await server
    finally:
        claim.release()
    return workers


async def _watch(workers: Workers, claim: StoreClaim, stop: asyncio.Event) -> None:
    checked = time.monotonic()
    while not stop.is_set() and not workers.failed:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _FAILURE_POLL_S)
        if time.monotonic() - checked >= _CLAIM_CHECK_S:
            checked = time.monotonic()
            try:
                await asyncio.to_thread(claim.keep)
            except psycopg.OperationalError as exc:
                log.warning("run.store_claim_unreachable", error=str(exc))
            except StoreInUse as exc:
                # Ours was lost (a store restart) and another run took the store: stop.
                workers.failure = exc
                log.error("run.store_claimed_by_another", error=str(exc))


__all__ = ["StoreClaim", "StoreInUse", "Workers", "run_all"]
