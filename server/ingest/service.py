"""Building the ingest pipeline from the config, and running the Kafka engine until stopped."""

from __future__ import annotations

import threading

import structlog

from unified_profile.cdc.config import KafkaConfig
from unified_profile.cdc.connector import table_topic
from unified_profile.cdc.errors import ConfigError, SinkError
from unified_profile.cdc.kafka import KafkaEventSource

from ..config import ServiceConfig
from ..store import migrate, sizing
from ..store.profile_store import ProfileStore, StoreError
from .applier import ProfileApplier
from .consumers import KafkaIngest
from .mapper import ConfiguredMapper
from .pipeline import IngestPipeline

log = structlog.get_logger(__name__)


class StoreNotMigrated(Exception):
    """The store's schema is missing or older than this version needs."""


def open_store(config: ServiceConfig) -> ProfileStore:
    """Connect to the store and check its schema is current.

    Raises:
        StoreNotMigrated: The schema is missing or old (the message says to run ``migrate``).
    """
    store = ProfileStore.connect(config.store.dsn)
    try:
        revision = migrate.current_revision(store.engine)
    except Exception as exc:
        store.close()
        raise StoreError(f"cannot reach the profile store: {exc}") from exc
    if revision != migrate.HEAD_REVISION:
        store.close()
        raise StoreNotMigrated(
            f"the profile store is at schema revision {revision or 'none'}, this version needs "
            f"{migrate.HEAD_REVISION}; run: unified-profile migrate --config {config.file}"
        )
    _warn_if_undersized(store)
    return store


def _warn_if_undersized(store: ProfileStore) -> None:
    """Log a warning when the store's indexes outgrow its server's ``shared_buffers``."""
    try:
        measured = sizing.measure(store.engine)
    except Exception as exc:  # advisory only: never stop a start-up over it
        log.debug("store.sizing_unknown", error=type(exc).__name__)
        return
    if measured.undersized:
        log.warning(
            "store.undersized",
            index_mib=measured.index_mib,
            shared_buffers_mib=measured.shared_buffers_mib,
            advice=measured.advice(),
        )


def build_pipeline(config: ServiceConfig, store: ProfileStore, consumer: str) -> IngestPipeline:
    """The pipeline for this config, storing positions under ``consumer``."""
    applier = ProfileApplier(config.mapping.identity_types, config.rules)
    return IngestPipeline(store, ConfiguredMapper(config.mapping), applier, consumer)


def run_kafka_engine(config: ServiceConfig, store: ProfileStore, stop: threading.Event) -> None:
    """Consume every configured table topic as a member of the engine's group until stopped."""
    transport = config.capture.transport
    if not isinstance(transport, KafkaConfig):
        raise ConfigError(config.file, [(
            "transport.kind",
            'the engine command consumes Kafka: set kind = "kafka" and bootstrap_servers',
        )])
    pipeline = build_pipeline(config, store, transport.group_id)
    topics = [table_topic(s.name, t.table) for s in config.capture.sources for t in s.tables]
    source = KafkaEventSource(transport, topics, pipeline.positions)
    log.info("engine.started", group=transport.group_id, topics=len(topics))
    KafkaIngest(source, pipeline, config.engine.batch_events).run(stop)


__all__ = ["SinkError", "StoreNotMigrated", "build_pipeline", "open_store", "run_kafka_engine"]
