"""Bearer-token authentication and per-method scopes, as a ``grpc.aio`` server interceptor.

Every ProfileService call needs ``authorization: Bearer <token>`` metadata naming a configured
token (UNAUTHENTICATED otherwise) that holds the method's scope (PERMISSION_DENIED otherwise).
The health checking and reflection services are open: load balancers and tools probe them without
a secret, and they reveal no profile data. A method this module does not list needs ``admin``, so a
method added to the service later is closed until someone decides its scope.

Tokens are compared in constant time: the presented token's SHA-256 digest is compared with
:func:`hmac.compare_digest` against *every* configured token's digest, without stopping at a match,
so neither the position of the matching token nor the length of any secret shows in the timing.
Neither the presented nor the configured tokens are ever logged; the token's ``name`` is.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc import aio

from .handlers import rebuild_handler
from .settings import TokenConfig

log = structlog.get_logger(__name__)

SERVICE = "unified_profile.v1.ProfileService"

OPEN_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services callable without a token."""

METHOD_SCOPES: dict[str, str] = {
    f"/{SERVICE}/GetProfile": "profiles.read",
    f"/{SERVICE}/LookupProfile": "profiles.read",
    f"/{SERVICE}/BatchGetProfiles": "profiles.read",
    f"/{SERVICE}/GetProfileHistory": "profiles.read",
    f"/{SERVICE}/ExplainProfile": "profiles.read",
    f"/{SERVICE}/SubscribeProfileChanges": "profiles.subscribe",
    f"/{SERVICE}/MergeProfiles": "profiles.steward",
    f"/{SERVICE}/UnmergeProfiles": "profiles.steward",
    f"/{SERVICE}/ForgetProfile": "profiles.steward",
    f"/{SERVICE}/GetPipelineStatus": "admin",
}
"""The scope each ProfileService method needs (any other method needs ``admin``)."""

_DEFAULT_SCOPE = "admin"
_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its token's name and scopes."""

    name: str
    scopes: frozenset[str]


_current: ContextVar[Principal | None] = ContextVar("unified_profile_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled (set by :class:`BearerAuthInterceptor`)."""
    return _current.get()


class Authenticator:
    """Maps a presented bearer token to its :class:`Principal`, in constant time."""

    def __init__(self, tokens: Sequence[TokenConfig]) -> None:
        self._entries = [
            (_digest(t.token.get_secret_value()), Principal(t.name, frozenset(t.scopes)))
            for t in tokens
        ]

    def authenticate(self, presented: str) -> Principal | None:
        """The principal whose token is ``presented``, or ``None``."""
        digest = _digest(presented)
        found: Principal | None = None
        for expected, principal in self._entries:
            # No early exit: every configured token is compared whatever matched before.
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(metadata: Sequence[Any] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip() or None
            return None
    return None


class BearerAuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Authenticates each call and checks its method's scope before the handler runs."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        # Wrapped handlers per (method, principal or denial): built once, reused by every call.
        self._cache: dict[tuple[str, str], Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Return the method's handler, wrapped to deny the call or to know its caller."""
        method: str = handler_call_details.method
        service = method.split("/")[1] if method.count("/") == 2 else ""
        handler = await continuation(handler_call_details)
        if service in OPEN_SERVICES or handler is None:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        principal = self._authenticator.authenticate(token) if token else None
        if principal is None:
            log.warning(
                "rpc.unauthenticated", method=method,
                reason="no bearer token" if token is None else "unknown token",
            )
            return self._cached(
                (method, "\0unauthenticated"),
                lambda: _denying(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a valid bearer token is required (metadata authorization: Bearer <token>)",
                ),
            )
        scope = METHOD_SCOPES.get(method, _DEFAULT_SCOPE)
        if scope not in principal.scopes:
            log.warning("rpc.permission_denied", method=method, caller=principal.name, scope=scope)
            return self._cached(
                (method, "\0denied:" + principal.name),
                lambda: _denying(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"token {principal.name!r} does not have the scope {scope!r} this call needs",
                ),
            )
        return self._cached((method, principal.name), lambda: _as_caller(handler, principal))

    def _cached(self, key: tuple[str, str], build: Callable[[], Any]) -> Any:
        handler = self._cache.get(key)
        if handler is None:
            handler = self._cache[key] = build()
        return handler


def _denying(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    async def deny(_request: Any, context: Any) -> None:
        await context.abort(code, message)

    return rebuild_handler(handler, lambda _behavior: deny)


def _as_caller(handler: Any, principal: Principal) -> Any:
    def wrap(behavior: Any) -> Any:
        # grpc.aio picks how to drive a streaming handler by its function kind, so the wrapper
        # must be of the same kind as the behavior it wraps.
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> Any:
                _current.set(principal)  # each call runs in its own task and context
                async for item in behavior(request, context):
                    yield item

            return stream
        if inspect.iscoroutinefunction(behavior):

            async def call(request: Any, context: Any) -> Any:
                _current.set(principal)
                return await behavior(request, context)

            return call
        raise TypeError(f"{behavior!r}: the gRPC server runs async handlers only")

    return rebuild_handler(handler, wrap)


__all__ = [
    "METHOD_SCOPES",
    "OPEN_SERVICES",
    "Authenticator",
    "BearerAuthInterceptor",
    "Principal",
    "bearer_token",
    "current_principal",
]
