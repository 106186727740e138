"""Waking the change feed when the change log grows: ``LISTEN`` on the store's channel.

Every applying transaction runs ``pg_notify(CHANGE_CHANNEL, head)`` and PostgreSQL delivers it at
commit, so a notification means "rows are readable now". Notifications carry no guarantee: they are
lost while the connection is down, which is why the listener wakes the feed after every (re)connect
and why the feed also polls. The only module of the feed that talks to psycopg directly.
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
    delay = config.reconnect_initial_s
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=config.connect_timeout_s
            )
            async with connection:
                await connection.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(CHANGE_CHANNEL))
                )
                log.info("change feed listening", channel=CHANGE_CHANNEL)
                delay = config.reconnect_initial_s
                # Anything committed while we were not listening sent its notification to nobody.
                wake()
                while True:
                    async for _ in connection.notifies(timeout=config.liveness_s):
                        wake()
                    # Raises on a dead connection, which notifies() alone may never notice.
                    await connection.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "change feed listener disconnected", error=str(exc), retry_in_s=round(delay, 2)
            )
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 2, config.reconnect_max_s)
