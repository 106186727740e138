"""The engine under test, in a process of its own: embedded apply, or a Kafka consumer group member.

One child per measurement, so that its memory figures are the engine's alone (the bench process
holds the preload and the other scenarios' data) and every run starts cold, as a restarted engine
does.

* **embedded**: the child builds its workload's change events (what the connector hands the
  in-memory sink), then feeds them to :meth:`IngestPipeline.apply` ``[engine] batch_events`` at a
  time, as :class:`~unified_profile.server.ingest.consumers.EmbeddedIngest` does (each event
  wrapped as a ``StreamEvent`` with ``decoded=`` set, stream ``source:<name>``, position = LSN).
  Timed from the first ``apply`` call to the return of the last (its store commit).
* **kafka**: the events are already in their topics; the child runs
  :class:`~unified_profile.server.ingest.consumers.KafkaIngest` over a new consumer group, exactly
  as ``run_kafka_engine`` builds it, with the pipeline wrapped only to timestamp each batch. Timed
  from the first ``apply`` call (group join and the first fetch excluded, reported apart) to the
  store commit of the batch that brings the store's positions to the topics' end offsets.

Either run stops early, after the batch in progress, once ``cap_s`` seconds have passed: the figure
is then the rate over what was applied (the JSON says how much), and a slow engine cannot stretch
the suite past its time budget.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import resource
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from unified_profile.cdc.config import KafkaConfig
from unified_profile.cdc.connector import table_topic
from unified_profile.cdc.envelope import decoded_from
from unified_profile.cdc.kafka import KafkaEventSource
from unified_profile.server.collector import settle_after_start
from unified_profile.server.config import parse_service_config
from unified_profile.server.ingest.consumers import KafkaIngest
from unified_profile.server.ingest.pipeline import BatchResult, IngestPipeline, StreamEvent
from unified_profile.server.ingest.service import build_pipeline, open_store

from . import apply_data
from .timing import (
    backend_cpu,
    backend_cpu_between,
    host_cpu_shares,
    host_cpu_times,
    peak_rss_mib,
)

_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class EngineJob:
    """What one engine child does.

    Attributes:
        mode: ``embedded`` or ``kafka``.
        config: The service config (as parsed TOML).
        names: The sources' names.
        workload: The events to apply (embedded: built in the child; kafka: already produced).
        cap_s: Stop after the batch that runs past this many seconds.
        end_offsets: Kafka only: ``kafka:<topic>:<partition>`` → the partition's end offset.
        workers: Kafka only: engine processes in the consumer group, each a child of its own.
    """

    mode: Literal["embedded", "kafka"]
    config: dict[str, Any]
    names: apply_data.SourceNames
    workload: apply_data.WorkloadSpec
    cap_s: float
    end_offsets: dict[str, int] = field(default_factory=dict)
    workers: int = 1


@dataclass
class EngineResult:
    """What the child measured.

    Attributes:
        events: Events applied (committed) in the timed window.
        seconds: First ``apply`` call → return of the last one.
        capped: The run stopped at ``cap_s`` before the workload's end.
        records: Source records the batches carried.
        profile_changes: Change-log entries the batches appended.
        batch_seconds: Duration of each ``apply`` call, in order.
        batch_spans: ``(start, end, events)`` of each ``apply`` call (``perf_counter``, which is
            the same clock in every process on Linux): how several workers' windows are joined.
        startup_seconds: Kafka: from creating the consumer to the first ``apply`` (group join, fetch).
        reached_end: Kafka: the store's positions equal every partition's end offset - 1.
        cpu_s: The child's user + system CPU during the window.
        postgres_cpu_s: CPU of the store's PostgreSQL backends during the window (``None`` when
            the server's processes are not readable here, e.g. ``UP_BENCH_PG_DSN`` on another host).
        backends_open: Each backend's CPU seconds when the window opened (for joining workers).
        backends_close: … and when it closed.
        workers: How many engine processes these figures join (that applied anything).
        host_cpu_percent: The whole machine's CPU shares during the window.
        rss_start_mib: Resident memory when the window opened (embedded: events already built).
        rss_end_mib: Resident memory when it closed.
        peak_rss_mib: The window's peak (``VmHWM``, reset when the window opened where Linux allows).
        peak_reset: Whether that reset worked (else the peak covers the child's whole life).
        error: The traceback, if the run failed.
    """

    events: int = 0
    seconds: float = 0.0
    capped: bool = False
    records: int = 0
    profile_changes: int = 0
    batch_seconds: list[float] = field(default_factory=list)
    batch_spans: list[tuple[float, float, int]] = field(default_factory=list)
    startup_seconds: float | None = None
    reached_end: bool | None = None
    cpu_s: float = 0.0
    postgres_cpu_s: float | None = None
    backends_open: dict[int, float] | None = None
    backends_close: dict[int, float] | None = None
    workers: int = 1
    host_cpu_percent: dict[str, float] | None = None
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    peak_rss_mib: float = 0.0
    peak_reset: bool = False
    error: str | None = None

    @property
    def per_second(self) -> float:
        """Changes applied per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def run_engine(job: EngineJob, timeout: float) -> EngineResult:
    """Run ``job`` in fresh child processes (``job.workers`` of them) and return what they measured.

    Raises:
        RuntimeError: A child failed or did not report within ``timeout`` seconds.
    """
    children = []
    for worker in range(job.workers):
        parent_end, child_end = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=child_main,
            args=(job, child_end),
            name=f"bench-engine-{job.mode}-{worker}",
            daemon=True,
        )
        process.start()
        child_end.close()
        children.append((process, parent_end))
    results: list[EngineResult] = []
    deadline = time.monotonic() + timeout
    try:
        for process, parent_end in children:
            if not parent_end.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"the {job.mode} engine did not report within {timeout:.0f}s")
            try:
                results.append(parent_end.recv())
            except EOFError:
                raise RuntimeError(
                    f"the {job.mode} engine process died (exit {process.exitcode})"
                ) from None
    finally:
        for process, _ in children:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
    for result in results:
        if result.error:
            raise RuntimeError(f"the {job.mode} engine failed:\n{result.error}")
    return results[0] if len(results) == 1 else joined(results)


