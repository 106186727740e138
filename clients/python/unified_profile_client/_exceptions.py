"""The one error the client raises, and the status codes it carries.

Every failure of a call — refused by the server, cut off by the network, past its deadline — is
raised as :class:`ProfileServiceError`, chained (``raise … from``) to the transport's own error::

    Exception
    └── ProfileServiceError          .code: StatusCode, .message: str
          code NOT_FOUND             unknown, erased or forgotten profile; no profile holds the identifier
          code INVALID_ARGUMENT      a request field is invalid (the message starts with its path)
          code FAILED_PRECONDITION   the state forbids it (a shared identifier, a never-link)
          code UNAUTHENTICATED       no valid bearer token
          code PERMISSION_DENIED     the token lacks the scope the call needs
          code OUT_OF_RANGE          a watch cursor older than retention (the message says how to resync)
          code DEADLINE_EXCEEDED     the call's deadline passed
          code UNAVAILABLE           the server or its store cannot be reached (reads were retried)
          code (any other)           as the server or the transport reported it

Arguments the client can reject without asking the server (a negative page size, an unknown
change kind) raise ``ValueError``: those are programming errors, not outcomes of a call.
"""

from __future__ import annotations

import enum


class StatusCode(enum.Enum):
    """A gRPC status code (the same names and numbers as ``grpc.StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ProfileServiceError(Exception):
    """A ProfileService call failed.

    Attributes:
        code: The status code (the server's, or the transport's when the server was not reached).
        message: What went wrong, as the server put it (it names the invalid field, the missing
            scope, how to resync).
    """

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ProfileServiceError], tuple[StatusCode, str]]:
        # Picklable with its two arguments (the default would pass the formatted text only).
        return type(self), (self.code, self.message)


__all__ = ["ProfileServiceError", "StatusCode"]
