"""Prometheus metrics: what an operator graphs and alerts on, served on ``[metrics] listen``.

prometheus-client keeps the metrics (process-wide, thread-safe) and serves the text format; the
service's components update them where the work happens. Connectors keep their own counters
(:class:`~unified_profile.cdc.stats.CaptureStats`, the capture package does not depend on the
service), which :class:`ConnectorCollector` reads at scrape time.

Labels never carry personal data or unbounded values: sources, tables, topics, partitions, change
kinds, RPC methods and status codes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from unified_profile.cdc.config import read_config_file, validation_problems
from unified_profile.cdc.connector import Connector
from unified_profile.cdc.errors import ConfigError

log = structlog.get_logger(__name__)

EVENTS_APPLIED = Counter(
    "up_applied_events",
    "Change events applied to the profile store (committed), by source and table",
    ["source", "table"],
)
DEAD_LETTERS = Counter(
    "up_dead_letters",
    "Events that could not be applied and were kept as dead letters, by topic",
    ["topic"],
)
PROFILE_CHANGES = Counter(
    "up_profile_changes", "Change-log entries appended, by kind", ["kind"]
)
APPLY_BATCH_EVENTS = Histogram(
    "up_apply_batch_events",
    "Events per applied batch",
    buckets=(1, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000),
)
APPLY_SECONDS = Histogram(
    "up_apply_batch_seconds",
    "Time to apply one batch: decode, map, recompute, commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHANGE_LOG_HEAD = Gauge("up_change_log_head", "The newest change-log sequence this process saw")
CONSUMER_LAG = Gauge(
    "up_consumer_lag_events",
    "Kafka records not yet applied by this engine worker, by topic and partition",
    ["topic", "partition"],
)
SUBSCRIBERS = Gauge("up_subscribers", "Open SubscribeProfileChanges streams")
RPC_SECONDS = Histogram(
    "up_rpc_seconds",
    "gRPC call latency by method and status code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)


class MetricsConfig(BaseModel):
    """``[metrics]``: where to serve ``/metrics`` (no endpoint when ``listen`` is not set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r}: expected host:port, e.g. 127.0.0.1:9464")
        return value


class ConnectorCollector(Collector):
    """Exports the counters of the connectors running in this process, read at scrape time."""

    def __init__(self) -> None:
        self._connectors: list[Connector] = []
        self._lock = threading.Lock()

    def add(self, connector: Connector) -> None:
        """Export this connector's counters (replacing an earlier one of the same source)."""
        with self._lock:
            self._connectors = [
                c for c in self._connectors if c.source.name != connector.source.name
            ] + [connector]

    def collect(self) -> Iterator[Any]:
        captured = CounterMetricFamily(
            "up_capture_events",
            "Change events captured and handed to the transport, by source and table",
            labels=["source", "table"],
        )
        lag_bytes = GaugeMetricFamily(
            "up_slot_lag_bytes",
            "WAL the source's replication slot still holds for us (server WAL end - confirmed)",
            labels=["source"],
        )
        lag_seconds = GaugeMetricFamily(
            "up_slot_lag_seconds",
            "Source commit → confirmed delay of the last confirmed transaction",
            labels=["source"],
        )
        with self._lock:
            connectors = list(self._connectors)
        for connector in connectors:
            name = connector.source.name
            stats = connector.stats.snapshot()
            for table, count in _tables(name, stats.events_by_topic.items()):
                captured.add_metric([name, table], count)
            lag_bytes.add_metric([name], stats.slot_lag_bytes)
            lag_seconds.add_metric([name], stats.slot_lag_ms / 1000)
        yield from (captured, lag_bytes, lag_seconds)


CONNECTORS = ConnectorCollector()
REGISTRY.register(CONNECTORS)


class ReadCacheCollector(Collector):
    """Exports the read cache's counters (``server.rpc.profile_cache``), read at scrape time.

    Counted by the cache itself on the event loop (plain integers, no per-read metric call);
    ``read`` returns ``(hits, misses, entries, serving)`` or ``None`` when no cache runs.
    """

    def __init__(self) -> None:
        self.read: Callable[[], tuple[int, int, int, bool] | None] = lambda: None

    def collect(self) -> Iterator[Any]:
        found = self.read()
        if found is None:
            return
        hits, misses, entries, serving = found
        reads = CounterMetricFamily(
            "up_read_cache_reads",
            "GetProfile and LookupProfile calls, and BatchGetProfiles refs, that looked in the "
            "read cache, by result",
            labels=["result"],
        )
        reads.add_metric(["hit"], hits)
        reads.add_metric(["miss"], misses)
        yield reads
        yield GaugeMetricFamily("up_read_cache_entries", "Answers the read cache holds", entries)
        yield GaugeMetricFamily(
            "up_read_cache_serving",
            "1 while the read cache's listener listens (the cache answers), else 0",
            int(serving),
        )


READ_CACHE = ReadCacheCollector()
REGISTRY.register(READ_CACHE)


def _tables(source: str, counts: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    # Table topics are "<source>.<schema>.<table>"; heartbeats and transaction markers are not.
    prefix = source + "."
    for topic, count in counts:
        table = topic[len(prefix) :] if topic.startswith(prefix) else ""
        if "." in table:
            yield table, count


def load_metrics_config(path: str) -> MetricsConfig:
    """The ``[metrics]`` section of a config file (for commands that read no other section).

    Raises:
        ConfigError: The section is invalid (each problem with its key path).
    """
    data = read_config_file(path).get("metrics", {})
    try:
        return MetricsConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            path, [(f"metrics.{k}" if k else "metrics", m) for k, m in validation_problems(exc)]
        ) from None


class MetricsStartError(OSError):
    """The metrics endpoint could not listen on its address."""


def serve_metrics(config: MetricsConfig) -> None:
    """Start the ``/metrics`` endpoint (a daemon thread) if ``listen`` is configured.

    Raises:
        MetricsStartError: The address cannot be bound (in use, or not a local address).
    """
    if config.listen is None:
        return
    host, _, port = config.listen.rpartition(":")
    try:
        start_http_server(int(port), addr=host.strip("[]"))
    except OSError as exc:
        raise MetricsStartError(
            f"cannot serve metrics on {config.listen} ([metrics] listen): {exc.strerror or exc}"
        ) from exc
    log.info("metrics.serving", listen=config.listen)
