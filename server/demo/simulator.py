"""Runs a :class:`~unified_profile.server.demo.traffic.TrafficModel` against the two databases.

:class:`Simulator` is a thread that commits one activity's transactions at a steady rate. If it
falls behind (a slow commit, a paused machine) it does not burst to catch up: the rate is a
ceiling, as a shop's tills are.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg
import structlog

from .traffic import Activity, Database, TrafficModel

log = structlog.get_logger(__name__)

_RECONNECT_PAUSE_S = 1.0


class Simulator:
    """Commits the model's activities at ``rate`` per second until stopped.

    Args:
        model: Where the activities come from.
        dsns: The libpq DSN of each database the activities write to.
        rate: Activities per second (more than 0).
    """

    def __init__(self, model: TrafficModel, dsns: dict[Database, str], rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be more than 0")
        self._model = model
        self._dsns = dsns
        self._rate = rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="demo-simulator", daemon=True)

    @property
    def rate(self) -> float:
        return self._rate

    def start(self) -> None:
        """Start committing in a background thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the activity in hand (its transactions commit or roll back)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def counts(self) -> dict[str, int]:
        """Activities committed so far, by kind."""
        with self._lock:
            return dict(self._counts)

    @property
    def failures(self) -> int:
        """Activities that failed (their transactions rolled back) and were skipped."""
        with self._lock:
            return self._failures

    def _run(self) -> None:
        connections: dict[Database, psycopg.Connection[Any]] = {}
        interval = 1.0 / self._rate
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                next_at = max(next_at + interval, time.monotonic() - interval)
                activity = next(self._model)
                try:
                    self._commit(activity, connections)
                except psycopg.Error as exc:
                    with self._lock:
                        self._failures += 1
                    log.warning("demo.activity_failed", kind=activity.kind, error=str(exc))
                    for connection in connections.values():
                        connection.close()
                    connections.clear()
                    self._stop.wait(_RECONNECT_PAUSE_S)
                    next_at = time.monotonic()
                    continue
                with self._lock:
                    self._counts[activity.kind] += 1
        finally:
            for connection in connections.values():
                connection.close()

    def _commit(
        self, activity: Activity, connections: dict[Database, psycopg.Connection[Any]]
    ) -> None:
        for transaction in activity.transactions:
            connection = connections.get(transaction.database)
            if connection is None or connection.closed:
                connection = connections[transaction.database] = psycopg.connect(
                    self._dsns[transaction.database], connect_timeout=5
                )
            with connection.transaction():
                for statement, params in transaction.statements:
                    connection.execute(statement, params)


__all__ = ["Simulator"]
