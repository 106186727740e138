"""The apply scenarios: change events → profile store commit, with many profiles already stored.

The engine runs the demo configuration (``bench/apply_data.py``) against a store that already holds
many profiles, written directly with ``COPY`` (loading them through the engine would take hours),
and applies a seeded mix of change events: embedded (``IngestPipeline.apply`` in-process) and from
Kafka (``KafkaIngest`` over a consumer group). Each rate sits next to a baseline measured in the same
run: a raw batched upsert of the same source-record rows into a table shaped like
``up_source_records``. See ``bench/README.md`` for what each figure means.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import psycopg
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql

from unified_profile.cdc.config import KafkaConfig
from unified_profile.cdc.envelope import ChangeEvent, decoded_from
from unified_profile.cdc.kafka import KafkaSink, ensure_topics, partition_stream
from unified_profile.server.config import ServiceConfig, parse_service_config
from unified_profile.server.engine.records import SourceRecord
from unified_profile.server.engine.survivorship import merge_fields
from unified_profile.server.ingest.mapper import ConfiguredMapper
from unified_profile.server.store import migrate, profile_document

from . import apply_data
from .apply_data import Preloader, SourceNames, WorkloadSpec
from .apply_proc import EngineJob, EngineResult, run_engine
from .baselines import Rate
from .report import Figure
from .scenario import Context, ScenarioResult
from .timing import host_cpu_shares, host_cpu_times

APPLY_TARGET_PER_S = 10_000
KAFKA_WORKERS = 2
"""Engine processes in the consumer group for the multi-process Kafka figure: one per core."""
RAW_TABLE = "bench_raw_source_records"
_PRELOAD_CHUNK = 10_000
_SAMPLE_CHECKED = 200


@dataclass(frozen=True)
class ApplySizes:
    """How big an apply run is.

    Attributes:
        profiles: Profiles stored before the main measurements (one CRM customer each).
        small_profiles: Profiles stored for the growth comparison (measured first).
        changes: Change events per workload.
        cap_s: An engine run stops after the batch that passes this many seconds.
    """

    profiles: int
    small_profiles: int
    changes: int
    cap_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> ApplySizes:
        """The full or the quick sizes."""
        if quick:
            return cls(profiles=10_000, small_profiles=2_000, changes=5_000, cap_s=6.0)
        return cls(profiles=1_000_000, small_profiles=10_000, changes=100_000, cap_s=60.0)


def run(ctx: Context, sizes: ApplySizes | None = None) -> ScenarioResult:
    """Preload, then measure embedded apply (small and large store), Kafka apply and the baseline."""
    sizes = sizes or ApplySizes.for_mode(ctx.quick)
    dsn = ctx.services.dsn
    names = SourceNames.for_run(ctx.run_id)
    config_data = apply_data.engine_config(
        dsn,
        ctx.services.bootstrap_servers,
        names,
        group_id=f"bench_{ctx.run_id}_engine",
        offsets_topic=f"bench_{ctx.run_id}_apply.offsets",
    )
    config = parse_service_config(config_data, "bench")
    preloader = Preloader(ctx.seed, names.crm, config.rules)
    check_preload(config, preloader, names, sizes.profiles)
    migrate.upgrade(dsn)
    batch = config.engine.batch_events
    workloads = [
        WorkloadSpec(0, sizes.changes, sizes.small_profiles, ctx.seed),
        WorkloadSpec(1, sizes.changes, sizes.profiles, ctx.seed),
        WorkloadSpec(2, sizes.changes, sizes.profiles, ctx.seed),
        WorkloadSpec(3, sizes.changes, sizes.profiles, ctx.seed),
    ]
    timeout = sizes.cap_s + 600.0

    small_load = preload(dsn, preloader, 1, sizes.small_profiles)
    small = run_engine(
        EngineJob("embedded", config_data, names, workloads[0], sizes.cap_s), timeout
    )

    large_load = preload(dsn, preloader, sizes.small_profiles + 1, sizes.profiles)
    twin_seconds = create_raw_table(dsn)
    raw = raw_upsert(dsn, config, names, workloads[1], batch)
    large = run_engine(
        EngineJob("embedded", config_data, names, workloads[1], sizes.cap_s), timeout
    )

    transport = config.capture.transport
    assert isinstance(transport, KafkaConfig)
    produced = produce(transport, names, workloads[2], config.capture.sources[0].schemas_enable)
    kafka = run_engine(
        EngineJob("kafka", config_data, names, workloads[2], sizes.cap_s, produced.end_offsets),
        timeout,
    )
    # Two engine processes in the same consumer group, one per core, go on where the single
    # engine stopped (the group's positions) with a fresh workload in the same topics.
    produced_two = produce(
        transport,
        names,
        workloads[3],
        config.capture.sources[0].schemas_enable,
        already=sum(produced.end_offsets.values()),
    )
    kafka_two = run_engine(
        EngineJob(
            "kafka",
            config_data,
            names,
            workloads[3],
            sizes.cap_s,
            produced_two.end_offsets,
            workers=KAFKA_WORKERS,
        ),
        timeout,
    )
    stored = _store_sizes(dsn)
    details: dict[str, Any] = {
        "sizes": asdict(sizes),
        "batch_events": batch,
        "preload": {
            "method": "COPY of engine-shaped rows (one CRM customer per profile), then VACUUM ANALYZE",
            "small": small_load,
            "large": large_load,
            "raw_table_copy_seconds": twin_seconds,
        },
        "workloads": [asdict(w) for w in workloads],
        "embedded_small": _engine_details(small, sizes.small_profiles),
        "embedded_large": _engine_details(large, sizes.profiles),
        "kafka_large": {
            **_engine_details(kafka, sizes.profiles),
            "produce_seconds": produced.seconds,
            "records_in_topics": sum(produced.end_offsets.values()),
        },
        "kafka_large_workers": {
            **_engine_details(kafka_two, sizes.profiles),
            "workers_started": KAFKA_WORKERS,
            "workers_applying": kafka_two.workers,
            "produce_seconds": produced_two.seconds,
        },
        "raw_upsert": raw,
        "store_after": stored,
    }
    result = ScenarioResult(details=details)
    result.figures = _figures(sizes, small, large, kafka, kafka_two, raw)
    result.notes = _notes(sizes, small_load, large_load, small, large, kafka, kafka_two, raw)
    return result


# --- preloading ------------------------------------------------------------------------------


def check_preload(
    config: ServiceConfig, preloader: Preloader, names: SourceNames, profiles: int
) -> None:
    """Compare preloaded rows with what the real mapper and survivorship make of the same rows.

    Raises:
        AssertionError: The fast preload no longer writes what the engine would (the demo
            mapping, the rules or the engine changed): fix ``Preloader.stored``.
    """
    mapper = ConfiguredMapper(config.mapping)
    factory = apply_data.EventFactory(names)
    step = max(1, profiles // _SAMPLE_CHECKED)
    for customer_id in range(1, profiles + 1, step):
        stored = preloader.stored(customer_id)
        row = apply_data.customer_row(apply_data.customer(preloader.seed, customer_id))
        change = apply_data.Change(
            "new_customer", "c", None, row, customer_id, stored.commit_time_us, 1
        )
        record = mapper.map_event(decoded_from(factory.event(change)))
        assert isinstance(record, SourceRecord)
        merged = merge_fields([record], config.rules)
        profile_fields = profile_document.encode(merged)
        engine_view = (
            record.key,
            dict(record.fields),
            sorted([i.type, i.value] for i in record.identifiers),
            record.version,
            profile_fields,
        )
        preload_view = (
            stored.key,
            stored.fields,
            stored.identifiers,
            stored.version,
            stored.profile_fields,
        )
        assert engine_view == preload_view, (
            f"preloaded customer {customer_id} differs from the engine's image:\n"
            f"engine:  {engine_view}\npreload: {preload_view}"
        )


def preload(dsn: str, preloader: Preloader, first_id: int, last_id: int) -> dict[str, Any]:
    """Store customers ``first_id..last_id`` as profiles: three parallel COPYs, then VACUUM ANALYZE.

    Returns:
        How many and how long (COPY and VACUUM ANALYZE separately).
    """
    targets = (
        ("up_source_records", apply_data.RECORD_COLUMNS),
        ("up_record_identifiers", apply_data.IDENTIFIER_COLUMNS),
        ("up_profiles", apply_data.PROFILE_COLUMNS),
    )
    started = time.perf_counter()
    writers = [_CopyWriter(dsn, table, columns) for table, columns in targets]
    for writer in writers:
        writer.start()
    try:
        for chunk_start in range(first_id, last_id + 1, _PRELOAD_CHUNK):
            chunk_end = min(chunk_start + _PRELOAD_CHUNK - 1, last_id)
            for writer, data in zip(
                writers, preloader.copy_lines(chunk_start, chunk_end), strict=True
            ):
                writer.put(data)
    finally:
        for writer in writers:
            writer.finish()
    for writer in writers:
        if writer.error is not None:
            raise writer.error
    copied = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Autovacuum would otherwise visit the freshly loaded tables during the measurements.
        conn.execute("VACUUM (ANALYZE) " + ", ".join(table for table, _ in targets))
    return {
        "profiles": last_id - first_id + 1,
        "first_id": first_id,
        "copy_seconds": copied - started,
        "vacuum_analyze_seconds": time.perf_counter() - copied,
    }


class _CopyWriter(threading.Thread):
    """One ``COPY … FROM STDIN`` fed from a queue (the generator runs in the caller's thread)."""

    def __init__(self, dsn: str, table: str, columns: tuple[str, ...]) -> None:
        super().__init__(name=f"bench-copy-{table}", daemon=True)
        self._dsn = dsn
        self._statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def put(self, data: bytes) -> None:
        while self.error is None:
            try:
                self._queue.put(data, timeout=0.5)
                return
            except queue.Full:
                continue
        raise RuntimeError(f"{self.name} failed") from self.error

    def finish(self) -> None:
        if self.error is None and self.is_alive():
            self._queue.put(None)
        self.join()

    def run(self) -> None:
        try:
            with psycopg.connect(self._dsn) as conn, conn.cursor().copy(self._statement) as copy:
                while (data := self._queue.get()) is not None:
                    copy.write(data)
        except BaseException as exc:
            self.error = exc


def _store_sizes(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
            "WHERE relname IN ('up_source_records', 'up_record_identifiers', 'up_profiles', "
            "'up_change_log') ORDER BY relname"
        ).fetchall()
    return {name: {"rows": rows_, "mib": round(size / 2**20, 1)} for name, rows_, size in rows}


# --- the raw upsert baseline ------------------------------------------------------------------

_UPSERT = """
INSERT INTO {raw} SELECT * FROM {stage}
ON CONFLICT (source, table_name, record_key) DO UPDATE SET
    profile_id = excluded.profile_id, fields = excluded.fields,
    identifiers = excluded.identifiers, version = excluded.version,
    commit_time_us = excluded.commit_time_us, position = excluded.position,
    deleted = excluded.deleted
"""


def create_raw_table(dsn: str) -> float:
    """``bench_raw_source_records``: ``up_source_records``' shape (indexes too) and current rows."""
    started = time.perf_counter()
    raw = sql.Identifier(RAW_TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(raw))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE up_source_records INCLUDING ALL)").format(raw))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM up_source_records").format(raw))
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(raw))
    return time.perf_counter() - started


