"""Method handlers built around the registered ones, for the server's interceptors.

:func:`rebuild_handler` makes a handler of the same kind around a new behavior (or serializer).
Interceptors run for every call, so :class:`WrappedHandlers` builds what they wrap a handler in
the first time and reuses it: keyed by the inner handler's id, each entry holds that handler
too, so the id stays its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

_MAX_ENTRIES = 10_000


class WrappedHandlers:
    """A bounded map (method, inner handler) → the handler built around it."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, build: Callable[[Any], Any]) -> Any:
        """``build(handler)``, built on the first call for this method and handler."""
        key = (method, id(handler))
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= _MAX_ENTRIES:  # handlers are few and long-lived; stay bounded
                self._entries.clear()
            entry = self._entries[key] = (handler, build(handler))
        return entry[1]


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def rebuild_handler(
    handler: Any,
    wrap: Callable[[Any], Any],
    response_serializer: Callable[[Any], bytes] | None = None,
) -> Any:
    """The same method handler with its behavior replaced by ``wrap(behavior)`` (and its
    response serializer by ``response_serializer``, when given)."""
    for kind, factory in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return factory(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=response_serializer or handler.response_serializer,
            )
    raise TypeError(f"a method handler without a behavior: {handler!r}")
