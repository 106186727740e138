"""Coalescing concurrent single-key reads into one statement per free connection.

Under load every connection of the read pool is busy, and each GetProfile would wait its turn
for a round trip of its own. Instead, the reads that arrive while all connections are busy queue
up, and the next free connection runs *all* of them (up to :data:`MAX_BATCH`) as one statement
(``… WHERE id = ANY(…)``): the round trip, the statement's fixed cost in PostgreSQL and the
driver's per-statement work are shared by the batch. A read that finds a connection free is
sent at once, alone, so an idle server answers with one single-key statement, without waiting to
gather a batch.

Deadlines: each reader waits for its result until its own deadline. A batch's statement runs
until the latest deadline of its readers (none if one has none) and is cancelled then, so it
never outlives every call it serves; the connections' ``statement_timeout`` bounds the rest.
Everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")

MAX_BATCH = 100
"""The most reads one statement serves."""


@dataclass(eq=False, slots=True)
class _Reader(Generic[_K, _V]):
    key: _K
    deadline: float | None
    future: asyncio.Future[_V]


class Slots:
    """The connections the coalescers share: how many are free, and who waits for one.

    Args:
        size: The number of connections (statements that may run at once).
    """

    def __init__(self, size: int) -> None:
        self.free = size
        self._coalescers: list[Coalescer[object, object]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._next = 0

    def register(self, coalescer: Coalescer[_K, _V]) -> None:
        """Let ``coalescer`` queue reads for the free connections."""
        self._coalescers.append(coalescer)  # type: ignore[arg-type]

    def claim(self) -> bool:
        """Take a free connection for a statement run outside the coalescers (``False``: none)."""
        if self.free <= 0:
            return False
        self.free -= 1
        return True

    def release(self) -> None:
        """Give back a connection taken with :meth:`claim`, starting queued reads on it."""
        self.free += 1
        self.dispatch()

    def dispatch(self) -> None:
        """Start a batch on each free connection while reads are queued (round robin by kind)."""
        idle_rounds = 0
        while self.free > 0 and self._coalescers and idle_rounds < len(self._coalescers):
            coalescer = self._coalescers[self._next % len(self._coalescers)]
            self._next += 1
            batch = coalescer.take()
            if not batch:
                idle_rounds += 1
                continue
            idle_rounds = 0
            self.free -= 1
            task = asyncio.get_running_loop().create_task(self._run(coalescer, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, coalescer: Coalescer[object, object], batch: list[_Reader[object, object]]
    ) -> None:
        try:
            await coalescer.run_batch(batch)
        finally:
            self.free += 1
            self.dispatch()

    async def close(self) -> None:
        """Cancel the batches in flight; their readers fail instead of waiting."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for coalescer in self._coalescers:
            coalescer.fail_queued()


class Coalescer(Generic[_K, _V]):
    """Single-key reads of one kind (GetProfile by id, LookupProfile by identifier).

    Args:
        slots: The shared connections.
        one: Reads one key (the statement for a read that found a connection free).
        many: Reads several keys in one statement; keys it does not return get ``absent``.
        absent: The result for a key ``many`` did not return.
        error: Wraps a failure of a batch that was cancelled (the pool closing).
    """

    def __init__(
        self,
        slots: Slots,
        one: Callable[[_K], Awaitable[_V]],
        many: Callable[[list[_K]], Awaitable[Mapping[_K, _V]]],
        absent: _V,
        error: Callable[[], Exception],
    ) -> None:
        self._slots = slots
        self._one = one
        self._many = many
        self._absent = absent
        self._error = error
        self._queue: list[_Reader[_K, _V]] = []
        slots.register(self)

    async def read(self, key: _K, timeout_s: float | None) -> _V:
        """The value for ``key``: sent at once when a connection is free, else in the next batch.

        Raises:
            TimeoutError: ``timeout_s`` passed first.
        """
        # The statement always runs in a task of its own, never in the caller's: a call is
        # cancelled more than once at its deadline (the handler's timeout, gRPC's own), and a
        # second cancellation arriving while psycopg cancels the statement in PostgreSQL would
        # make it drop the connection with the statement still running. The batch task is
        # cancelled once, by its own deadline.
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        reader: _Reader[_K, _V] = _Reader(key, deadline, loop.create_future())
        self._queue.append(reader)
        self._slots.dispatch()
        async with asyncio.timeout_at(deadline):
            # Cancelling this wait cancels the future: its batch then skips it.
            return await reader.future

    def take(self) -> list[_Reader[_K, _V]]:
        """The next batch of queued readers still waiting (empty: nothing queued)."""
        batch = [r for r in self._queue[:MAX_BATCH] if not r.future.done()]
        del self._queue[:MAX_BATCH]
        return batch

    async def run_batch(self, batch: list[_Reader[_K, _V]]) -> None:
        """Read the batch's keys in one statement and hand each reader its result."""
        keys = list(dict.fromkeys(r.key for r in batch))
        deadlines = [r.deadline for r in batch]
        latest = None if None in deadlines else max(d for d in deadlines if d is not None)
        try:
            async with asyncio.timeout_at(latest):
                found: Mapping[_K, _V]
                if len(keys) == 1:
                    found = {keys[0]: await self._one(keys[0])}
                else:
                    found = await self._many(keys)
        except asyncio.CancelledError:
            _fail(batch, self._error())
            raise
        except Exception as exc:
            _fail(batch, exc)
            return
        for reader in batch:
            if not reader.future.done():
                reader.future.set_result(found.get(reader.key, self._absent))

    def fail_queued(self) -> None:
        """Fail every queued reader (the pool is closing)."""
        _fail(self._queue, self._error())
        self._queue.clear()


def _fail(readers: list[_Reader[_K, _V]], exc: Exception) -> None:
    for reader in readers:
        if not reader.future.done():
            reader.future.set_exception(exc)


__all__ = ["MAX_BATCH", "Coalescer", "Slots"]