def raw_upsert(
    dsn: str, config: ServiceConfig, names: SourceNames, spec: WorkloadSpec, batch: int
) -> dict[str, Any]:
    """Upsert the source-record rows the engine writes for ``spec`` into the raw table.

    Per batch of ``batch`` events (the engine's batch), mapped with the real mapper outside the
    clock: the latest row per key (as the applier keeps), serialised with orjson, ``COPY`` into a
    temporary table, one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` into the raw table, commit.
    Only that is timed. The raw table is dropped afterwards.
    """
    mapper = ConfiguredMapper(config.mapping)
    raw = sql.Identifier(RAW_TABLE)
    stage = sql.Identifier("bench_raw_stage")
    copy = sql.SQL("COPY {} FROM STDIN").format(stage)
    upsert = sql.SQL(_UPSERT).format(raw=raw, stage=stage)
    seconds = 0.0
    events = rows_written = 0
    host_before = host_cpu_times()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TEMPORARY TABLE {} (LIKE up_source_records) ON COMMIT DELETE ROWS"
            ).format(stage)
        )
        conn.commit()
        for chunk in apply_data.events(spec, names, batch):
            rows = _engine_rows(mapper, names, chunk)
            started = time.perf_counter()
            with conn.cursor() as cur:
                with cur.copy(copy) as pipe:
                    for row in rows:
                        pipe.write_row(row)
                cur.execute(upsert)
            conn.commit()
            seconds += time.perf_counter() - started
            events += len(chunk)
            rows_written += len(rows)
    host_after = host_cpu_times()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(raw))
    rate = Rate(events, seconds)
    return {
        "events": events,
        "rows_upserted": rows_written,
        "seconds": seconds,
        "per_s": rate.per_second,
        "host_cpu_percent": host_cpu_shares(host_before, host_after),
    }


