"""``SubscribeProfileChanges``: request checks, a change-feed subscription, the response stream.

The servicer delegates the RPC to :meth:`ProfileSubscriptions.subscribe`. The stream replays the
change log from the requested start and then goes live; every change carries its sequence, so a
client that reconnects with ``START_AFTER_SEQUENCE`` and the last sequence it received sees each
later change exactly once. Ordering, buffering and the slow-subscriber fallback live in the change
feed (:mod:`unified_profile.server.feed`); this module only translates between it and the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import grpc
import structlog
from google.protobuf import timestamp_pb2

from unified_profile.v1 import profile_pb2, profile_service_pb2

from ..feed import (
    ChangeFeed,
    ChangeFilter,
    CursorOutOfRange,
    FeedClosed,
    FeedEntry,
    FeedUnavailable,
    Heartbeat,
    InvalidFilter,
    StartAt,
)
from ..store.profile_reads import ProfileReads, ResolvedProfile
from ..store.profile_store import ProfileStore
from .change_convert import EncodedChange, with_profile
from .change_encoding import MAX_MESSAGE_BYTES, batch_messages, single_message
from .errors import InvalidArgument, is_expected, status_of

Request: TypeAlias = profile_service_pb2.SubscribeProfileChangesRequest
Response: TypeAlias = profile_service_pb2.SubscribeProfileChangesResponse
if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Request, Response]

log = structlog.get_logger(__name__)

DEFAULT_HEARTBEAT_S = 10
"""Heartbeat interval when the request leaves ``heartbeat_seconds`` at 0."""

MAX_CHANGES_PER_MESSAGE = 1_000
"""The most changes a request may ask for in one message."""

_HEADER_ROOM = 16

_Start = profile_service_pb2.SubscribeProfileChangesRequest.Start
# ChangeKind number → the change log's kind (CHANGE_KIND_UPDATED → UPDATED).
_KIND_NAMES = {
    number: name.removeprefix("CHANGE_KIND_") for name, number in profile_pb2.ChangeKind.items()
}
_RESYNC = (
    "To resync: subscribe with START_LATEST, then re-read the profiles you keep with "
    "BatchGetProfiles (in that order, so no change falls between); or subscribe with "
    "START_EARLIEST to receive every change still retained."
)


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """A checked ``SubscribeProfileChangesRequest``."""

    start: StartAt
    filter: ChangeFilter
    heartbeat_s: float
    include_profile: bool
    max_per_message: int


def parse_request(request: Request) -> SubscriptionRequest:
    """Check a request and translate it for the change feed.

    Raises:
        InvalidArgument: A field is invalid; names it (``filter.field_paths[1]``).
    """
    if request.start == _Start.START_AFTER_SEQUENCE:
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence", "must not be negative")
        start = StartAt.after(request.after_sequence)
    elif request.start in (_Start.START_EARLIEST, _Start.START_LATEST):
        if request.after_sequence != 0:
            raise InvalidArgument("after_sequence", "is only used with START_AFTER_SEQUENCE")
        earliest = request.start == _Start.START_EARLIEST
        start = StartAt.earliest() if earliest else StartAt.latest()
    else:
        raise InvalidArgument(
            "start", "must be START_EARLIEST, START_LATEST or START_AFTER_SEQUENCE"
        )
    if not 0 <= request.max_changes_per_message <= MAX_CHANGES_PER_MESSAGE:
        raise InvalidArgument(
            "max_changes_per_message",
            f"must be 0 (one change per message) to {MAX_CHANGES_PER_MESSAGE:,}",
        )
    if request.heartbeat_seconds < 0:
        raise InvalidArgument("heartbeat_seconds", "at least 1 (or 0 for the default, 10)")
    kinds: list[str] = []
    for i, kind in enumerate(request.filter.kinds):
        if kind == profile_pb2.CHANGE_KIND_UNSPECIFIED or kind not in _KIND_NAMES:
            raise InvalidArgument(f"filter.kinds[{i}]", f"unknown change kind {kind}")
        kinds.append(_KIND_NAMES[kind])
    try:
        change_filter = ChangeFilter.parse(
            kinds, request.filter.field_paths, request.filter.sources
        )
    except InvalidFilter as exc:
        raise InvalidArgument(f"filter.{exc.field}", exc.problem) from None
    return SubscriptionRequest(
        start=start,
        filter=change_filter,
        heartbeat_s=float(request.heartbeat_seconds or DEFAULT_HEARTBEAT_S),
        include_profile=request.include_profile,
        max_per_message=request.max_changes_per_message,
    )


class ProfileSubscriptions:
    """The ``SubscribeProfileChanges`` implementation the servicer delegates to.

    Wiring, one feed per server process::

        feed = ChangeFeed(store, dsn, subscribe_response)
        await feed.start()
        subscriptions = ProfileSubscriptions(feed, store)   # ProfileService(subscriptions=...)
        ...
        await feed.close()   # before stopping the server: streams never end by themselves, so
                             # this ends them (UNAVAILABLE, "resume after your last sequence")

    Args:
        feed: The server's change feed, converting with ``change_convert.subscribe_response``.
        store: Where ``include_profile`` reads the current profile.
        max_message_bytes: The server's largest message (``[grpc] max_message_bytes``): batched
            messages stay under it (and under 1 MiB).
    """

    def __init__(
        self,
        feed: ChangeFeed[EncodedChange],
        store: ProfileStore,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._feed = feed
        self._reads = ProfileReads.of(store)
        # Room for the message's own tag and length.
        self._batch_bytes = min(MAX_MESSAGE_BYTES, max_message_bytes) - _HEADER_ROOM

    async def subscribe(
        self, request: Request, context: Context
    ) -> AsyncIterator[Response | bytes]:
        """Stream changes (and heartbeats while idle) until the client cancels.

        Changes go as messages encoded from the feed's shared encodings (``bytes``, which the
        method's serializer passes through: :mod:`.change_encoding`); heartbeats as messages.

        Ends the call with INVALID_ARGUMENT (a field is invalid), OUT_OF_RANGE (the start is
        older than retention or past the head; the message says how to resync) or UNAVAILABLE
        (the change log cannot be read, or the server is stopping: resume after the last
        sequence received).
        """
        try:
            plan = parse_request(request)
            subscription = await self._feed.subscribe(plan.start, plan.filter, plan.heartbeat_s)
        except Exception as exc:
            await _abort(context, exc)
            return
        log.info("subscription started", subscription=subscription.id,
                 after=subscription.position, filter=str(plan.filter),
                 include_profile=plan.include_profile)
        error: Exception | None = None
        last_sent = subscription.position
        try:
            async for item in subscription.batches(plan.max_per_message or 1):
                if isinstance(item, Heartbeat):
                    yield _heartbeat(item.head_sequence)
                    continue
                if plan.include_profile:
                    changes = await self._with_profiles(item)
                else:
                    # Encoded once by the feed, shared with every subscriber.
                    changes = [entry.payload.encoded for entry in item]
                if plan.max_per_message:
                    for message in batch_messages(changes, self._batch_bytes):
                        yield message
                else:
                    yield single_message(changes[0])
                last_sent = item[-1].sequence
        except Exception as exc:
            error = exc
        finally:
            # Also on cancellation and when the client goes away (GeneratorExit at a yield).
            subscription.close()
            log.info("subscription ended", subscription=subscription.id, last_sent=last_sent,
                     fallbacks=subscription.fallbacks)
        if error is not None:
            await _abort(context, error)

    async def _with_profiles(self, entries: Sequence[FeedEntry[EncodedChange]]) -> list[bytes]:
        """The changes with their profiles as they are now (read at delivery, as the API says).

        The profiles of a whole message are read together: one store read, not one per change.
        """
        wanted = {e.change.profile_id for e in entries if e.change.kind != "DELETED"}
        found: dict[str, ResolvedProfile] = {}
        if wanted:
            try:
                found = await asyncio.to_thread(self._reads.get_profiles, wanted)
            except Exception as exc:
                raise FeedUnavailable("the profile store cannot be read") from exc
        profiles = {profile_id: resolved.profile for profile_id, resolved in found.items()}
        return [
            with_profile(
                entry.payload,
                None if entry.change.kind == "DELETED" else profiles.get(entry.change.profile_id),
            )
            for entry in entries
        ]


def _heartbeat(head_sequence: int) -> Response:
    at = timestamp_pb2.Timestamp()
    at.GetCurrentTime()
    return profile_service_pb2.SubscribeProfileChangesResponse(
        heartbeat=profile_service_pb2.Heartbeat(head_sequence=head_sequence, at=at)
    )


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The feed's errors, then the service's table (``errors.status_of``)."""
    if isinstance(exc, CursorOutOfRange):
        return grpc.StatusCode.OUT_OF_RANGE, f"{exc}. {_RESYNC}"
    if isinstance(exc, FeedClosed):
        return grpc.StatusCode.UNAVAILABLE, (
            "the server is stopping; resubscribe with START_AFTER_SEQUENCE and the last "
            "sequence you received"
        )
    if isinstance(exc, FeedUnavailable):
        return grpc.StatusCode.UNAVAILABLE, (
            "the change log cannot be read now; retry with backoff, resubscribing with "
            "START_AFTER_SEQUENCE and the last sequence you received"
        )
    return status_of(exc)


async def _abort(context: Context, exc: Exception) -> None:
    code, message = _status(exc)
    if is_expected(code) or code is grpc.StatusCode.UNAVAILABLE:
        log.info("subscription refused", code=code.name, error=message)
    else:
        log.error("subscription failed", code=code.name, exc_info=exc)
    await context.abort(code, message)
