"""Building, starting and stopping the ``grpc.aio`` server.

One server carries the ProfileService behind the bearer-token interceptor, the standard health
checking service (``grpc.health.v1``: SERVING while up, NOT_SERVING from the moment a stop begins,
so a load balancer drains it before calls are refused) and server reflection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from unified_profile.v1 import profile_service_pb2_grpc

from .. import metrics
from ..collector import settle_after_start
from ..config import ServiceConfig
from ..feed.change_feed import ChangeFeed
from ..store.profile_store import ProfileStore
from .auth import SERVICE, Authenticator, BearerAuthInterceptor
from .call_metrics import CallMetricsInterceptor
from .change_convert import subscribe_response
from .change_encoding import EncodedStreamsInterceptor
from .profile_cache import ProfileCache
from .service import ChangeSubscriptions, ProfileService
from .settings import GrpcConfig, TlsConfig
from .subscriptions import ProfileSubscriptions

log = structlog.get_logger(__name__)


class ServerStartError(OSError):
    """The server could not listen on its address (in use, or not a local address)."""


@dataclass
class RunningServer:
    """A started server.

    Attributes:
        server: The ``grpc.aio`` server.
        port: The port it listens on (the one chosen when ``listen`` gave port 0).
        address: ``host:port`` for clients.
        service: The ProfileService it serves.
        health: Its health servicer.
    """

    server: Any
    port: int
    address: str
    service: ProfileService
    health: Any

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let calls in flight finish for ``grace`` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.service.aclose()
        log.info("grpc.stopped", port=self.port)

    async def wait(self) -> None:
        """Until the server terminates."""
        await self.server.wait_for_termination()


def server_credentials(tls: TlsConfig) -> Any:
    """TLS credentials; with ``client_ca_file``, clients must present a certificate it signed."""
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def start_server(
    config: GrpcConfig, service: ProfileService, *, listen: str | None = None
) -> RunningServer:
    """Build and start the server for ``service``.

    Args:
        config: ``[grpc]``.
        service: The servicer (its thread pool is shut down by :meth:`RunningServer.stop`).
        listen: ``host:port`` overriding ``config.listen`` (tests pass port 0).

    Raises:
        ServerStartError: The address cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    server = aio.server(
        # The encoded-streams interceptor is innermost: the handlers the others build around
        # the registered one keep its pass-through serializer.
        interceptors=[
            CallMetricsInterceptor(),
            BearerAuthInterceptor(Authenticator(config.tokens)),
            EncodedStreamsInterceptor(),
        ],
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (health.OVERALL_HEALTH, SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.reflection:
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    address = listen or config.listen
    try:
        if config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(config.tls))
    except RuntimeError as exc:
        raise ServerStartError(f"cannot listen on {address}: {exc}") from exc
    if not port:
        raise ServerStartError(f"cannot listen on {address}")
    await service.start()
    await server.start()
    host = address.rsplit(":", 1)[0]
    log.info(
        "grpc.started", address=f"{host}:{port}", tls=config.tls is not None,
        mtls=config.tls is not None and config.tls.client_ca_file is not None,
        tokens=len(config.tokens),
    )
    if not config.tokens:
        log.warning("grpc.no_tokens", hint="every ProfileService call will be UNAUTHENTICATED")
    return RunningServer(server, int(port), f"{host}:{port}", service, health_servicer)


def build_read_cache(config: GrpcConfig) -> ProfileCache | None:
    """The read cache ``[grpc]`` asks for (``None`` when ``read_cache_profiles`` is 0)."""
    if config.read_cache_profiles == 0:
        return None
    return ProfileCache(config.read_cache_profiles, config.read_cache_ttl_seconds)


def build_service(
    config: ServiceConfig,
    store: ProfileStore,
    subscriptions: ChangeSubscriptions | None = None,
    read_cache: ProfileCache | None = None,
) -> ProfileService:
    """The ProfileService for a whole service config."""
    return ProfileService(
        store,
        config.mapping.identity_types,
        config.rules,
        subscriptions=subscriptions,
        db_threads=config.grpc.db_threads,
        read_connections=config.grpc.read_connections,
        max_reply_bytes=config.grpc.max_message_bytes,
        read_cache=read_cache,
    )


async def serve(
    config: ServiceConfig,
    store: ProfileStore,
    stop: asyncio.Event,
    subscriptions: ChangeSubscriptions | None = None,
) -> None:
    """Serve until ``stop`` is set, then stop gracefully (``shutdown_grace_seconds``).

    Without ``subscriptions`` the server runs its own change feed (one per process).
    """
    feed: ChangeFeed[Any] | None = None
    read_cache = build_read_cache(config.grpc)
    if read_cache is not None:
        cache = read_cache
        metrics.READ_CACHE.read = lambda: (
            cache.stats.hits, cache.stats.misses, len(cache), cache.serving
        )
    if subscriptions is None:
        # What the feed is about to deliver leaves the cache first: a subscriber's next read
        # here sees at least the change it was told of.
        feed = ChangeFeed(
            store, config.store.dsn, subscribe_response,
            on_read=read_cache.changes_read if read_cache is not None else None,
        )
        await feed.start()
        metrics.SUBSCRIBERS.set_function(lambda: feed.stats().subscriptions if feed else 0)
        subscriptions = ProfileSubscriptions(feed, store, config.grpc.max_message_bytes)
    running = await start_server(
        config.grpc, build_service(config, store, subscriptions, read_cache)
    )
    # What starting allocated (modules, protobuf descriptors, config, the store's engine) lives
    # as long as the process. Left to the cyclic collector, every full pass rescans it all:
    # ~180k objects, ~70 ms with the event loop stopped, every second or two once streams
    # churn short-lived objects, and each pass delays every change in flight to subscribers.
    settle_after_start()
    try:
        await stop.wait()
    finally:
        # Streams never end by themselves: close them first (clients get UNAVAILABLE and resume
        # after their last sequence), or the graceful stop would wait out its whole grace period.
        if feed is not None:
            await feed.close()
        await running.stop(config.grpc.shutdown_grace_seconds)


__all__ = [
    "RunningServer",
    "ServerStartError",
    "build_read_cache",
    "build_service",
    "serve",
    "server_credentials",
    "start_server",
]
