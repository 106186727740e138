"""The one table from domain errors to gRPC status codes.

gRPC status codes exist only at this edge: the store, the engine and the steward raise their own
errors, and a handler that fails hands its exception to :func:`status_of`. The errors it knows::

    Exception
    ├── InvalidArgument (ValueError)      INVALID_ARGUMENT   a request field is invalid; names it
    ├── FailedPrecondition                FAILED_PRECONDITION the state forbids it (message says why)
    ├── ReplyTooLarge                     RESOURCE_EXHAUSTED the answer would exceed the message limit
    ├── LookupError
    │   ├── ProfileNotFound               NOT_FOUND          unknown, deleted or forgotten profile
    │   └── UnknownRecord                 NOT_FOUND          a steward named a record that is gone
    ├── TimeoutError                      DEADLINE_EXCEEDED  the call's deadline passed
    ├── StoreError
    │   ├── QueryTimedOut                 DEADLINE_EXCEEDED  the store gave up at the deadline
    │   └── (any other)                   UNAVAILABLE        retry with backoff
    ├── StoreNotMigrated                  UNAVAILABLE
    └── NotImplementedError               UNIMPLEMENTED

Anything else is INTERNAL with a fixed message: an unexpected error's text may quote stored
values, and those are personal data.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from ..ingest.service import StoreNotMigrated
from ..ingest.steward import UnknownRecord
from ..store.profile_reads import ProfileNotFound, QueryTimedOut
from ..store.profile_store import StoreError


class InvalidArgument(ValueError):
    """A request field is invalid.

    Attributes:
        field: The field's path in the request (``refs[3].identifier.type``).
        problem: What is wrong with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class FailedPrecondition(Exception):
    """The request is valid but the current state does not allow it (the message says why)."""


class ReplyTooLarge(Exception):
    """The answer would be larger than the server may send (``max_message_bytes``).

    Raised before sending, so the client is told what to ask for instead of gRPC's bare "Sent
    message larger than max".
    """


@dataclass(frozen=True, slots=True)
class _Mapping:
    error: type[BaseException]
    code: grpc.StatusCode
    # None: the exception's own message is ours and safe to show; otherwise this fixed text.
    message: str | None = None


# Most specific first: the first row whose type matches wins.
_TABLE: tuple[_Mapping, ...] = (
    _Mapping(InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    _Mapping(FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    _Mapping(ReplyTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    _Mapping(ProfileNotFound, grpc.StatusCode.NOT_FOUND),
    _Mapping(UnknownRecord, grpc.StatusCode.NOT_FOUND),
    _Mapping(QueryTimedOut, grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed"),
    _Mapping(TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed"),
    _Mapping(
        StoreError,
        grpc.StatusCode.UNAVAILABLE,
        "the profile store is unavailable; retry with backoff",
    ),
    _Mapping(
        StoreNotMigrated,
        grpc.StatusCode.UNAVAILABLE,
        "the profile store's schema is not current; retry after the migration",
    ),
    _Mapping(NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)

INTERNAL_MESSAGE = "internal error (the server log has the details)"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for ``exc``.

    Returns:
        ``(code, message)``; INTERNAL with a fixed message for an exception the table lacks.
    """
    for row in _TABLE:
        if isinstance(exc, row.error):
            return row.code, row.message if row.message is not None else str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def is_expected(code: grpc.StatusCode) -> bool:
    """Whether a status is an ordinary outcome (a client's mistake) rather than a server fault."""
    return code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


__all__ = [
    "INTERNAL_MESSAGE",
    "FailedPrecondition",
    "InvalidArgument",
    "ReplyTooLarge",
    "is_expected",
    "status_of",
]