def joined(results: Sequence[EngineResult]) -> EngineResult:
    """Several consumer-group members' results as one engine's.

    The window opens once every worker has started its first batch (before that, the first to
    join the group works alone, and then hands partitions over) and closes when the last batch
    commits. Only batches started inside it count. CPU is summed; each PostgreSQL backend's CPU
    is counted once, from the first opening to the last closing reading.
    """
    spans = [span for result in results for span in result.batch_spans]
    opened = max(min(start for start, _, _ in r.batch_spans) for r in results if r.batch_spans)
    closed = max(end for _, end, _ in spans)
    inside = [span for span in spans if span[0] >= opened]
    out = EngineResult(
        events=sum(events for _, _, events in inside),
        seconds=closed - opened,
        capped=any(r.capped for r in results),
        records=sum(r.records for r in results),
        profile_changes=sum(r.profile_changes for r in results),
        batch_seconds=[end - start for start, end, _ in inside],
        batch_spans=inside,
        startup_seconds=max(r.startup_seconds or 0.0 for r in results),
        reached_end=all(r.reached_end for r in results),
        cpu_s=sum(r.cpu_s for r in results),
        host_cpu_percent=results[0].host_cpu_percent,
        rss_start_mib=max(r.rss_start_mib for r in results),
        rss_end_mib=max(r.rss_end_mib for r in results),
        peak_rss_mib=max(r.peak_rss_mib for r in results),
        peak_reset=all(r.peak_reset for r in results),
        workers=sum(1 for r in results if r.batch_spans),
    )
    if all(r.backends_open is not None and r.backends_close is not None for r in results):
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        for r in results:
            assert r.backends_open is not None and r.backends_close is not None
            for pid, cpu in r.backends_open.items():
                first[pid] = min(first.get(pid, cpu), cpu)
            for pid, cpu in r.backends_close.items():
                last[pid] = max(last.get(pid, cpu), cpu)
        out.postgres_cpu_s = sum(cpu - first.get(pid, 0.0) for pid, cpu in last.items())
    return out


def child_main(job: EngineJob, report: multiprocessing.connection.Connection) -> None:
    """Entry point of the child."""
    _quiet_logging()
    try:
        result = _embedded(job) if job.mode == "embedded" else _kafka(job)
    except BaseException:
        result = EngineResult(error=traceback.format_exc())
    report.send(result)


# --- embedded --------------------------------------------------------------------------------


def _embedded(job: EngineJob) -> EngineResult:
    config = parse_service_config(job.config, "bench")
    names = job.names
    events = [e for chunk in apply_data.events(job.workload, names, 10_000) for e in chunk]
    streams = {
        names.customers_topic: f"source:{names.crm}",
        names.members_topic: f"source:{names.loyalty}",
    }
    store = open_store(config)
    try:
        pipeline = build_pipeline(config, store, "embedded")
        pipeline.positions()  # connect before the clock starts
        # As `unified-profile run` does once started; this also leaves the workload (held
        # whole in memory, unlike a real engine's one batch) out of every later collection.
        settle_after_start()
        size = config.engine.batch_events
        window = _Window.open(config.store.dsn)
        result = EngineResult()
        started = time.perf_counter()
        for offset in range(0, len(events), size):
            if time.perf_counter() - started > job.cap_s:
                result.capped = True
                break
            batch_started = time.perf_counter()
            applied = pipeline.apply(
                [
                    StreamEvent(streams[e.topic], e.lsn, e.topic, decoded=decoded_from(e))
                    for e in events[offset : offset + size]
                ]
            )
            batch_finished = time.perf_counter()
            result.batch_seconds.append(batch_finished - batch_started)
            result.batch_spans.append((batch_started, batch_finished, applied.events))
            _count(result, applied)
        result.seconds = time.perf_counter() - started
        window.close(result)
        return result
    finally:
        store.close()


