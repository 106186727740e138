"""Latency of every gRPC call by method and status code (``up_rpc_seconds``).

The outermost interceptor, so calls the bearer-token check refuses are counted too. A handler's
status is what it set or aborted with; one that returns normally is OK, one that raises anything
else is UNKNOWN (what grpc reports to the client). Streams are timed from start to end.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from .. import metrics
from .handlers import WrappedHandlers, rebuild_handler

_OK = grpc.StatusCode.OK


class CallMetricsInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Times each call; wrapped handlers are built once per method."""

    def __init__(self) -> None:
        self._handlers = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Return the method's handler, wrapped to record its latency and status."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._handlers.get(method, handler, lambda inner: _timed(inner, method))


def _timed(handler: Any, method: str) -> Any:
    name = method.rsplit("/", 1)[-1]
    observers: dict[grpc.StatusCode, Any] = {}

    def observe(code: grpc.StatusCode | None, started: float) -> None:
        code = code or _OK
        observer = observers.get(code)
        if observer is None:
            observer = observers[code] = metrics.RPC_SECONDS.labels(name, code.name)
        observer.observe(time.perf_counter() - started)

    def wrap(behavior: Any) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> Any:
                started = time.perf_counter()
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException:
                    observe(_code_of(context), started)
                    raise
                observe(context.code(), started)

            return stream

        async def call(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException:
                observe(_code_of(context), started)
                raise
            observe(context.code(), started)
            return response

        return call

    return rebuild_handler(handler, wrap)


def _code_of(context: Any) -> grpc.StatusCode:
    # An abort sets the code before raising; any other exception reaches the client as UNKNOWN,
    # and a cancelled call as CANCELLED.
    code = context.code()
    if code is not None and code != _OK:
        return code
    return grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.UNKNOWN
