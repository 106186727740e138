"""The connector under test, in a process of its own (as the capture service runs it).

The child runs one :class:`~unified_profile.cdc.connector.Connector` with a
:class:`~unified_profile.cdc.kafka.KafkaSink`. The sink is wrapped by :class:`RecordingSink`, which
only observes: every time the connector asks the sink how many events are acknowledged (once per
loop iteration, which is how ``stats.events_acknowledged`` is kept), it records ``(time, count)``
when the count moved and publishes the count in shared memory for the parent to poll. The parent
thus learns exactly when the connector saw each acknowledgement, without a sampling thread
competing with the connector for the GIL.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import resource
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unified_profile.cdc.config import KafkaConfig, parse_capture_config
from unified_profile.cdc.connector import Connector
from unified_profile.cdc.envelope import ChangeEvent
from unified_profile.cdc.kafka import KafkaOffsetStore, KafkaSink
from unified_profile.cdc.sink import Sink
from unified_profile.server.collector import settle_after_start

from .timing import peak_rss_mib

_CONTEXT = multiprocessing.get_context("spawn")


@dataclass
class ConnectorResult:
    """What the child reports when it stops.

    Attributes:
        timeline: ``(unix time, events acknowledged)`` each time the count moved, in order.
        published: Events handed to the sink.
        acknowledged: Events the sink acknowledged.
        max_rss_mib: The child's peak resident set size.
        cpu_s: User + system CPU time the child used while streaming (start-up excluded).
        error: The connector's exception (with traceback), if it failed.
    """

    timeline: list[tuple[float, int]] = field(default_factory=list)
    published: int = 0
    acknowledged: int = 0
    max_rss_mib: float = 0.0
    cpu_s: float = 0.0
    error: str | None = None


class RecordingSink:
    """A pass-through :class:`Sink` that timestamps every change of the acknowledged count."""

    def __init__(self, inner: Sink, live: Any) -> None:
        self._inner = inner
        self._live = live
        self._last = 0
        self.timeline: list[tuple[float, int]] = []

    def publish(self, events: Sequence[ChangeEvent]) -> int:
        """Delegate."""
        return self._inner.publish(events)

    def acknowledged(self) -> int:
        """Delegate, recording the time when the count moved."""
        count = self._inner.acknowledged()
        if count != self._last:
            self._last = count
            self.timeline.append((time.time(), count))
            self._live.value = count
        return count

    def flush(self, timeout: float) -> None:
        """Delegate."""
        self._inner.flush(timeout)

    def close(self) -> None:
        """Delegate."""
        self._inner.close()


def child_main(
    config_data: dict[str, Any],
    control: multiprocessing.connection.Connection,
    ready: Any,
    live: Any,
) -> None:
    """Entry point of the child: run the connector until the parent sends ``"stop"``."""
    _quiet_logging()
    config = parse_capture_config(config_data)
    source = config.sources[0]
    assert isinstance(config.transport, KafkaConfig)
    sink = RecordingSink(KafkaSink(config.transport, source.schemas_enable), live)
    connector = Connector(source, sink, KafkaOffsetStore(config.transport))
    stop = threading.Event()
    result = ConnectorResult()

    def wait_for_stop() -> None:
        control.recv()
        stop.set()

    cpu_at_ready = [0.0]

    def signal_ready() -> None:
        while not connector.ready.wait(0.1) and not stop.is_set():
            pass
        cpu_at_ready[0] = _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))
        ready.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    threading.Thread(target=signal_ready, daemon=True).start()
    settle_after_start()  # as `unified-profile cdc` does
    try:
        connector.run(stop)
    except BaseException:
        result.error = traceback.format_exc()
        stop.set()
    finally:
        sink.close()
    stats = connector.stats.snapshot()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.timeline = sink.timeline
    result.published = stats.events_published
    result.acknowledged = stats.events_acknowledged
    result.max_rss_mib = peak_rss_mib()
    result.cpu_s = _cpu_seconds(usage) - cpu_at_ready[0]
    control.send(result)


class ConnectorProcess:
    """The parent's handle on a connector child.

    Args:
        config_data: A capture config (as parsed TOML) with one source and the Kafka transport.
    """

    def __init__(self, config_data: dict[str, Any]) -> None:
        self._control, child_end = _CONTEXT.Pipe()
        self._ready = _CONTEXT.Event()
        self._live = _CONTEXT.RawValue("q", 0)
        self._process = _CONTEXT.Process(
            target=child_main,
            args=(config_data, child_end, self._ready, self._live),
            name="bench-connector",
            daemon=True,
        )

    @property
    def pid(self) -> int | None:
        """The child's process id once started."""
        return self._process.pid

    @property
    def acknowledged(self) -> int:
        """Events acknowledged so far, as the connector last saw them."""
        return int(self._live.value)

    def start(self, timeout: float = 60.0) -> None:
        """Start the child and wait until the connector is streaming.

        Raises:
            RuntimeError: The connector failed or did not start within ``timeout`` seconds.
        """
        self._process.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if not self._process.is_alive() or time.monotonic() > deadline:
                break
        if not self._ready.is_set() or self._control.poll():
            result = self.stop()
            raise RuntimeError(f"connector did not start streaming:\n{result.error}")

    def stop(self, timeout: float = 60.0) -> ConnectorResult:
        """Stop the connector (it flushes the sink first) and collect its report."""
        result = ConnectorResult(error="the connector process did not report")
        try:
            if not self._control.poll():
                self._control.send("stop")
            if self._control.poll(timeout):
                result = self._control.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        return result


def _quiet_logging() -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime
