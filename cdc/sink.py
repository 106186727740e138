"""Where change events go, and how the connector learns they are safe.

The connector confirms an LSN to PostgreSQL only after the sink has durably accepted every event
before it. Sinks therefore count: :meth:`Sink.publish` numbers events in order and
:meth:`Sink.acknowledged` says how many of them, from the first, are durable (Kafka acked them with
``acks=all``; the embedded engine committed them to its store).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from .envelope import ChangeEvent
from .errors import SinkError


class Sink(Protocol):
    """The port every transport implements."""

    def publish(self, events: Sequence[ChangeEvent]) -> int:
        """Hand events over in order; returns how many events have been published in all.

        May block to apply back-pressure. Raises :class:`SinkError` if the sink has failed.
        """
        ...

    def acknowledged(self) -> int:
        """How many published events, counted from the first, are durably accepted."""
        ...

    def flush(self, timeout: float) -> None:
        """Wait until every published event is acknowledged (raises SinkError on timeout)."""
        ...

    def close(self) -> None:
        """Release resources; unacknowledged events may be lost (and will be re-sent)."""
        ...


class InMemorySink:
    """The embedded transport: events wait in a bounded queue for a consumer in the same process.

    The consumer calls :meth:`take`, makes the events durable (the engine commits them together with
    the source position), then calls :meth:`acknowledge` with the sequence number ``take`` returned.
    """

    def __init__(
        self, capacity: int = 50_000, changed: threading.Condition | None = None
    ) -> None:
        self._capacity = capacity
        self._queue: deque[ChangeEvent] = deque()
        self._published = 0
        self._taken = 0
        self._acknowledged = 0
        self._closed = False
        # Shared by the sinks of a SinkGroup, so that one consumer can wait for any of them.
        self._changed = changed or threading.Condition()

    def publish(self, events: Sequence[ChangeEvent]) -> int:
        """Queue events; blocks while the queue is full (the consumer is behind)."""
        with self._changed:
            for event in events:
                while len(self._queue) >= self._capacity and not self._closed:
                    self._changed.wait(0.5)
                if self._closed:
                    raise SinkError("the in-memory sink is closed")
                self._queue.append(event)
                self._published += 1
            self._changed.notify_all()
            return self._published

    def take(self, max_events: int, timeout: float) -> tuple[list[ChangeEvent], int]:
        """Up to ``max_events`` queued events and the sequence number of the last one.

        Waits up to ``timeout`` seconds for the first event; returns an empty list if none came.
        """
        with self._changed:
            if not self._queue:
                self._changed.wait_for(lambda: bool(self._queue) or self._closed, timeout)
            count = min(max_events, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            self._taken += count
            self._changed.notify_all()
            return batch, self._taken

    def acknowledge(self, sequence: int) -> None:
        """Everything up to ``sequence`` (as returned by :meth:`take`) is durable."""
        with self._changed:
            if sequence > self._taken:
                raise SinkError(f"acknowledged {sequence} events but only {self._taken} were taken")
            self._acknowledged = max(self._acknowledged, sequence)
            self._changed.notify_all()

    def acknowledged(self) -> int:
        """How many events the consumer has made durable."""
        return self._acknowledged

    def has_events(self) -> bool:
        """Events are waiting to be taken, or the sink is closed (a take would not wait)."""
        return bool(self._queue) or self._closed

    def flush(self, timeout: float) -> None:
        """Wait until the consumer has acknowledged everything published."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: self._acknowledged >= self._published or self._closed, timeout
            )
            if self._closed and self._acknowledged < self._published:
                raise SinkError(
                    f"in-memory sink closed with {self._published - self._acknowledged} events "
                    "unacknowledged"
                )
            if not done:
                raise SinkError(
                    f"in-memory sink: {self._published - self._acknowledged} events still "
                    f"unacknowledged after {timeout:.0f}s"
                )

    def close(self) -> None:
        """Wake everyone up; later publishes fail."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class SinkGroup:
    """In-memory sinks that one consumer takes from, one per source.

    The sinks share one condition, so the consumer can wait for an event from any of them
    (:meth:`wait`) instead of polling each in turn.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.sinks: dict[str, InMemorySink] = {}

    def add(self, name: str, capacity: int = 50_000) -> InMemorySink:
        """A new sink for source ``name``."""
        if name in self.sinks:
            raise ValueError(f"the sink group already has a sink named {name!r}")
        sink = self.sinks[name] = InMemorySink(capacity, self._changed)
        return sink

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a sink has events (or is closed); ``True`` if so."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(s.has_events() for s in self.sinks.values()), timeout
            )
