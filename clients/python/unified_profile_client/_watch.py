"""A change subscription that survives disconnects: :class:`ChangeStream`.

Every change carries its change-log sequence, and the server resumes a subscription after any
sequence it still retains. So the stream remembers the last sequence it *yielded* (not the last
it received: a change received but not yet handed to the caller must come again) and reconnects
with ``START_AFTER_SEQUENCE`` of it, which gives each later change exactly once.

The stream asks for up to :data:`._types.CHANGES_PER_MESSAGE` changes per message (the server
sends only changes already waiting, so this adds no delay) and yields them one by one; a server
that sends one change per message is followed just the same.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from types import TracebackType

from unified_profile.v1 import profile_pb2, profile_service_pb2

from ._config import RetryConfig
from ._exceptions import ProfileServiceError, StatusCode
from ._transport import ChangeCall
from ._types import WatchStart

# Failures after which the same subscription, resumed, can go on: the server or the network went
# away (UNAVAILABLE), a stream broke mid-message (INTERNAL). Anything else (OUT_OF_RANGE,
# PERMISSION_DENIED, INVALID_ARGUMENT, ...) would fail again the same way.
RECONNECT_CODES = frozenset({StatusCode.UNAVAILABLE, StatusCode.INTERNAL})


class ChangeStream(Iterator[profile_pb2.ProfileChange]):
    """The changes of a subscription, in sequence order, across reconnects.

    Returned by :meth:`ProfileClient.watch`; iterate it (it is its own iterator), and close it
    (or use it as a context manager) to end the subscription. Heartbeats are not yielded: they
    update :attr:`head_sequence`.

    Attributes:
        last_sequence: The sequence of the last change yielded; ``None`` before the first. A
            later watch started after it continues exactly where this one stopped.
        head_sequence: The change log's newest sequence as of the last heartbeat (or the last
            change yielded); ``None`` before either arrives.
        reconnects: How often the stream has reconnected.
    """

    def __init__(
        self,
        open_call: Callable[[profile_service_pb2.SubscribeProfileChangesRequest], ChangeCall],
        request: profile_service_pb2.SubscribeProfileChangesRequest,
        start: WatchStart,
        retry: RetryConfig,
    ) -> None:
        self.last_sequence: int | None = start if isinstance(start, int) else None
        self.head_sequence: int | None = None
        self.reconnects = 0
        self._open_call = open_call
        self._request = request
        self._start = start
        self._retry = retry
        self._lock = threading.Lock()
        # Set by close(): also cuts short a backoff pause, so closing never waits for one.
        self._closing = threading.Event()
        self._call: ChangeCall | None = None
        self._closed = False
        self._changes = self._run()

    def __iter__(self) -> ChangeStream:
        return self

    def __next__(self) -> profile_pb2.ProfileChange:
        return next(self._changes)

    def close(self) -> None:
        """End the subscription; safe from another thread while one is waiting in ``next``."""
        with self._lock:
            self._closed = True
            call = self._call
        self._closing.set()
        if call is not None:
            call.cancel()
        # From another thread the generator is running and cannot be closed here; the cancelled
        # call ends it, and ``_run`` sees ``_closed`` and returns.
        with contextlib.suppress(ValueError):
            self._changes.close()

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _resume_request(self) -> profile_service_pb2.SubscribeProfileChangesRequest:
        request = profile_service_pb2.SubscribeProfileChangesRequest()
        request.CopyFrom(self._request)
        if self.last_sequence is not None:
            request.start = request.Start.START_AFTER_SEQUENCE
            request.after_sequence = self.last_sequence
        elif self._start == "latest" and self.head_sequence is not None:
            # Nothing yielded yet, but a heartbeat said the subscription had reached this head:
            # resuming after it (not at a new "latest") keeps the changes made while we were away.
            request.start = request.Start.START_AFTER_SEQUENCE
            request.after_sequence = self.head_sequence
        # Else the original start: nothing was yielded, so "earliest" repeats nothing.
        return request

    def _is_closed(self) -> bool:
        # A method, not the attribute, so the check after a blocking read is not "narrowed"
        # away by the one before it: another thread may have closed us meanwhile.
        with self._lock:
            return self._closed

    def _run(self) -> Generator[profile_pb2.ProfileChange, None, None]:
        failures = 0
        backoffs = self._retry.backoffs()
        while True:
            with self._lock:
                if self._closed:
                    return
                call = self._call = self._open_call(self._resume_request())
            # None when the server ends the stream without an error.
            error: ProfileServiceError | None = None
            try:
                for response in call:
                    failures = 0
                    backoffs = self._retry.backoffs()
                    if response.HasField("heartbeat"):
                        self.head_sequence = max(
                            response.heartbeat.head_sequence, self.head_sequence or 0
                        )
                        continue
                    if response.HasField("changes"):
                        changes: Iterable[profile_pb2.ProfileChange] = response.changes.changes
                    else:
                        changes = (response.change,)
                    for change in changes:
                        if self.last_sequence is not None and change.sequence <= self.last_sequence:
                            # Never expected (the server skips what we have), but a duplicate
                            # must not reach the caller even then.
                            continue
                        self.last_sequence = change.sequence
                        self.head_sequence = max(change.sequence, self.head_sequence or 0)
                        yield change
            except ProfileServiceError as exc:
                if exc.code not in RECONNECT_CODES:
                    raise
                error = exc
            finally:
                call.cancel()
            if self._is_closed():
                return
            failures += 1
            limit = self._retry.max_reconnects
            if limit is not None and failures > limit:
                if error is not None:
                    raise error
                raise ProfileServiceError(
                    StatusCode.UNAVAILABLE,
                    f"the server ended the subscription {failures} times in a row",
                )
            self.reconnects += 1
            self._closing.wait(next(backoffs))


__all__ = ["RECONNECT_CODES", "ChangeStream"]
