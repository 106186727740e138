"""The one module that touches ``grpc``: the channel, calls, deadlines, retries, error mapping.

Calls are made on the channel with the method paths and message types of the API's descriptor,
so each call's response type is known to the type checker (grpcio itself is untyped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from unified_profile.v1 import profile_service_pb2

from ._config import RetryConfig, TlsConfig
from ._exceptions import ProfileServiceError, StatusCode

_R = TypeVar("_R", bound=Message)

SERVICE = profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"]
USER_AGENT = "unified-profile-client/0.1"

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.primary_user_agent", USER_AGENT),
    # A batch of 1,000 full profiles is larger than gRPC's 4 MiB default; the server bounds what
    # it sends by its own max_message_bytes (at most 64 MiB).
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A watch is a long idle stream: pings find a connection that died without a FIN (a NAT
    # dropping it, a host gone) in ~40 s instead of never. The server's heartbeats are data,
    # which keeps these pings within its ping policy.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Retries are ours (only reads, only on UNAVAILABLE, within the caller's deadline).
    ("grpc.enable_retries", 0),
]


def error_from(exc: grpc.RpcError) -> ProfileServiceError:
    """The :class:`ProfileServiceError` for a failed call (the caller chains ``from exc``)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    status = code() if callable(code) else None
    try:
        mapped = StatusCode[status.name] if status is not None else StatusCode.UNKNOWN
    except KeyError:
        mapped = StatusCode.UNKNOWN
    message = details() if callable(details) else None
    return ProfileServiceError(mapped, message or str(exc) or mapped.name)


class ChangeCall:
    """One open ``SubscribeProfileChanges`` call.

    Iterating yields the stream's messages and ends when the server ends the stream; a failure
    is raised as :class:`ProfileServiceError`. :meth:`cancel` ends the iteration quietly.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Iterator[profile_service_pb2.SubscribeProfileChangesResponse]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            raise error_from(exc) from exc

    def cancel(self) -> None:
        """Cancel the call (idempotent); an iteration in progress ends without an error."""
        self._cancelled = True
        self._call.cancel()


class Transport:
    """A channel to one ProfileService, the caller's token, deadlines and read retries.

    Args:
        target: ``host:port`` (any gRPC target string: ``dns:///name:443``, ``unix:/path``).
        token: Sent as ``authorization: Bearer <token>`` with every call when given.
        tls: TLS settings; plaintext when ``None``.
        retry: How reads are retried.
    """

    def __init__(
        self, target: str, *, token: str | None, tls: TlsConfig | None, retry: RetryConfig
    ) -> None:
        self.target = target
        self._retry = retry
        # Per call rather than as channel call credentials: gRPC refuses those on a plaintext
        # channel, and a plaintext channel to a sidecar or to localhost is a legitimate setup.
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        options = [
            *_CHANNEL_OPTIONS,
            # The channel's own reconnect backoff grows to 120 s by default: after a long
            # outage a restarted server would wait that long for us. Ours bounds it instead.
            ("grpc.initial_reconnect_backoff_ms", max(int(retry.initial_backoff * 1000), 100)),
            ("grpc.max_reconnect_backoff_ms", max(int(retry.max_backoff * 1000), 100)),
        ]
        if tls is None:
            self._channel: Any = grpc.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_cert,
                private_key=tls.client_key,
                certificate_chain=tls.client_cert,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._methods: dict[str, Any] = {}

    def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        self._channel.close()

    def unary(
        self,
        method: str,
        request: Message,
        response_type: type[_R],
        *,
        timeout: float,
        idempotent: bool,
    ) -> _R:
        """Call a unary method within ``timeout`` seconds (retries included).

        An idempotent call failing with UNAVAILABLE is retried with backoff while attempts and
        time remain; any other failure is raised at once.

        Raises:
            ProfileServiceError: The call failed (DEADLINE_EXCEEDED when the time ran out).
        """
        multicallable = self._method(method, response_type)
        deadline = time.monotonic() + timeout
        attempts = self._retry.max_attempts if idempotent else 1
        backoffs = self._retry.backoffs()
        for attempt in range(1, attempts + 1):
            try:
                response: _R = multicallable(
                    request,
                    timeout=max(deadline - time.monotonic(), 0.0),
                    metadata=self._metadata,
                )
                return response
            except grpc.RpcError as exc:
                error = error_from(exc)
                pause = next(backoffs)
                retry = (
                    error.code is StatusCode.UNAVAILABLE
                    and attempt < attempts
                    # No retry that could not finish: the caller's deadline is the bound.
                    and time.monotonic() + pause < deadline
                )
                if not retry:
                    raise error from exc
            time.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def open_changes(
        self, request: profile_service_pb2.SubscribeProfileChangesRequest
    ) -> ChangeCall:
        """Start a ``SubscribeProfileChanges`` call (no deadline: it runs until cancelled).

        Failures, the connection's included, surface while iterating the returned call.
        """
        multicallable = self._methods.get("SubscribeProfileChanges")
        if multicallable is None:
            multicallable = self._methods["SubscribeProfileChanges"] = self._channel.unary_stream(
                _path("SubscribeProfileChanges"),
                request_serializer=_serialize,
                response_deserializer=(
                    profile_service_pb2.SubscribeProfileChangesResponse.FromString
                ),
            )
        return ChangeCall(multicallable(request, metadata=self._metadata))

    def _method(self, name: str, response_type: type[Message]) -> Any:
        multicallable = self._methods.get(name)
        if multicallable is None:
            multicallable = self._methods[name] = self._channel.unary_unary(
                _path(name),
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
        return multicallable


def _path(method: str) -> str:
    # From the descriptor, so a method renamed in the proto fails here rather than on the wire.
    return f"/{SERVICE.full_name}/{SERVICE.methods_by_name[method].name}"


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


__all__ = ["ChangeCall", "Transport", "error_from"]
