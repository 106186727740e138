"""The change feed: one reader of the change log per server process, fanning changes out.

How ordering and delivery hold (the subscription contract: every matching change exactly once, in
sequence order, resumable after any sequence):

* One pump task reads the change log after the last sequence it published (its *head*), converts
  each change once and hands it to every live subscription whose filter matches, in sequence order.
  Sequences become visible in order (each applying transaction holds the change-log head row lock
  until it commits), so reading "after the last row read" never skips a row that commits later.
* The pump is woken by ``NOTIFY`` (:mod:`.listener`) and polls every few seconds as a safety net.
* Each subscription has a bounded buffer. The pump never waits for a subscriber: when a buffer is
  full the subscription leaves the live set, keeping as its position the last sequence the pump
  handled for it; its own consumer drains the buffer and then reads the log after that position
  (*catch-up* mode) until it reaches the pump's head, where it rejoins the live set. Memory per
  subscriber stays bounded and nothing is dropped. A new subscription starts in catch-up mode.
* The pump skips changes at or below a subscription's position (a catch-up reader may have read
  ahead of the pump), so nothing is delivered twice. The catch-up reader checks that the first row
  it reads follows its position; a hole older than the oldest retained row means retention removed
  changes the subscriber never saw, and the subscription ends with :class:`CursorOutOfRange`.

Everything here runs on one event loop; the pump publishes a batch without awaiting, so a
subscription joins or leaves the live set either wholly before or wholly after a batch. Store reads
run in worker threads (the store is synchronous).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import structlog

from ..store.profile_store import LoggedChange, ProfileStore
from .errors import CursorOutOfRange, FeedClosed, FeedUnavailable
from .filters import ChangeFilter, ChangeTraits
from .listener import ListenerConfig, listen_for_changes
from .subscription import FeedEntry, Subscription

T = TypeVar("T")
_R = TypeVar("_R")

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ChangeFeedConfig:
    """How the feed reads, buffers and fans out.

    Attributes:
        buffer_size: Changes buffered per subscription before it falls back to reading the log.
        read_batch: Change-log rows per read (pump and catch-up readers).
        poll_interval_s: The pump reads at least this often even without a notification.
        catch_up_readers: Catch-up reads running at once (they share the store's connection pool
            and worker threads with the unary RPCs).
        listener: How the ``LISTEN`` connection is kept.
    """

    buffer_size: int = 1024
    read_batch: int = 500
    poll_interval_s: float = 2.0
    catch_up_readers: int = 4
    listener: ListenerConfig = field(default_factory=ListenerConfig)


@dataclass(frozen=True, slots=True)
class StartAt:
    """Where a subscription starts: after a sequence, after the head, or at the oldest retained."""

    mode: Literal["earliest", "latest", "after"]
    sequence: int = 0

    @classmethod
    def earliest(cls) -> StartAt:
        """From the oldest change still retained."""
        return cls("earliest")

    @classmethod
    def latest(cls) -> StartAt:
        """Only changes committed after the subscription starts."""
        return cls("latest")

    @classmethod
    def after(cls, sequence: int) -> StartAt:
        """After ``sequence`` (the last one a resuming subscriber received)."""
        return cls("after", sequence)


@dataclass(frozen=True, slots=True)
class FeedStats:
    """A snapshot of the feed, for status pages and tests.

    Attributes:
        head: The last sequence the pump published.
        subscriptions: Open subscriptions.
        live: Of those, the ones the pump delivers to (the rest are reading the log).
        buffered: Changes waiting in subscription buffers.
        fallbacks: How often a full buffer switched a subscription to reading the log.
    """

    head: int
    subscriptions: int
    live: int
    buffered: int
    fallbacks: int


@dataclass(frozen=True, slots=True)
class _Read(Generic[T]):
    entries: list[FeedEntry[T]]  # the rows that passed the filter, converted
    last: int  # the last sequence read (matching or not): the reader's new position


class ChangeFeed(Generic[T]):
    """The server's one reader of the change log, and its subscriptions.

    Args:
        store: The profile store (its change log is read in worker threads).
        dsn: The store's DSN, for the ``LISTEN`` connection.
        convert: Turns a change into what subscribers receive (a protobuf message); called once
            per change on the live path, in a worker thread, so it must not touch the event loop.
        config: Buffering and timing.
        on_read: Called on the event loop with the changes of each log read, before any of them
            is delivered (the read cache drops what they changed, so that a subscriber's next
            read on this server sees at least what it was told of).
    """

    def __init__(
        self,
        store: ProfileStore,
        dsn: str,
        convert: Callable[[LoggedChange], T],
        config: ChangeFeedConfig | None = None,
        on_read: Callable[[list[LoggedChange]], None] | None = None,
    ) -> None:
        self._store = store
        self._dsn = dsn
        self._convert = convert
        self._on_read = on_read
        self.config = config or ChangeFeedConfig()
        self._head = 0
        self._wake = asyncio.Event()
        self._readers = asyncio.Semaphore(self.config.catch_up_readers)
        # Live subscriptions grouped by filter: each change is tested once per distinct filter.
        self._groups: dict[ChangeFilter, set[Subscription[T]]] = {}
        self._subscriptions: set[Subscription[T]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._fallbacks = 0
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def head(self) -> int:
        """The last sequence published to live subscriptions."""
        return self._head

    async def start(self) -> None:
        """Read the head and start the listener and the pump.

        Raises:
            FeedUnavailable: The store cannot be read.
        """
        if self._tasks:
            return
        self._head = await asyncio.to_thread(self._store_call, self._store.head_sequence)
        self._tasks = [
            asyncio.create_task(self._pump(), name="change-feed-pump"),
            asyncio.create_task(
                listen_for_changes(self._dsn, self._wake.set, self.config.listener),
                name="change-feed-listener",
            ),
        ]
        log.info("change feed started", head=self._head)

    async def close(self) -> None:
        """Stop reading and end every subscription with :class:`FeedClosed`."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for subscription in list(self._subscriptions):
            subscription._end(FeedClosed("the server is shutting down"))
        self._groups.clear()

    async def subscribe(
        self, start: StartAt, change_filter: ChangeFilter, heartbeat_s: float = 10.0
    ) -> Subscription[T]:
        """Open a subscription; iterate its ``batches``; close it when done.

        Raises:
            CursorOutOfRange: ``start`` is after a sequence older than retention or past the head.
            FeedUnavailable: The store cannot be read, or the feed is closed.
        """
        if self._closed or not self._tasks:
            raise FeedClosed("the change feed is not running")
        position = await asyncio.to_thread(self._resolve_start, start)
        subscription = Subscription(
            self, next(self._ids), change_filter, position, heartbeat_s, self.config.buffer_size
        )
        self._subscriptions.add(subscription)
        return subscription

    def stats(self) -> FeedStats:
        """Counts describing the feed now."""
        live = sum(len(group) for group in self._groups.values())
        return FeedStats(
            head=self._head,
            subscriptions=len(self._subscriptions),
            live=live,
            buffered=sum(s.buffered for s in self._subscriptions),
            fallbacks=self._fallbacks,
        )

    # --- the pump ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval_s):
                    await self._wake.wait()
            # Cleared before reading: a notification arriving during the read wakes us again.
            self._wake.clear()
            try:
                while True:
                    batch = await asyncio.to_thread(self._read_log, self._head, None, None)
                    self._seen(batch)
                    if not batch.entries:
                        break
                    self._publish(batch.entries)
                    if len(batch.entries) < self.config.read_batch:
                        break
                failures = 0
            except FeedUnavailable as exc:
                failures += 1
                delay = min(0.5 * 2**failures, 30.0)
                log.warning("change feed cannot read the change log", error=str(exc.__cause__),
                            head=self._head, retry_in_s=delay)
                await asyncio.sleep(delay)
            except Exception:
                # A change that cannot be converted is a bug: stall loudly on it (and retry)
                # rather than let the pump die or skip a change subscribers would never see.
                failures += 1
                delay = min(0.5 * 2**failures, 30.0)
                log.exception("change feed cannot publish", head=self._head, retry_in_s=delay)
                await asyncio.sleep(delay)

    def _publish(self, entries: list[FeedEntry[T]]) -> None:
        """Hand a batch to the live subscriptions (no await: the live set is stable meanwhile)."""
        if entries[0].sequence != self._head + 1:
            # Rows the pump never read are gone (retention overtook it, or rows were removed):
            # live subscribers would miss them silently, so each re-reads the log from where it
            # is and finds out whether it is still in range. "Where it is" is the later of our
            # head and its own position: a subscription resolved its start from the store, so
            # it may have joined while the pump lagged, positioned past the hole already (an
            # EARLIEST start after retention). Rewinding it to our head would make it look
            # older than retention and end it with OUT_OF_RANGE for rows it never needed.
            log.warning("change log has a hole after the feed head", head=self._head,
                        next=entries[0].sequence)
            for group in self._groups.values():
                for subscription in list(group):
                    position = max(self._head, subscription.position)
                    if position < entries[0].sequence - 1:
                        self._fall_back(subscription, position)
        for entry in entries:
            overflowed: list[Subscription[T]] = []
            for change_filter, group in self._groups.items():
                if group and change_filter.matches(entry.traits):
                    for subscription in group:
                        if entry.sequence > subscription.position and not subscription._offer(
                            entry
                        ):
                            overflowed.append(subscription)
            # Outside the loop over the group: falling back removes the subscription from it.
            for subscription in overflowed:
                self._fall_back(subscription, entry.sequence - 1)
            self._head = entry.sequence
        for change_filter in [f for f, group in self._groups.items() if not group]:
            del self._groups[change_filter]

    def _fall_back(self, subscription: Subscription[T], position: int) -> None:
        """Take a subscription out of the live set; it reads the log after ``position`` itself."""
        self._groups.get(subscription.filter, set()).discard(subscription)
        subscription._leave_live(position)
        self._fallbacks += 1
        log.info("subscription falls back to reading the log", subscription=subscription.id,
                 after=position, head=self._head)

    # --- serving subscriptions -----------------------------------------------------------------

    def _join(self, subscription: Subscription[T]) -> bool:
        """Make a caught-up subscription live; ``False`` while it is behind the pump's head."""
        if subscription.position < self._head:
            return False
        self._groups.setdefault(subscription.filter, set()).add(subscription)
        subscription._enter_live()
        return True

    def _remove(self, subscription: Subscription[T]) -> None:
        group = self._groups.get(subscription.filter)
        if group is not None:
            group.discard(subscription)
            if not group:
                del self._groups[subscription.filter]
        self._subscriptions.discard(subscription)

    async def _catch_up_read(self, subscription: Subscription[T]) -> _Read[T]:
        """The next rows after the subscription's position that pass its filter, converted."""
        async with self._readers:
            read = await asyncio.to_thread(
                self._read_log, subscription.position, subscription.filter, self._head
            )
        self._seen(read)
        return read

    def _seen(self, read: _Read[T]) -> None:
        if self._on_read is not None and read.entries:
            self._on_read([entry.change for entry in read.entries])

    # --- in worker threads ---------------------------------------------------------------------

    def _read_log(
        self, after: int, change_filter: ChangeFilter | None, known_head: int | None
    ) -> _Read[T]:
        """Rows after ``after`` (converted when they pass the filter; all when it is ``None``).

        ``known_head`` (catch-up readers) is a sequence known to be committed: rows up to it
        must be readable, so finding none, or a hole after ``after``, is checked against
        retention.

        Raises:
            CursorOutOfRange: Catch-up readers only: retention removed rows after ``after``.
            FeedUnavailable: The store failed.
        """
        rows = self._store_call(lambda: self._store.read_changes_after(after, self.config.read_batch))
        if known_head is not None:
            hole = rows[0].sequence > after + 1 if rows else after < known_head
            if hole:
                self._check_retained(after)
                if not rows:
                    # Rows removed in place (not by retention): nothing to deliver up to the head.
                    return _Read([], known_head)
        entries: list[FeedEntry[T]] = []
        for row in rows:
            traits = ChangeTraits.of(row)
            if change_filter is None or change_filter.matches(traits):
                entries.append(FeedEntry(row.sequence, row, traits, self._convert(row)))
        return _Read(entries, rows[-1].sequence if rows else after)

    def _resolve_start(self, start: StartAt) -> int:
        """The position (last sequence considered delivered) a subscription starts at."""
        if start.mode == "latest":
            # The store's head, not the pump's: the pump may not have read the newest commits.
            return self._store_call(self._store.head_sequence)
        if start.mode == "earliest":
            return self._oldest_retained() - 1
        head = self._store_call(self._store.head_sequence)
        if start.sequence > head:
            raise CursorOutOfRange(start.sequence, self._oldest_retained(), head)
        self._check_retained(start.sequence)
        return start.sequence

    def _check_retained(self, after: int) -> None:
        oldest = self._oldest_retained()
        if after < oldest - 1:
            raise CursorOutOfRange(after, oldest, self._store_call(self._store.head_sequence))

    def _oldest_retained(self) -> int:
        """The oldest sequence in the change log; ``head + 1`` when it holds no rows."""
        # The head first: rows committed after it are found by the second read, so an empty log
        # really means "nothing up to this head is retained". Read the other way round, a commit
        # between the two reads would make every start look expired.
        head = self._store_call(self._store.head_sequence)
        first = self._store_call(lambda: self._store.read_changes_after(0, 1))
        return first[0].sequence if first else head + 1

    @staticmethod
    def _store_call(call: Callable[[], _R]) -> _R:
        # The store's reads raise its driver's errors unmapped; a read this simple fails only
        # when the store does, so any error here means "unavailable, retry".
        try:
            return call()
        except Exception as exc:
            raise FeedUnavailable("the change log cannot be read") from exc


__all__ = ["ChangeFeed", "ChangeFeedConfig", "FeedStats", "StartAt"]
