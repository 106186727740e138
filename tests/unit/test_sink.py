"""Unit tests for cdc/sink.py: the in-memory sink of the embedded transport."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from unified_profile.cdc.envelope import ChangeEvent
from unified_profile.cdc.errors import SinkError
from unified_profile.cdc.sink import InMemorySink, SinkGroup

JOIN_S = 5.0  # generous upper bound: a thread that should finish does so in milliseconds
BLOCKED_S = 0.3  # how long a thread that should stay blocked is watched


def events(*ids: int) -> list[ChangeEvent]:
    return [ChangeEvent(topic="crm.public.customers", key={"id": i}, value=None) for i in ids]


class Worker(threading.Thread):
    """Runs ``call`` in a daemon thread and keeps its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:
            self.error = exc


def start(call: Callable[[], Any]) -> Worker:
    worker = Worker(call)
    worker.start()
    return worker


def test_publish_counts_events_in_order() -> None:
    sink = InMemorySink()
    assert sink.publish(events(1, 2)) == 2
    assert sink.publish([]) == 2
    assert sink.publish(events(3)) == 3
    assert sink.acknowledged() == 0


def test_take_returns_events_in_order_with_their_sequence() -> None:
    sink = InMemorySink()
    published = events(1, 2, 3)
    sink.publish(published)

    batch, sequence = sink.take(2, timeout=0)
    assert batch == published[:2]
    assert sequence == 2
    batch, sequence = sink.take(10, timeout=0)
    assert batch == published[2:]
    assert sequence == 3


def test_take_on_an_empty_sink_times_out_empty() -> None:
    sink = InMemorySink()
    sink.publish(events(1))
    sink.take(1, timeout=0)
    started = time.monotonic()
    batch, sequence = sink.take(5, timeout=0.05)
    assert batch == []
    assert sequence == 1
    assert time.monotonic() - started >= 0.04


def test_take_waits_for_a_publish() -> None:
    sink = InMemorySink()
    taker = start(lambda: sink.take(5, timeout=JOIN_S))
    time.sleep(0.05)
    sink.publish(events(1))
    taker.join(JOIN_S)
    assert not taker.is_alive()
    assert taker.result == (events(1), 1)


def test_acknowledge_moves_acknowledged_forward_only() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2, 3))
    _, sequence = sink.take(3, timeout=0)
    sink.acknowledge(2)
    assert sink.acknowledged() == 2
    sink.acknowledge(sequence)
    assert sink.acknowledged() == 3
    sink.acknowledge(1)  # a late, smaller acknowledgement changes nothing
    assert sink.acknowledged() == 3


def test_acknowledging_more_than_taken_is_an_error() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2, 3))
    sink.take(1, timeout=0)
    with pytest.raises(SinkError, match="acknowledged 2 events but only 1 were taken"):
        sink.acknowledge(2)
    assert sink.acknowledged() == 0


def test_flush_returns_once_everything_is_acknowledged() -> None:
    sink = InMemorySink()
    sink.flush(0)  # nothing published: nothing to wait for
    sink.publish(events(1, 2))
    _, sequence = sink.take(2, timeout=0)
    sink.acknowledge(sequence)
    sink.flush(0)


def test_flush_times_out_with_the_unacknowledged_count() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2, 3))
    sink.take(3, timeout=0)
    sink.acknowledge(1)
    with pytest.raises(SinkError, match="2 events still unacknowledged"):
        sink.flush(0.05)


def test_flush_wakes_up_on_acknowledge() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2))
    flusher = start(lambda: sink.flush(JOIN_S))
    _, sequence = sink.take(2, timeout=0)
    time.sleep(0.05)
    assert flusher.is_alive()
    sink.acknowledge(sequence)
    flusher.join(JOIN_S)
    assert not flusher.is_alive()
    assert flusher.error is None


def test_publish_blocks_while_full_until_the_consumer_takes() -> None:
    sink = InMemorySink(capacity=2)
    assert sink.publish(events(1, 2)) == 2
    publisher = start(lambda: sink.publish(events(3, 4)))

    publisher.join(BLOCKED_S)
    assert publisher.is_alive(), "publish should wait while the queue is full"

    batch, _ = sink.take(1, timeout=0)
    assert batch == events(1)
    time.sleep(0.05)
    assert publisher.is_alive(), "one free slot is not enough for two events"

    batch, _ = sink.take(1, timeout=0)
    assert batch == events(2)
    publisher.join(JOIN_S)
    assert not publisher.is_alive()
    assert publisher.error is None
    assert publisher.result == 4
    batch, sequence = sink.take(10, timeout=0)
    assert batch == events(3, 4)
    assert sequence == 4


def test_close_wakes_a_blocked_publisher_with_an_error() -> None:
    sink = InMemorySink(capacity=1)
    sink.publish(events(1))
    publisher = start(lambda: sink.publish(events(2)))
    publisher.join(0.05)
    assert publisher.is_alive()

    sink.close()
    publisher.join(JOIN_S)
    assert not publisher.is_alive()
    assert isinstance(publisher.error, SinkError)
    assert "closed" in str(publisher.error)


def test_close_wakes_a_waiting_consumer() -> None:
    sink = InMemorySink()
    taker = start(lambda: sink.take(5, timeout=60))
    time.sleep(0.05)
    sink.close()
    taker.join(JOIN_S)  # far shorter than its 60 s timeout: only the close can have woken it
    assert not taker.is_alive()
    assert taker.result == ([], 0)


def test_publish_after_close_fails() -> None:
    sink = InMemorySink()
    sink.close()
    with pytest.raises(SinkError, match="the in-memory sink is closed"):
        sink.publish(events(1))


def test_events_queued_before_close_can_still_be_taken() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2))
    sink.close()
    assert sink.take(10, timeout=0) == (events(1, 2), 2)


def test_close_wakes_a_waiting_flush_with_an_error() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2))
    flusher = start(lambda: sink.flush(60))
    time.sleep(0.05)
    sink.close()
    flusher.join(JOIN_S)  # far shorter than its 60 s timeout: only the close can have woken it
    assert not flusher.is_alive()
    assert isinstance(flusher.error, SinkError)
    assert str(flusher.error) == "in-memory sink closed with 2 events unacknowledged"


def test_flush_after_close_fails_fast_only_when_events_are_unacknowledged() -> None:
    sink = InMemorySink()
    sink.publish(events(1, 2))
    _, sequence = sink.take(2, timeout=0)
    sink.acknowledge(1)
    sink.close()
    # Waiting out the 60 s would end with "still unacknowledged after 60s", not this error.
    with pytest.raises(SinkError, match="closed with 1 events unacknowledged"):
        sink.flush(60)
    sink.acknowledge(sequence)
    sink.flush(60)  # everything acknowledged: nothing to report


def test_a_sink_group_wakes_its_consumer_for_an_event_in_any_sink() -> None:
    group = SinkGroup()
    group.add("crm")
    loyalty = group.add("loyalty")
    waiter = start(lambda: group.wait(60))
    time.sleep(0.05)
    assert waiter.is_alive()
    loyalty.publish(events(1))
    waiter.join(JOIN_S)  # far shorter than its 60 s timeout: only the publish can have woken it
    assert not waiter.is_alive()
    assert waiter.result is True


def test_a_sink_group_wait_times_out_when_every_sink_is_empty() -> None:
    group = SinkGroup()
    group.add("crm")
    assert group.wait(0.05) is False


def test_a_sink_group_refuses_two_sinks_of_one_name() -> None:
    group = SinkGroup()
    group.add("crm")
    with pytest.raises(ValueError, match="already has a sink named 'crm'"):
        group.add("crm")
