"""Counters a connector keeps about itself, for logs, status and benchmarks."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class CaptureSnapshot:
    """A consistent copy of a connector's counters.

    Attributes:
        events_published: Change events handed to the sink since start.
        events_acknowledged: Change events the sink has made durable.
        events_per_second: Published over the last ~10 s.
        snapshot_rows: Rows read by the snapshot.
        received_lsn: The newest WAL position received from the server.
        confirmed_lsn: The newest position reported flushed to the server.
        server_wal_end: The server's WAL end from its last keepalive.
        slot_lag_bytes: ``server_wal_end - confirmed_lsn``: WAL the slot still pins.
        slot_lag_ms: Commit → acknowledged delay of the last acknowledged transaction.
        events_by_topic: Change events handed to the sink since start, per topic.
    """

    events_published: int
    events_acknowledged: int
    events_per_second: float
    snapshot_rows: int
    received_lsn: int
    confirmed_lsn: int
    server_wal_end: int
    slot_lag_bytes: int
    slot_lag_ms: float
    events_by_topic: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CaptureStats:
    """Mutable counters owned by the connector thread; others read :meth:`snapshot`."""

    events_published: int = 0
    events_acknowledged: int = 0
    snapshot_rows: int = 0
    received_lsn: int = 0
    confirmed_lsn: int = 0
    server_wal_end: int = 0
    slot_lag_ms: float = 0.0
    events_by_topic: dict[str, int] = field(default_factory=dict)
    _rate_window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=20))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_topics(self, topics: list[str]) -> None:
        """Count published events per topic."""
        with self._lock:
            for topic in topics:
                self.events_by_topic[topic] = self.events_by_topic.get(topic, 0) + 1

    def sample_rate(self, now: float) -> None:
        """Record (time, published) so :meth:`snapshot` can report a recent rate."""
        with self._lock:
            self._rate_window.append((now, self.events_published))

    def snapshot(self) -> CaptureSnapshot:
        """A copy of the counters, safe to read from any thread."""
        with self._lock:
            rate = 0.0
            if len(self._rate_window) >= 2:
                (t0, n0), (t1, n1) = self._rate_window[0], self._rate_window[-1]
                rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            return CaptureSnapshot(
                events_published=self.events_published,
                events_acknowledged=self.events_acknowledged,
                events_per_second=rate,
                snapshot_rows=self.snapshot_rows,
                received_lsn=self.received_lsn,
                confirmed_lsn=self.confirmed_lsn,
                server_wal_end=self.server_wal_end,
                slot_lag_bytes=max(0, self.server_wal_end - self.confirmed_lsn),
                slot_lag_ms=self.slot_lag_ms,
                events_by_topic=dict(self.events_by_topic),
            )
