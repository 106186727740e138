"""``SubscribeProfileChanges`` messages assembled from changes encoded once.

The change feed encodes each change once (``ProfileChange`` bytes) and shares the bytes with every
subscriber. A stream message is then put together by concatenation, which protobuf's wire format
allows: an embedded message field is its tag, its length as a varint and the embedded bytes, and a
repeated field is its elements one after another. So a delivery costs no encoding, whether the
message carries one change (``change``) or several (``changes``).

The stream method's response serializer passes these bytes through: the server installs
:class:`EncodedStreamsInterceptor`, innermost, so the handlers wrapped around it keep the serializer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from grpc import aio

from unified_profile.v1 import profile_service_pb2

from .handlers import WrappedHandlers, rebuild_handler

MAX_MESSAGE_BYTES = 1 << 20
"""Batch messages are cut before they exceed this (gRPC clients accept 4 MiB by default)."""

_WIRE_TYPE_LEN = 2


def _tag(message: Any, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number
    return _varint(number << 3 | _WIRE_TYPE_LEN)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_Response = profile_service_pb2.SubscribeProfileChangesResponse
_CHANGE = _tag(_Response, "change")
_BATCH = _tag(_Response, "changes")
_BATCH_ELEMENT = _tag(profile_service_pb2.ProfileChangeBatch, "changes")

SUBSCRIBE_METHOD = "/{}/SubscribeProfileChanges".format(
    profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
)
"""The full name of the method whose messages are assembled here."""


def single_message(change: bytes) -> bytes:
    """A response carrying one encoded ``ProfileChange`` in ``change``."""
    return _CHANGE + _varint(len(change)) + change


def batch_messages(
    changes: Sequence[bytes], max_bytes: int = MAX_MESSAGE_BYTES
) -> Iterator[bytes]:
    """Responses carrying the encoded changes in ``changes``, in order, each under ``max_bytes``.

    A change larger than ``max_bytes`` on its own still goes, alone in its message.
    """
    parts: list[bytes] = []
    size = 0
    for change in changes:
        element = _BATCH_ELEMENT + _varint(len(change)) + change
        if parts and size + len(element) > max_bytes:
            yield _batch(parts, size)
            parts, size = [], 0
        parts.append(element)
        size += len(element)
    if parts:
        yield _batch(parts, size)


def _batch(parts: list[bytes], size: int) -> bytes:
    return b"".join((_BATCH, _varint(size), *parts))


def accepting_encoded(serializer: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that sends ``bytes`` as they are and serializes anything else."""

    def serialize(response: Any) -> bytes:
        if response.__class__ is bytes:
            return response
        return serializer(response)

    return serialize


class EncodedStreamsInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Lets the named methods yield already encoded ``bytes`` messages.

    Args:
        methods: Full method names; ``SubscribeProfileChanges`` by default.
    """

    def __init__(self, methods: Sequence[str] = (SUBSCRIBE_METHOD,)) -> None:
        self._methods = frozenset(methods)
        self._handlers = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Return the method's handler, with a pass-through serializer for the named methods."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in self._methods:
            return handler
        return self._handlers.get(method, handler, _passing_bytes)


def _passing_bytes(handler: Any) -> Any:
    return rebuild_handler(
        handler, lambda behavior: behavior, accepting_encoded(handler.response_serializer)
    )