def _engine_rows(
    mapper: ConfiguredMapper, names: SourceNames, events: list[ChangeEvent]
) -> list[tuple[Any, ...]]:
    """The ``up_source_records`` rows the applier saves for one batch (latest image per key)."""
    latest: dict[Any, SourceRecord] = {}
    for event in events:
        record = mapper.map_event(decoded_from(event))
        assert isinstance(record, SourceRecord)
        latest[record.key] = record
    return [
        (
            r.key.source,
            r.key.table,
            r.key.key,
            _profile_of(r, names),
            orjson.dumps(dict(r.fields)).decode(),
            orjson.dumps(sorted([i.type, i.value] for i in r.identifiers)).decode(),
            r.version,
            r.commit_time_us,
            r.position,
            r.deleted,
        )
        for r in latest.values()
    ]


def _profile_of(record: SourceRecord, names: SourceNames) -> str:
    """The profile the applier puts this record in: its customer's (one profile per customer)."""
    if record.key.source == names.crm:
        return apply_data.profile_id_of(record.key)
    crm_id = next(i.value for i in record.identifiers if i.type == "crm_id")
    return apply_data.profile_id_of(apply_data.customer_key(names.crm, int(crm_id)))


# --- Kafka -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Produced:
    """A workload in its topics."""

    end_offsets: dict[str, int]
    seconds: float


