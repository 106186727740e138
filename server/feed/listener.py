"""Waking the change feed when the change log grows: ``LISTEN`` on the store's channel.

Every applying transaction runs ``pg_notify(CHANGE_CHANNEL, head)`` and PostgreSQL delivers it at
commit, so a notification means "rows are readable now". Notifications carry no guarantee: they are
lost while the connection is down, which is why the listener wakes the feed after every (re)connect
and why the feed also polls. The only module of the feed that talks to psycopg directly.

:func:`listen` is the general form: the serving processes' read cache listens on another channel
(:mod:`~unified_profile.server.store.profile_writes`) the same way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import structlog
from psycopg import sql

from ..store.profile_store import CHANGE_CHANNEL

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """How the listener connects and reconnects.

    Attributes:
        reconnect_initial_s: First wait after a failure; doubled on each failure in a row.
        reconnect_max_s: The longest wait between attempts.
        liveness_s: How long the connection may stay silent before a probe query checks it (a
            peer that vanished without closing TCP is only noticed when we send something).
        connect_timeout_s: How long one connection attempt may take.
    """

    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    liveness_s: float = 30.0
    connect_timeout_s: int = 10


async def listen_for_changes(
    dsn: str, wake: Callable[[], None], config: ListenerConfig = ListenerConfig()
) -> None:
    """Call ``wake`` on every change-log notification (and after each connect) until cancelled.

    Connection failures are logged and retried with jittered exponential backoff; this coroutine
    only ends by cancellation.
    """
    await listen(dsn, CHANGE_CHANNEL, wake, lambda _payload: wake(), config=config)


async def listen(
    dsn: str,
    channel: str,
    on_connected: Callable[[], None],
    on_notify: Callable[[str], None],
    on_lost: Callable[[], None] | None = None,
    config: ListenerConfig = ListenerConfig(),
) -> None:
    """``LISTEN`` on ``channel``: ``on_notify(payload)`` for each notification until cancelled.

    ``on_connected`` runs once each connection listens (anything committed while nobody listened
    sent its notification to nobody); ``on_lost`` when a connection fails, before the retry.
    Failures are logged and retried with jittered exponential backoff.
    """
    delay = config.reconnect_initial_s
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(
                dsn,
                autocommit=True,
                connect_timeout=config.connect_timeout_s,
                # Who listens, for whoever reads pg_stat_activity.
                application_name=f"unified-profile listener {channel}",
            )
            async with connection:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                log.info("listening", channel=channel)
                delay = config.reconnect_initial_s
                on_connected()
                while True:
                    async for notify in connection.notifies(timeout=config.liveness_s):
                        on_notify(notify.payload)
                    # Raises on a dead connection, which notifies() alone may never notice.
                    await connection.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            if on_lost is not None:
                on_lost()
            log.warning(
                "listener disconnected", channel=channel, error=str(exc),
                retry_in_s=round(delay, 2),
            )
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 2, config.reconnect_max_s)
