"""Running connectors as a service: one thread per source, retried with backoff until stopped.

Transient failures (a source or broker that went away) are retried with exponential backoff; a
configuration or preflight problem stops the service with its message, because retrying cannot fix
it and an operator must act.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import structlog

from unified_profile.cdc.config import CaptureConfig, KafkaConfig, SourceConfig
from unified_profile.cdc.connector import Connector, heartbeat_topic, table_topic
from unified_profile.cdc.errors import CaptureError, SinkError, SourceError
from unified_profile.cdc.kafka import KafkaOffsetStore, KafkaSink, ensure_topics

from . import metrics
from .retry import retry_transient

log = structlog.get_logger(__name__)


@dataclass
class CaptureService:
    """Runs the connectors of the selected sources against Kafka until :meth:`stop`.

    Attributes:
        config: The capture configuration (its transport must be Kafka).
        sources: The sources to run.
        failure: Set when a connector stopped with an error that retrying cannot fix.
    """

    config: CaptureConfig
    sources: list[SourceConfig]
    failure: CaptureError | None = None
    connectors: dict[str, Connector] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaConfig:
        """The Kafka transport settings."""
        assert isinstance(self.config.transport, KafkaConfig)
        return self.config.transport

    def start(self) -> None:
        """Create the topics, then start one connector thread per source."""
        topics: list[str] = []
        for source in self.sources:
            topics += [table_topic(source.name, t.table) for t in source.tables]
            topics.append(heartbeat_topic(source.name))
            if source.provide_transaction_metadata:
                topics.append(f"{source.name}.transaction")
        retry_transient(self._stop, "kafka.topics", lambda: ensure_topics(
            self.kafka, topics, compacted=[self.kafka.offsets_topic]))
        for source in self.sources:
            thread = threading.Thread(
                target=self._run_source, args=(source,), name=f"cdc-{source.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _run_source(self, source: SourceConfig) -> None:
        def attempt() -> None:
            sink = KafkaSink(
                self.kafka,
                schemas_enable=source.schemas_enable,
                max_event_bytes=source.max_event_bytes,
            )
            connector = Connector(source, sink, KafkaOffsetStore(self.kafka))
            self.connectors[source.name] = connector
            metrics.CONNECTORS.add(connector)
            try:
                connector.run(self._stop)
            finally:
                sink.close()

        try:
            retry_transient(self._stop, f"cdc.{source.name}", attempt)
        except (SourceError, SinkError) as exc:
            if not self._stop.is_set():
                raise
            log.info("cdc.stopped_while_retrying", source=source.name, error=str(exc))
        except CaptureError as exc:
            self.failure = exc
            self._stop.set()
            log.error("cdc.failed", source=source.name, error=str(exc))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every connector thread ended; ``True`` if they all did."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Ask every connector to finish its batch, confirm what is durable and stop."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a connector failed for good)."""
        return self._stop.is_set()
