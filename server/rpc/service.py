"""The ``unified_profile.v1.ProfileService`` servicer (``grpc.aio``).

Handlers validate the request (INVALID_ARGUMENT names the field), read or write the store and
convert the result. The read hot path (GetProfile, LookupProfile, BatchGetProfiles) runs on an
asyncio connection pool in the server's event loop (:mod:`..store.read_pool`); the other reads and
the steward writes run SQLAlchemy work on a bounded thread pool. Deadlines are honoured on both:
a hot-path read is cancelled when the call's remaining time runs out, which cancels its statement
in PostgreSQL too; a threaded read is abandoned at the deadline, and the same time is its
transaction's ``statement_timeout``, so the query stops instead of holding a pooled connection
for a client that has gone. Steward writes check the deadline before they start and then run to
completion: a transaction is committed or not, never abandoned half-way.

GetProfile and LookupProfile answer from the process's read cache when it holds the answer
(:mod:`.profile_cache`: kept coherent by the store's write notifications); a steward write empties
it before replying.

Steward semantics (see :mod:`.steward_ops`): MergeProfiles force-links one record of each
profile; UnmergeProfiles never-links the named record with every other record of its profile;
ForgetProfile erases the profile (:func:`~..store.erasure.forget_profile`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog
from grpc import aio

from unified_profile.v1 import profile_pb2, profile_service_pb2_grpc
from unified_profile.v1 import profile_service_pb2 as pb

from ..engine.identity import IdentifierType
from ..engine.survivorship import RuleSet
from ..store.erasure import forget_profile
from ..store.profile_reads import ProfileNotFound, ProfileReads, ResolvedProfile
from ..store.profile_store import ProfileStore
from ..store.read_pool import ProfileReadPool
from . import convert
from .auth import current_principal
from .errors import FailedPrecondition, InvalidArgument, ReplyTooLarge, is_expected, status_of
from .explain import explain_profile
from .profile_cache import CachedProfile, ProfileCache, follow_writes
from .steward_ops import StewardOps
from .validation import parse_identifier, validate_profile_id, validate_reason

log = structlog.get_logger(__name__)

MAX_BATCH = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_S = TypeVar("_S", bound="ProfileService")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_T = TypeVar("_T")


class ChangeSubscriptions(Protocol):
    """What serves ``SubscribeProfileChanges`` (the change feed; an ``async def`` generator)."""

    def subscribe(
        self, request: pb.SubscribeProfileChangesRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeProfileChangesResponse | bytes]:
        """Yield the subscription's messages (or their encodings) until the client goes away."""
        ...


def _rpc(
    handler: Callable[[_S, _Req, Any], Awaitable[_Resp]],
) -> Callable[[_S, _Req, Any], Awaitable[_Resp]]:
    """Map a handler's exceptions to statuses through the one table (:mod:`.errors`)."""

    @functools.wraps(handler)
    async def call(self: _S, request: _Req, context: Any) -> _Resp:
        try:
            return await handler(self, request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, handler.__name__, exc)
            raise  # unreachable: abort raises

    return call


async def _abort(context: Any, method: str, exc: Exception) -> None:
    code, message = status_of(exc)
    if is_expected(code):
        log.debug("rpc.refused", method=method, code=code.name)
    else:
        # The type, never the message: an unexpected error's text may quote personal data.
        log.error("rpc.failed", method=method, code=code.name, error=type(exc).__name__)
    await context.abort(code, message)


class ProfileService(profile_service_pb2_grpc.ProfileServiceServicer):
    """Serves profiles from the store; steward operations go through the engine.

    Args:
        store: The profile store.
        identifier_types: The declared identifier types (LookupProfile normalises with them).
        rules: The survivorship rules (ExplainProfile and steward recomputations use them).
        subscriptions: The change feed serving ``SubscribeProfileChanges``; UNIMPLEMENTED
            while it is ``None``.
        db_threads: Threads running store work (ignored when ``executor`` is given).
        executor: Where store work runs; the service shuts it down in :meth:`close` only if it
            created it.
        read_pool: The hot-path reads; by default the service opens one on ``store.dsn``
            (``read_connections`` connections) and closes it in :meth:`aclose`.
        read_connections: Connections of the default read pool.
        max_reply_bytes: The largest answer the server may send (``max_message_bytes``): a
            larger batch is refused with a message saying what to ask for instead.
        read_cache: Answers GetProfile and LookupProfile when it can; :meth:`start` starts
            its listener on ``store.dsn``. ``None``: every read goes to the store.
    """

    def __init__(
        self,
        store: ProfileStore,
        identifier_types: Mapping[str, IdentifierType],
        rules: RuleSet,
        *,
        subscriptions: ChangeSubscriptions | None = None,
        db_threads: int = 8,
        executor: Executor | None = None,
        read_pool: ProfileReadPool | None = None,
        read_connections: int = 8,
        max_reply_bytes: int | None = None,
        read_cache: ProfileCache | None = None,
    ) -> None:
        if read_pool is None:
            if store.dsn is None:
                raise TypeError("give a read_pool, or a store opened with ProfileStore.connect")
            read_pool = ProfileReadPool(store.dsn, size=read_connections)
            self._own_read_pool = True
        else:
            self._own_read_pool = False
        self._read_pool = read_pool
        self._max_reply_bytes = max_reply_bytes
        self._reads = ProfileReads.of(store)
        self._types = identifier_types
        self._rules = rules
        self._steward = StewardOps(store, self._reads, identifier_types, rules)
        self._subscriptions = subscriptions
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(db_threads, "rpc-store")
        if read_cache is not None and store.dsn is None:
            raise TypeError("a read_cache needs a store opened with ProfileStore.connect")
        self._cache = read_cache
        self._cache_dsn = store.dsn
        self._cache_listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the read pool in the running event loop (else the first read opens it), and
        start the read cache's listener (the cache serves once it listens)."""
        await self._read_pool.open()
        if self._cache is not None and self._cache_listener is None and self._cache_dsn:
            self._cache_listener = asyncio.create_task(
                follow_writes(self._cache, self._cache_dsn), name="read-cache-listener"
            )

    async def aclose(self) -> None:
        """Close what the service opened (after the server has stopped)."""
        if self._cache_listener is not None:
            self._cache_listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cache_listener
            self._cache_listener = None
        if self._own_read_pool:
            await self._read_pool.close()
        # The pool's threads may still finish a write whose call was cut off; wait for them.
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop the service's own thread pool (after the server has stopped)."""
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # --- running store work -------------------------------------------------------------------

    async def _read(self, context: Any, work: Callable[[float | None], _T]) -> _T:
        """Run ``work(timeout_s)`` on the pool; give up when the call's deadline passes."""
        remaining = _remaining(context)
        future = asyncio.get_running_loop().run_in_executor(self._executor, work, remaining)
        if remaining is None:
            return await future
        return await asyncio.wait_for(future, remaining)

    async def _write(self, context: Any, work: Callable[[float | None], _T]) -> _T:
        """Run ``work(timeout_s)`` on the pool to completion (it was started within the deadline)."""
        remaining = _remaining(context)
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, remaining)

    # --- reads --------------------------------------------------------------------------------

    @_rpc
    async def GetProfile(self, request: pb.GetProfileRequest, context: Any) -> pb.GetProfileResponse:
        """One profile by id or alias."""
        profile_id = validate_profile_id(request.profile_id, "profile_id")
        mask = convert.compile_field_mask(request.field_mask, "field_mask")
        cache = self._cache
        epoch = None
        if cache is not None:
            if (cached := cache.get(profile_id)) is not None:
                response = pb.GetProfileResponse(
                    resolved_from_alias=cached.profile_id != profile_id
                )
                _fill_cached(response.profile, cached, mask)
                return response
            epoch = cache.epoch()
        # The pool bounds the read by the call's remaining time (and cancels its statement).
        resolved = await self._read_pool.get_profile(profile_id, _remaining(context))
        if resolved is None:
            raise ProfileNotFound(f"profile {profile_id!r} not found")
        response = pb.GetProfileResponse(resolved_from_alias=resolved.via_alias)
        convert.fill_profile(response.profile, resolved.profile, mask)
        if cache is not None and epoch is not None and mask is None:
            cache.put(profile_id, _cacheable(response.profile), epoch)
        return response

    @_rpc
    async def LookupProfile(
        self, request: pb.LookupProfileRequest, context: Any
    ) -> pb.LookupProfileResponse:
        """The one profile holding an identifier value."""
        identifier = parse_identifier(
            self._types, request.identifier_type, request.value, "identifier_type", "value"
        )
        if identifier is None:
            raise InvalidArgument(
                "value", "is empty or a placeholder that identifies nobody once normalised"
            )
        mask = convert.compile_field_mask(request.field_mask, "field_mask")
        cache = self._cache
        epoch = None
        if cache is not None:
            if (cached := cache.lookup(identifier)) is not None:
                response = pb.LookupProfileResponse()
                _fill_cached(response.profile, cached, mask)
                return response
            epoch = cache.epoch()
        found = await self._read_pool.lookup_profile(identifier, _remaining(context))
        if found == 0:
            raise ProfileNotFound(f"no profile holds this {identifier.type} value")
        if isinstance(found, int):
            # A shared value (a household email) names several people: answering with one of
            # them would hand one person's data to whoever asked about another.
            raise FailedPrecondition(
                f"this {identifier.type} value is held by {found} profiles; look up an "
                "identifier that names one person"
            )
        response = pb.LookupProfileResponse()
        convert.fill_profile(response.profile, found.profile, mask)
        if cache is not None and epoch is not None and mask is None:
            cache.put_lookup(identifier, _cacheable(response.profile), epoch)
        return response

    @_rpc
    async def BatchGetProfiles(
        self, request: pb.BatchGetProfilesRequest, context: Any
    ) -> pb.BatchGetProfilesResponse:
        """Up to 1,000 profiles by id or identifier, in request order (each ref answered from the
        read cache where it holds the answer, the rest read from the store together)."""
        if len(request.refs) > MAX_BATCH:
            raise InvalidArgument("refs", f"at most {MAX_BATCH} per call, got {len(request.refs)}")
        mask = convert.compile_field_mask(request.field_mask, "field_mask")
        wanted: list[tuple[str, Any]] = []
        for i, ref in enumerate(request.refs):
            which = ref.WhichOneof("ref")
            if which == "profile_id":
                wanted.append(("id", validate_profile_id(ref.profile_id, f"refs[{i}].profile_id")))
            elif which == "identifier":
                field = f"refs[{i}].identifier"
                wanted.append(("identifier", parse_identifier(
                    self._types, ref.identifier.type, ref.identifier.value,
                    f"{field}.type", f"{field}.value",
                )))
            else:
                raise InvalidArgument(f"refs[{i}]", "set profile_id or identifier")

        cache = self._cache
        hits: list[CachedProfile | None] = [None] * len(wanted)
        epoch = None
        if cache is not None:
            for n, (kind, value) in enumerate(wanted):
                if value is not None:
                    hits[n] = cache.get(value) if kind == "id" else cache.lookup(value)
            epoch = cache.epoch()
        missed = [pair for pair, hit in zip(wanted, hits, strict=True) if hit is None]

        async def fetch(timeout_s: float | None) -> dict[tuple[str, Any], ResolvedProfile]:
            pool = self._read_pool
            loop = asyncio.get_running_loop()
            deadline = None if timeout_s is None else loop.time() + timeout_s
            identifiers = [v for kind, v in missed if kind == "identifier" and v is not None]
            holders = await pool.lookup_profiles(identifiers, timeout_s)
            # An identifier held by several profiles is ambiguous: not found (see LookupProfile).
            by_identifier = {i: ids[0] for i, ids in holders.items() if len(ids) == 1}
            ids = {v for kind, v in missed if kind == "id"} | set(by_identifier.values())
            left = None if deadline is None else max(0.001, deadline - loop.time())
            profiles = await pool.get_profiles(ids, left)
            resolved = {("id", i): profiles[i] for i in ids if i in profiles}
            for identifier, profile_id in by_identifier.items():
                if profile_id in profiles:
                    resolved["identifier", identifier] = profiles[profile_id]
            return resolved

        found = await fetch(_remaining(context)) if missed else {}
        response = pb.BatchGetProfilesResponse()
        for ref, (kind, value), hit in zip(request.refs, wanted, hits, strict=True):
            resolved = found.get((kind, value)) if hit is None else None
            result = response.results.add(ref=ref, found=hit is not None or resolved is not None)
            if hit is not None:
                _fill_cached(result.profile, hit, mask)
            elif resolved is not None:
                convert.fill_profile(result.profile, resolved.profile, mask)
                # No epoch: the cache is not listening and would not keep it.
                if cache is not None and epoch is not None and mask is None:
                    if kind == "id":
                        cache.put(value, _cacheable(result.profile), epoch)
                    else:
                        cache.put_lookup(value, _cacheable(result.profile), epoch)
        self._check_reply_size(response, "ask for fewer refs, or fewer fields with field_mask")
        return response

    def _check_reply_size(self, response: Any, advice: str) -> None:
        """Refuse an answer gRPC would fail to send, saying what to ask for instead."""
        limit = self._max_reply_bytes
        if limit is not None and (size := response.ByteSize()) > limit:
            raise ReplyTooLarge(
                f"the reply would be {size:,} bytes, over the server's max_message_bytes "
                f"({limit:,}): {advice}"
            )

    @_rpc
    async def GetProfileHistory(
        self, request: pb.GetProfileHistoryRequest, context: Any
    ) -> pb.GetProfileHistoryResponse:
        """A page of the profile's change log (and its merged profiles'), oldest first."""
        profile_id = validate_profile_id(request.profile_id, "profile_id")
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")
        after = _decode_page_token(request.page_token, profile_id)
        page = await self._read(
            context, lambda t: self._reads.history(profile_id, after, page_size, t)
        )
        response = pb.GetProfileHistoryResponse(
            changes=[convert.change_to_proto(entry) for entry in page.entries]
        )
        if page.more and page.entries:
            response.next_page_token = _encode_page_token(profile_id, page.entries[-1].sequence)
        return response

    @_rpc
    async def ExplainProfile(
        self, request: pb.ExplainProfileRequest, context: Any
    ) -> pb.ExplainProfileResponse:
        """Candidates per field, links and conflicts, recomputed from the stored records."""
        profile_id = validate_profile_id(request.profile_id, "profile_id")

        def explain(timeout_s: float | None) -> pb.ExplainProfileResponse:
            inputs = self._reads.explain_inputs(profile_id, timeout_s)
            return explain_profile(inputs, self._types, self._rules)

        return await self._read(context, explain)

    @_rpc
    async def GetPipelineStatus(
        self, request: pb.GetPipelineStatusRequest, context: Any
    ) -> pb.GetPipelineStatusResponse:
        """Applied positions per source and consumer group, change-log bounds, counts."""
        counts = await self._read(context, self._reads.pipeline_counts)
        response = pb.GetPipelineStatusResponse(
            change_log_head=counts.head,
            change_log_oldest=counts.oldest,
            profiles=counts.profiles,
            dead_letters=counts.dead_letters,
            at=convert.timestamp_from_datetime(datetime.now(UTC)),
        )
        for consumer, streams in sorted(counts.positions.items()):
            kafka = {s: p for s, p in streams.items() if s.startswith("kafka:")}
            for stream, position in sorted(streams.items()):
                if stream.startswith("source:"):
                    response.sources.add(name=stream.removeprefix("source:"), applied_lsn=position)
            if kafka:
                response.consumers.add(group=consumer, positions=kafka)
        return response

    # --- subscriptions ------------------------------------------------------------------------

    async def SubscribeProfileChanges(  # type: ignore[override]  # also yields encoded messages
        self, request: pb.SubscribeProfileChangesRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeProfileChangesResponse | bytes]:
        """Delegated to the change feed (:class:`ChangeSubscriptions`)."""
        if self._subscriptions is None:
            await _abort(
                context,
                "SubscribeProfileChanges",
                NotImplementedError("change subscriptions are not available on this server"),
            )
            return
        try:
            async for message in self._subscriptions.subscribe(request, context):
                yield message
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, "SubscribeProfileChanges", exc)

    # --- steward ------------------------------------------------------------------------------

    @_rpc
    async def MergeProfiles(
        self, request: pb.MergeProfilesRequest, context: Any
    ) -> pb.MergeProfilesResponse:
        """Force-link one record of each profile; the older profile survives."""
        first = validate_profile_id(request.profile_id, "profile_id")
        second = validate_profile_id(request.other_profile_id, "other_profile_id")
        if first == second:
            raise InvalidArgument("other_profile_id", "must differ from profile_id")
        reason = validate_reason(request.reason)
        actor = _actor()
        profile, entries = await self._write(
            context, lambda t: self._steward.merge(first, second, actor, reason, t)
        )
        self._steward_wrote()
        return pb.MergeProfilesResponse(
            profile=convert.profile_to_proto(profile),
            changes=[convert.change_to_proto(e) for e in entries],
        )

    @_rpc
    async def UnmergeProfiles(
        self, request: pb.UnmergeProfilesRequest, context: Any
    ) -> pb.UnmergeProfilesResponse:
        """Never-link the named record with every other record of its profile."""
        profile_id = validate_profile_id(request.profile_id, "profile_id")
        record = convert.parse_record_name(request.record, "record")
        reason = validate_reason(request.reason)
        actor = _actor()
        entries = await self._write(
            context, lambda t: self._steward.unmerge(profile_id, record, actor, reason, t)
        )
        self._steward_wrote()
        return pb.UnmergeProfilesResponse(changes=[convert.change_to_proto(e) for e in entries])

    @_rpc
    async def ForgetProfile(
        self, request: pb.ForgetProfileRequest, context: Any
    ) -> pb.ForgetProfileResponse:
        """Erase the profile; answer with the DELETED change."""
        profile_id = validate_profile_id(request.profile_id, "profile_id")
        reason = validate_reason(request.reason)
        actor = _actor()
        entry = await self._write(
            context,
            lambda t: forget_profile(self._reads.engine, profile_id, actor, reason, t),
        )
        self._steward_wrote()
        log.info(
            "profile.forgotten", profile_id=entry.profile_id, actor=actor, sequence=entry.sequence
        )
        return pb.ForgetProfileResponse(change=convert.change_to_proto(entry))

    def _steward_wrote(self) -> None:
        """After a steward write commits: the caller's next read here must see it, and the
        notification saying what it changed may not have arrived yet."""
        if self._cache is not None:
            self._cache.clear()


def _cacheable(profile: profile_pb2.Profile) -> CachedProfile:
    return CachedProfile(profile.profile_id, profile.SerializeToString())


def _fill_cached(
    out: profile_pb2.Profile, cached: CachedProfile, mask: convert.ProfileMask | None
) -> None:
    if mask is None:
        out.MergeFromString(cached.encoded)
    else:
        convert.mask_into(out, profile_pb2.Profile.FromString(cached.encoded), mask)


def _remaining(context: Any) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise TimeoutError("the call's deadline has passed")
    return float(remaining)


def _actor() -> str:
    principal = current_principal()
    # The interceptor always sets it; a server built without it still audits something.
    return principal.name if principal is not None else "anonymous"


def _encode_page_token(profile_id: str, after: int) -> str:
    raw = json.dumps({"p": profile_id, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, profile_id: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        owner, after = data["p"], data["a"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidArgument("page_token", "is not a token from a previous response") from None
    if owner != profile_id or not isinstance(after, int) or after < 0:
        raise InvalidArgument("page_token", "belongs to another request (another profile_id)")
    return after


__all__ = ["MAX_BATCH", "ChangeSubscriptions", "ProfileService"]
