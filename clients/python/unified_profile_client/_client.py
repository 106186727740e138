"""``ProfileClient``: the ProfileService's calls as typed methods."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import Message

from unified_profile.v1 import profile_pb2, profile_service_pb2

from ._config import RetryConfig, TlsConfig
from ._transport import Transport
from ._types import (
    ChangeFilter,
    ProfileRefLike,
    WatchStart,
    field_mask,
    profile_ref,
    subscribe_request,
)
from ._watch import ChangeStream

pb = profile_service_pb2
_Response = TypeVar("_Response", bound=Message)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ProfileClient:
    """A client of one ProfileService.

    Every method is a call with a deadline (``timeout`` seconds, the client's default unless a
    method is given its own). Reads that fail with UNAVAILABLE are retried with backoff within
    that deadline; steward operations are never retried. Every failure is raised as
    :class:`~unified_profile_client.ProfileServiceError`.

    Use it as a context manager, or call :meth:`close`, to release its connection::

        with ProfileClient("profiles.internal:50051", token=token, tls=TlsConfig()) as client:
            profile = client.get("p_01HZX...")

    Args:
        target: ``host:port`` of the server (or any gRPC target string).
        token: The bearer token; its scopes decide which methods succeed.
        tls: TLS (and mutual TLS) settings; plaintext when ``None``.
        timeout: Default deadline of a call, in seconds, retries included.
        retry: How reads are retried and watches reconnect.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        timeout: float = 10.0,
        retry: RetryConfig = RetryConfig(),  # noqa: B008 (frozen, so one shared default is safe)
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._transport = Transport(target, token=token, tls=tls, retry=retry)

    def close(self) -> None:
        """Close the connection; calls and watches in progress are cancelled."""
        self._transport.close()

    def __enter__(self) -> ProfileClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- reads --------------------------------------------------------------------------------

    def get_response(
        self, profile_id: str, fields: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> pb.GetProfileResponse:
        """Like :meth:`get`, with the response's ``resolved_from_alias``."""
        request = pb.GetProfileRequest(profile_id=profile_id, field_mask=field_mask(fields))
        return self._read("GetProfile", request, pb.GetProfileResponse, timeout)

    def get(
        self, profile_id: str, fields: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> profile_pb2.Profile:
        """One profile by id; an alias (a profile merged away) gives the surviving profile.

        Args:
            profile_id: The profile id or an alias of it.
            fields: Only these field paths (``person``, ``loyalty.tier``); all when ``None``.
            timeout: This call's deadline in seconds (the client's default when ``None``).

        Raises:
            ProfileServiceError: NOT_FOUND for an unknown, erased or forgotten id;
                INVALID_ARGUMENT for a malformed id or field path.
        """
        return self.get_response(profile_id, fields, timeout=timeout).profile

    def lookup(
        self,
        identifier_type: str,
        value: str,
        fields: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> profile_pb2.Profile:
        """The one profile holding an identifier (normalised by the server as ingest does).

        Args:
            identifier_type: A declared identifier type (``email``, ``crm_id``, ...).
            value: The value as a system knows it (``" Anne@Example.COM "`` is fine).
            fields: Only these field paths; all when ``None``.
            timeout: This call's deadline in seconds.

        Raises:
            ProfileServiceError: NOT_FOUND when no profile holds it; FAILED_PRECONDITION when
                several do (a shared household email); INVALID_ARGUMENT for an unknown type.
        """
        request = pb.LookupProfileRequest(
            identifier_type=identifier_type, value=value, field_mask=field_mask(fields)
        )
        return self._read("LookupProfile", request, pb.LookupProfileResponse, timeout).profile

    def batch_get(
        self,
        refs: Iterable[ProfileRefLike],
        fields: Iterable[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[profile_pb2.Profile | None]:
        """Up to 1,000 profiles by id or identifier, in the order asked; ``None`` where not found.

        An identifier held by several profiles counts as not found.

        Args:
            refs: Profile ids (or aliases) and :class:`IdentifierRef` values.
            fields: Only these field paths; all when ``None``.
            timeout: This call's deadline in seconds.

        Raises:
            ProfileServiceError: INVALID_ARGUMENT for more than 1,000 refs or a malformed one
                (the message names it: ``refs[3].identifier.type``).
        """
        request = pb.BatchGetProfilesRequest(
            refs=[profile_ref(ref) for ref in refs], field_mask=field_mask(fields)
        )
        response = self._read("BatchGetProfiles", request, pb.BatchGetProfilesResponse, timeout)
        return [result.profile if result.found else None for result in response.results]

    def history(
        self,
        profile_id: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> Iterator[profile_pb2.ProfileChange]:
        """The profile's change log, oldest first, with the profiles merged into it.

        Pages are fetched as the iteration needs them, each its own call with its own deadline.

        Args:
            profile_id: The profile id or an alias of it.
            page_size: Changes per call (1 to 1,000).
            timeout: Each page call's deadline in seconds.

        Raises:
            ProfileServiceError: NOT_FOUND for an unknown id (when the first page is fetched).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        # A generator inside, so that the argument check above fails at the call, not later.
        return self._history_pages(profile_id, page_size, timeout)

    def _history_pages(
        self, profile_id: str, page_size: int, timeout: float | None
    ) -> Iterator[profile_pb2.ProfileChange]:
        token = ""
        while True:
            request = pb.GetProfileHistoryRequest(
                profile_id=profile_id, page_size=page_size, page_token=token
            )
            page = self._read("GetProfileHistory", request, pb.GetProfileHistoryResponse, timeout)
            yield from page.changes
            token = page.next_page_token
            if not token:
                return

    def explain(
        self, profile_id: str, *, timeout: float | None = None
    ) -> pb.ExplainProfileResponse:
        """Why the profile looks as it does.

        Returns:
            The profile; per field every candidate value with its source record and the rule
            that chose the winner; the linked records; which identifiers link them; and the
            identity conflicts that kept records apart.

        Raises:
            ProfileServiceError: NOT_FOUND for an unknown id.
        """
        request = pb.ExplainProfileRequest(profile_id=profile_id)
        return self._read("ExplainProfile", request, pb.ExplainProfileResponse, timeout)

    def pipeline_status(self, *, timeout: float | None = None) -> pb.GetPipelineStatusResponse:
        """Capture and engine positions, lag, change-log head and retention (scope ``admin``)."""
        request = pb.GetPipelineStatusRequest()
        return self._read("GetPipelineStatus", request, pb.GetPipelineStatusResponse, timeout)

    # --- steward (scope profiles.steward; never retried) ---------------------------------------

    def merge(
        self, profile_id: str, other_profile_id: str, reason: str, *, timeout: float | None = None
    ) -> pb.MergeProfilesResponse:
        """Force two profiles together; the older id survives, the other becomes its alias.

        Returns:
            The surviving profile and the changes made (none when they were already one).

        Raises:
            ProfileServiceError: NOT_FOUND for an unknown id; FAILED_PRECONDITION when a
                steward's never-link keeps them apart; INVALID_ARGUMENT for an empty reason.
        """
        request = pb.MergeProfilesRequest(
            profile_id=profile_id, other_profile_id=other_profile_id, reason=reason
        )
        return self._write("MergeProfiles", request, pb.MergeProfilesResponse, timeout)

    def unmerge(
        self, profile_id: str, record: str, reason: str, *, timeout: float | None = None
    ) -> list[profile_pb2.ProfileChange]:
        """Separate a source record from the rest of its profile, for good (a never-link).

        Args:
            profile_id: The profile holding the record.
            record: ``source/table/key`` as :meth:`explain` lists it
                (``loyalty/public.members/{"member_id":"L1"}``).
            reason: Why (audited).
            timeout: This call's deadline in seconds.

        Returns:
            The changes made: a SPLIT, and the CREATED of the new profile.

        Raises:
            ProfileServiceError: FAILED_PRECONDITION when the record is the profile's only one.
        """
        request = pb.UnmergeProfilesRequest(profile_id=profile_id, record=record, reason=reason)
        response = self._write("UnmergeProfiles", request, pb.UnmergeProfilesResponse, timeout)
        return list(response.changes)

    def forget(
        self, profile_id: str, reason: str, *, timeout: float | None = None
    ) -> profile_pb2.ProfileChange:
        """Erase a profile and its stored source images (right to erasure).

        Returns:
            The DELETED change emitted.

        Raises:
            ProfileServiceError: NOT_FOUND for an unknown or already forgotten id.
        """
        request = pb.ForgetProfileRequest(profile_id=profile_id, reason=reason)
        return self._write("ForgetProfile", request, pb.ForgetProfileResponse, timeout).change

    # --- subscriptions ------------------------------------------------------------------------

    def watch(
        self,
        start: WatchStart = "latest",
        filter: ChangeFilter | None = None,
        include_profile: bool = False,
        *,
        heartbeat_seconds: int | None = None,
    ) -> ChangeStream:
        """Follow the change log: the changes from ``start``, then live ones as they commit.

        The stream reconnects by itself when the server goes away, the connection breaks or the
        server ends the stream, with exponential backoff (:class:`RetryConfig`), resuming after
        the last change it yielded: no change is missed and none comes twice. It needs the
        ``profiles.subscribe`` scope.

        Args:
            start: ``"earliest"`` (every retained change), ``"latest"`` (only changes committed
                from now on) or a sequence to continue after (a previous stream's
                ``last_sequence``).
            filter: Which changes; all when ``None``.
            include_profile: Attach the whole profile, as it is at delivery, to each change.
            heartbeat_seconds: How often the idle server reports its head (default 10 s).

        Returns:
            An iterator of changes (heartbeats only update its ``head_sequence``); close it to
            end the subscription.

        Raises:
            ValueError: ``start`` is none of those.
            ProfileServiceError: While iterating: OUT_OF_RANGE when ``start`` is older than
                retention or past the head (the message says how to resync); PERMISSION_DENIED,
                INVALID_ARGUMENT (a bad filter); the last error after ``max_reconnects``.
        """
        request = subscribe_request(start, filter, include_profile, heartbeat_seconds)
        return ChangeStream(self._transport.open_changes, request, start, self.retry)

    # --- calls --------------------------------------------------------------------------------

    def _read(
        self,
        method: str,
        request: Message,
        response_type: type[_Response],
        timeout: float | None,
    ) -> _Response:
        return self._transport.unary(
            method, request, response_type, timeout=self.timeout if timeout is None else timeout, idempotent=True
        )

    def _write(
        self,
        method: str,
        request: Message,
        response_type: type[_Response],
        timeout: float | None,
    ) -> _Response:
        return self._transport.unary(
            method, request, response_type, timeout=self.timeout if timeout is None else timeout, idempotent=False
        )


__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "ProfileClient"]