# --- kafka -----------------------------------------------------------------------------------


class _TimedPipeline:
    """The pipeline, timestamping each batch (``KafkaIngest`` only calls ``apply``)."""

    def __init__(self, pipeline: IngestPipeline, dsn: str) -> None:
        self._pipeline = pipeline
        self._dsn = dsn
        self.first_started: float | None = None
        self.last_finished: float | None = None
        self.result = EngineResult()
        self.window: _Window | None = None

    def apply(self, events: Sequence[StreamEvent]) -> BatchResult:
        if self.window is None:
            self.window = _Window.open(self._dsn, collect=False)
        started = time.perf_counter()
        if self.first_started is None:
            self.first_started = started
        applied = self._pipeline.apply(events)
        self.last_finished = time.perf_counter()
        self.result.batch_seconds.append(self.last_finished - started)
        self.result.batch_spans.append((started, self.last_finished, applied.events))
        _count(self.result, applied)
        return applied

    def positions(self) -> dict[str, int]:
        return self._pipeline.positions()


def _kafka(job: EngineJob) -> EngineResult:
    config = parse_service_config(job.config, "bench")
    transport = config.capture.transport
    assert isinstance(transport, KafkaConfig)
    store = open_store(config)
    try:
        pipeline = build_pipeline(config, store, transport.group_id)
        timed = _TimedPipeline(pipeline, config.store.dsn)
        settle_after_start()  # as `unified-profile engine` does
        topics = [table_topic(s.name, t.table) for s in config.capture.sources for t in s.tables]
        expected = sum(job.end_offsets.values())
        created = time.perf_counter()
        source = KafkaEventSource(transport, topics, pipeline.positions)
        ingest = KafkaIngest(source, timed, config.engine.batch_events)  # type: ignore[arg-type]
        stop = threading.Event()
        failure: list[str] = []

        def consume() -> None:
            try:
                ingest.run(stop)
            except BaseException:
                failure.append(traceback.format_exc())

        thread = threading.Thread(target=consume, name="bench-kafka-ingest", daemon=True)
        thread.start()
        deadline = time.monotonic() + job.cap_s + 120.0  # the join must not hang the suite
        capped = False
        # Several workers share the work: the store's positions say when all of it is done.
        while thread.is_alive() and not _at_end(pipeline.positions(), job.end_offsets):
            first = timed.first_started
            if first is not None and time.perf_counter() - first > job.cap_s:
                capped = True
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"kafka engine: {timed.result.events} of {expected} events")
            time.sleep(0.2)
        stop.set()
        thread.join(120)
        if failure:
            raise RuntimeError(failure[0])
        result = timed.result
        # A group member may be assigned nothing (more members than partitions with data).
        if timed.first_started is not None and timed.last_finished is not None:
            result.seconds = timed.last_finished - timed.first_started
            result.startup_seconds = timed.first_started - created
        if timed.window is not None:
            timed.window.close(result)
        result.reached_end = _at_end(pipeline.positions(), job.end_offsets)
        result.capped = capped and not result.reached_end
        return result
    finally:
        store.close()


def _at_end(positions: dict[str, int], end_offsets: dict[str, int]) -> bool:
    return all(positions.get(stream, -1) == end - 1 for stream, end in end_offsets.items() if end)


# --- shared ----------------------------------------------------------------------------------


def _count(result: EngineResult, applied: BatchResult) -> None:
    result.events += applied.events
    result.records += applied.records
    result.profile_changes += len(applied.changes)


@dataclass
class _Window:
    """CPU and memory readings around the timed window."""

    dsn: str
    cpu_s: float
    backends: dict[int, float] | None
    host: tuple[int, ...] | None
    rss_mib: float
    peak_reset: bool

    @classmethod
    def open(cls, dsn: str, collect: bool = True) -> _Window:
        if collect:
            gc.collect()
        backends = backend_cpu(dsn)
        return cls(dsn, _cpu_seconds(), backends, host_cpu_times(), _rss_mib(), _reset_peak_rss())

    def close(self, result: EngineResult) -> None:
        result.cpu_s = _cpu_seconds() - self.cpu_s
        after = backend_cpu(self.dsn)
        result.backends_open, result.backends_close = self.backends, after
        result.postgres_cpu_s = backend_cpu_between(self.backends, after)
        result.host_cpu_percent = host_cpu_shares(self.host, host_cpu_times())
        result.rss_start_mib = self.rss_mib
        result.rss_end_mib = _rss_mib()
        result.peak_rss_mib = peak_rss_mib()
        result.peak_reset = self.peak_reset


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0: write ``5`` to ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _quiet_logging() -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