def produce(
    kafka: KafkaConfig,
    names: SourceNames,
    spec: WorkloadSpec,
    schemas_enable: bool,
    already: int = 0,
) -> Produced:
    """Produce the workload's events to their topics with the connector's ``KafkaSink``.

    ``already``: how many records the topics held before (earlier workloads).
    """
    topics = [names.customers_topic, names.members_topic]
    ensure_topics(kafka, topics)
    started = time.perf_counter()
    sink = KafkaSink(kafka, schemas_enable)
    try:
        for chunk in apply_data.events(spec, names, 5_000):
            sink.publish(chunk)
            sink.acknowledged()  # drains the producer's acknowledgements (keeps its pipe flowing)
        sink.flush(600)
    finally:
        sink.close()
    seconds = time.perf_counter() - started
    end_offsets = _partition_ends(
        kafka, topics, already + spec.changes, timeout=120.0 + spec.changes / 2_000
    )
    return Produced(end_offsets, seconds)


def _partition_ends(
    kafka: KafkaConfig, topics: list[str], expected: int, timeout: float
) -> dict[str, int]:
    """Each partition's end offset, found by reading the topics (``expected`` records in all).

    Read rather than asked for: Tansu answers ``ListOffsets(latest)`` with the base offset of the
    partition's last record batch, not the offset after its last record.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        check_crcs=False,
        max_poll_records=10_000,
        **kafka.client_options,
    )
    ends: dict[str, int] = {}
    read = 0
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while read < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {read} of {expected} produced events back")
            for tp, records in consumer.poll(timeout_ms=200).items():
                read += len(records)
                stream = partition_stream(tp.topic, tp.partition)
                ends[stream] = max(ends.get(stream, 0), records[-1].offset + 1)
    finally:
        consumer.close()
    if read != expected or sum(ends.values()) != expected:
        raise RuntimeError(f"produced {expected} events, read back {read}")
    return ends


# --- figures -----------------------------------------------------------------------------------


def _engine_details(result: EngineResult, profiles: int) -> dict[str, Any]:
    batches = sorted(result.batch_seconds)
    return {
        "profiles_stored": profiles,
        "events_applied": result.events,
        "seconds": result.seconds,
        "per_s": result.per_second,
        "capped": result.capped,
        "records": result.records,
        "profile_changes": result.profile_changes,
        "batches": len(batches),
        "batch_seconds_p50": batches[len(batches) // 2] if batches else None,
        "batch_seconds_max": batches[-1] if batches else None,
        "startup_seconds": result.startup_seconds,
        "reached_end": result.reached_end,
        "cpu_seconds": result.cpu_s,
        "cpu_us_per_change": _per_change_us(result.cpu_s, result),
        "postgres_cpu_seconds": result.postgres_cpu_s,
        "postgres_cpu_us_per_change": _per_change_us(result.postgres_cpu_s, result),
        "host_cpu_percent": result.host_cpu_percent,
        "rss_start_mib": result.rss_start_mib,
        "rss_end_mib": result.rss_end_mib,
        "peak_rss_mib": result.peak_rss_mib,
        "peak_rss_is_window_only": result.peak_reset,
    }


def _per_change_us(seconds: float | None, result: EngineResult) -> float | None:
    return seconds / result.events * 1e6 if seconds is not None and result.events else None


def _figures(
    sizes: ApplySizes,
    small: EngineResult,
    large: EngineResult,
    kafka: EngineResult,
    kafka_two: EngineResult,
    raw: dict[str, Any],
) -> list[Figure]:
    stored = f"{sizes.profiles:,} profiles stored"
    baseline = raw["per_s"]
    baseline_name = f"raw COPY + upsert of the same rows into up_source_records' shape, {stored}"
    target = f"≥ {APPLY_TARGET_PER_S:,}/s"
    return [
        Figure(
            f"apply throughput, embedded: event → store commit ({stored})",
            large.per_second,
            "changes/s",
            baseline=baseline,
            baseline_name=baseline_name,
            target=target,
            met=large.per_second >= APPLY_TARGET_PER_S,
        ),
        Figure(
            f"apply throughput, Kafka → store commit ({stored})",
            kafka.per_second,
            "changes/s",
            baseline=baseline,
            baseline_name=baseline_name,
            target=target,
            met=kafka.per_second >= APPLY_TARGET_PER_S,
        ),
        Figure(
            f"apply throughput, Kafka → store commit, {KAFKA_WORKERS} engine processes ({stored})",
            kafka_two.per_second,
            "changes/s",
            baseline=kafka.per_second,
            baseline_name="1 engine process, same store and mix",
            target=target,
            met=kafka_two.per_second >= APPLY_TARGET_PER_S,
        ),
        Figure(
            f"apply growth: embedded at {sizes.profiles:,} vs {sizes.small_profiles:,} profiles",
            large.per_second,
            "changes/s",
            baseline=small.per_second,
            baseline_name=f"same mix, {sizes.small_profiles:,} profiles stored",
        ),
        Figure(
            f"engine process CPU per change (embedded, {stored})",
            _per_change_us(large.cpu_s, large) or float("nan"),
            "µs",
        ),
        Figure(
            f"PostgreSQL CPU per change (embedded, {stored})",
            _per_change_us(large.postgres_cpu_s, large) or float("nan"),
            "µs",
        ),
        Figure(
            f"peak RSS, embedded engine ({stored}; workload events held in memory)",
            large.peak_rss_mib,
            "MiB",
            baseline=small.peak_rss_mib,
            baseline_name=f"{sizes.small_profiles:,} profiles stored",
        ),
        Figure(
            f"apply memory growth during the window ({stored})",
            large.peak_rss_mib - large.rss_start_mib,
            "MiB",
            baseline=small.peak_rss_mib - small.rss_start_mib,
            baseline_name=f"{sizes.small_profiles:,} profiles stored",
        ),
        Figure(f"peak RSS, Kafka engine process ({stored})", kafka.peak_rss_mib, "MiB"),
    ]


def _notes(
    sizes: ApplySizes,
    small_load: dict[str, Any],
    large_load: dict[str, Any],
    small: EngineResult,
    large: EngineResult,
    kafka: EngineResult,
    kafka_two: EngineResult,
    raw: dict[str, Any],
) -> list[str]:
    loaded = small_load["profiles"] + large_load["profiles"]
    copy_s = small_load["copy_seconds"] + large_load["copy_seconds"]
    notes = [
        f"preload: {loaded:,} profiles (one CRM customer, crm_id + email) written with COPY into "
        f"up_source_records, up_record_identifiers and up_profiles as the applier would store "
        f"them ({copy_s:.0f} s), then VACUUM ANALYZE; change log not preloaded",
        f"workloads: {sizes.changes:,} change events each — 70 % updates of stored customers, "
        f"20 % new customers, 10 % new loyalty members linked to a customer (crm_id + email); "
        f"batches of {len(large.batch_seconds) and large.events // len(large.batch_seconds):,} "
        f"events",
    ]
    for label, result in (
        (f"embedded, {sizes.small_profiles:,} stored", small),
        (f"embedded, {sizes.profiles:,} stored", large),
        (f"Kafka, {sizes.profiles:,} stored", kafka),
        (
            f"Kafka, {KAFKA_WORKERS} engine processes ({kafka_two.workers} were assigned "
            f"events), {sizes.profiles:,} stored, timed from when every one had started",
            kafka_two,
        ),
    ):
        text = f"{label}: {result.events:,} events in {result.seconds:.1f} s"
        if result.capped:
            text += f" (stopped at the {sizes.cap_s:.0f} s cap)"
        text += f"; CPU per change: engine {_per_change_us(result.cpu_s, result) or 0:,.0f} µs"
        if result.postgres_cpu_s is not None:
            text += f", PostgreSQL {_per_change_us(result.postgres_cpu_s, result) or 0:,.0f} µs"
        if result.host_cpu_percent:
            shares = result.host_cpu_percent
            text += f"; host {shares['idle']:.0f} % idle, {shares['steal']:.0f} % stolen"
        notes.append(text)
    notes.append(
        f"raw upsert baseline: {raw['events']:,} events → {raw['rows_upserted']:,} rows in "
        f"{raw['seconds']:.1f} s of COPY + upsert + commit (mapping excluded)"
    )
    return notes
