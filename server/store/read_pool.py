"""The serving hot path: profiles by id, alias or identifier, on an asyncio connection pool.

GetProfile, LookupProfile and BatchGetProfiles run here instead of through SQLAlchemy in worker
threads (:mod:`.profile_reads`, which keeps history, explain, status and the steward reads). The
SQL itself takes well under a millisecond; what this module removes is everything around it,
measured at ~2.5 ms of CPU per GetProfile on the threaded path:

* the server's own event loop: no thread hop, no GIL hand-offs;
* the coalesced single-key reads (GetProfile, LookupProfile) on one libpq connection per slot,
  driven directly (:mod:`.read_connection`, ~50 µs of CPU per statement instead of ~120 µs
  through psycopg's cursor and the pool checkout); BatchGetProfiles on a psycopg pool;
* autocommit connections: one SELECT is its own transaction, no ``BEGIN`` / ``ROLLBACK``;
* server-side prepared statements with generic plans: parsed and planned once per connection;
* no pre-ping per checkout: a connection found broken by a call is replaced by the pool, and the
  call is retried once on a fresh one (reads are idempotent);
* deadlines without ``SET``: each connection starts with ``statement_timeout`` at
  :data:`DEFAULT_STATEMENT_TIMEOUT_S` (libpq ``options``, no round trip), which bounds a call that
  has no deadline; a shorter deadline is enforced by the caller cancelling the awaiting task
  (``asyncio.timeout``), on which psycopg sends PostgreSQL a cancel request and waits for the
  statement to stop, so the query does not outlive the call either;
* JSONB decoded with orjson;
* under load, concurrent GetProfile (and LookupProfile) calls share one statement per free
  connection (:mod:`.coalesce`), instead of queueing for a round trip each.

One pool per server process, opened inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..engine.records import Identifier
from .coalesce import Coalescer, Slots
from .profile_reads import QueryTimedOut, ResolvedProfile
from .profile_store import StoredProfile, StoreError
from .read_connection import ConnectionLost, ReadConnection, Row, text_array

_T = TypeVar("_T")
_K = TypeVar("_K")

DEFAULT_STATEMENT_TIMEOUT_S = 30.0
"""How long a statement may run when the call has no deadline (the connections' default)."""

COALESCED_STATEMENTS = 2
"""Coalesced single-key statements running at once (per pool); the others queue and batch."""

_PROFILE_COLUMNS = (
    "p.profile_id, p.fields, p.identifiers, p.record_count, p.created_sequence, "
    "p.updated_sequence"
)

# An alias never names a live profile, so a profile id other than the one asked for means the
# request went through an alias (the same query as profile_reads' single-id form).
_GET_ONE = f"""
    SELECT p.profile_id <> %(id)s, {_PROFILE_COLUMNS}
    FROM up_profiles p
    WHERE p.profile_id = COALESCE(
        (SELECT a.profile_id FROM up_profile_aliases a WHERE a.alias_id = %(id)s), %(id)s)
"""

_GET_MANY = f"""
    SELECT r.requested, a.alias_id IS NOT NULL, {_PROFILE_COLUMNS}
    FROM unnest(%(ids)s::text[]) AS r(requested)
    LEFT JOIN up_profile_aliases a ON a.alias_id = r.requested
    JOIN up_profiles p ON p.profile_id = COALESCE(a.profile_id, r.requested)
"""

_HOLDERS = """
    SELECT DISTINCT q.type, q.value, sr.profile_id
    FROM unnest(%(types)s::text[], %(values)s::text[]) AS q(type, value)
    JOIN up_record_identifiers ri ON ri.type = q.type AND ri.value = q.value
    JOIN up_source_records sr
      ON sr.source = ri.source AND sr.table_name = ri.table_name
     AND sr.record_key = ri.record_key
    WHERE sr.profile_id IS NOT NULL
"""

# LookupProfile: per identifier, how many profiles hold the value, and the profile when one does
# (following an alias, as GetProfile would). A shared value returns its count, not the profiles;
# a value nobody holds returns no row.
_LOOKUP = f"""
    WITH holders AS ({_HOLDERS}),
    counted AS (
        SELECT type, value, count(*) AS holders, min(profile_id) AS profile_id
        FROM holders GROUP BY type, value)
    SELECT c.type, c.value, c.holders, {_PROFILE_COLUMNS}
    FROM counted c
    LEFT JOIN up_profiles p ON c.holders = 1 AND p.profile_id = COALESCE(
        (SELECT a.profile_id FROM up_profile_aliases a WHERE a.alias_id = c.profile_id),
        c.profile_id)
"""


# The coalesced reads' statements, prepared once per direct connection (``$n`` parameters).
_DIRECT_STATEMENTS = {
    "up_get_one": _GET_ONE.replace("%(id)s", "$1::text"),
    "up_get_many": _GET_MANY.replace("%(ids)s", "$1"),
    "up_lookup": _LOOKUP.replace("%(types)s", "$1").replace("%(values)s", "$2"),
}


class ProfileReadPool:
    """Profile reads for the gRPC service, on ``size`` autocommit connections to ``dsn``.

    Every read takes the caller's remaining time (``timeout_s``; ``None``: no deadline) and
    raises :class:`TimeoutError` when it passes, with its statement cancelled in PostgreSQL.
    Single-key reads (:meth:`get_profile`, :meth:`lookup_profile`) are coalesced under load
    (:mod:`.coalesce`).

    Args:
        dsn: The store's DSN (libpq form or URI).
        size: Connections kept open (statements running at once).
        statement_timeout_s: The connections' default ``statement_timeout``.
        connect_timeout_s: How long a read waits for a connection (then :class:`StoreError`).
    """

    def __init__(
        self,
        dsn: str,
        *,
        size: int = 8,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
        connect_timeout_s: float = 10.0,
    ) -> None:
        millis = max(1, int(statement_timeout_s * 1000))
        connect_kwargs = {
            # Generic plans: a custom plan is re-planned per execution (~0.4 ms for the
            # lookup), and these statements are index lookups whatever the parameters.
            "options": f"-c statement_timeout={millis} -c plan_cache_mode=force_generic_plan",
            "connect_timeout": max(1, int(connect_timeout_s)),
        }
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=size,
            max_size=size,
            open=False,
            timeout=connect_timeout_s,
            kwargs={"autocommit": True, **connect_kwargs},
            configure=_configure,
            name="profile-reads",
        )
        self._opened = False
        self._opening = asyncio.Lock()
        # Set for good by close(): a call the server is still finishing fails instead of
        # reopening connections nothing would close.
        self._closed = False
        self._detached_tasks: set[asyncio.Task[Any]] = set()
        # Few statements in flight make big batches: measured per GetProfile at 64 concurrent
        # calls, 8 in flight cost ~130 µs of this process's CPU, 2 in flight ~65 µs (the round
        # trip is the dominant cost, and a 2-core store runs no more than 2 at once anyway).
        slots = min(size, COALESCED_STATEMENTS)
        self._slots = Slots(slots)
        # One direct connection per slot: a statement (a batch, or a read run alone) always
        # finds one idle.
        self._direct = [
            ReadConnection(dsn, _DIRECT_STATEMENTS, connect_kwargs) for _ in range(slots)
        ]
        self._idle = list(self._direct)
        self._gets: Coalescer[str, ResolvedProfile | None] = Coalescer(
            self._slots, self._get_one, self._get_many_direct, None, _closing
        )
        self._lookups: Coalescer[Identifier, ResolvedProfile | int] = Coalescer(
            self._slots, self._lookup_one, self._lookup_many, 0, _closing
        )

    async def open(self) -> None:
        """Open the pool in the running event loop (idempotent); connections are made meanwhile.

        Does not wait for the store: a read made while it is unreachable fails with
        :class:`StoreError` after the connect timeout.
        """
        async with self._opening:
            if self._closed:
                raise _closing()
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    async def close(self) -> None:
        """Fail the reads in flight and close every connection; later reads fail too."""
        self._closed = True
        await self._slots.close()
        for task in list(self._detached_tasks):
            task.cancel()
        await asyncio.gather(*self._detached_tasks, return_exceptions=True)
        for direct in self._direct:
            await direct.close()
        if self._opened:
            await self._pool.close()
            self._opened = False

    # --- reads ---------------------------------------------------------------------------------

    async def get_profile(
        self, profile_id: str, timeout_s: float | None = None
    ) -> ResolvedProfile | None:
        """The profile with this id or alias, if any."""
        if self._slots.claim():
            return await self._alone(self._get_one, profile_id, timeout_s)
        return await self._gets.read(profile_id, timeout_s)

    async def lookup_profile(
        self, identifier: Identifier, timeout_s: float | None = None
    ) -> ResolvedProfile | int:
        """The one profile holding a (normalised) identifier value.

        Returns:
            The profile; or, when not exactly one profile holds the value, how many do (``0``
            also when the one holder has just been removed).
        """
        if self._slots.claim():
            return await self._alone(self._lookup_one, identifier, timeout_s)
        return await self._lookups.read(identifier, timeout_s)

    async def get_profiles(
        self, profile_ids: Collection[str], timeout_s: float | None = None
    ) -> dict[str, ResolvedProfile]:
        """Profiles by id or alias, keyed by the id asked for; ids not found are absent."""
        if not profile_ids:
            return {}
        ids = list(profile_ids)
        return await self._detached(lambda: self._get_many(ids), timeout_s)

    async def lookup_profiles(
        self, identifiers: Collection[Identifier], timeout_s: float | None = None
    ) -> dict[Identifier, list[str]]:
        """For each (normalised) identifier, the ids of the profiles holding it, sorted."""
        if not identifiers:
            return {}
        wanted = list(identifiers)

        async def run(conn: AsyncConnection[Any]) -> dict[Identifier, list[str]]:
            cursor = await conn.execute(_HOLDERS, _identifier_arrays(wanted), prepare=True)
            found: dict[Identifier, list[str]] = {}
            for typ, value, profile_id in await cursor.fetchall():
                found.setdefault(Identifier(typ, value), []).append(profile_id)
            return {key: sorted(ids) for key, ids in found.items()}

        return await self._detached(lambda: self._run(run), timeout_s)

    async def _alone(
        self, read: Callable[[_K], Awaitable[_T]], key: _K, timeout_s: float | None
    ) -> _T:
        """Run a single-key read that claimed a free connection at once, in the caller's task.

        What the coalescer does with such a read (a statement of its own), without the batch's
        task, its two timers and its hand-off: ~30-40 µs of CPU less per read. On a busy server
        nearly every read finds a connection free (measured: ~98 % of statements served one
        read at 16 and 64 calls in flight), because gRPC accepts calls one at a time and a
        statement's round trip is shorter than the time between them. Reads arriving while
        every connection is busy still queue in the coalescer and share a statement.

        Cancelling the caller (its deadline, gRPC's, any number of times) is safe here: the
        direct connection cancels and drains its statement in a task of its own.
        """
        try:
            async with asyncio.timeout(timeout_s):
                return await read(key)
        finally:
            self._slots.release()

    async def _detached(
        self, statement: Callable[[], Awaitable[_T]], timeout_s: float | None
    ) -> _T:
        """Run ``statement`` in a task of its own, cancelled once, at ``timeout_s``.

        The caller may be cancelled any number of times (its deadline, gRPC's); only the task's
        own timeout cancels the statement, so psycopg's cancel request to PostgreSQL is never
        interrupted half-way (which would close the connection with the statement running).
        """

        async def bounded() -> _T:
            async with asyncio.timeout(timeout_s):
                return await statement()

        task = asyncio.get_running_loop().create_task(bounded())
        self._detached_tasks.add(task)
        task.add_done_callback(self._detached_tasks.discard)
        task.add_done_callback(_forget)
        return await asyncio.shield(task)

    # --- statements ----------------------------------------------------------------------------

    async def _get_one(self, profile_id: str) -> ResolvedProfile | None:
        rows = await self._query("up_get_one", profile_id.encode())
        return ResolvedProfile(_text_profile(rows[0], 1), rows[0][0] == b"t") if rows else None

    async def _get_many_direct(self, profile_ids: list[str]) -> dict[str, ResolvedProfile]:
        rows = await self._query("up_get_many", text_array(profile_ids))
        return {
            _text(r[0]): ResolvedProfile(_text_profile(r, 2), r[1] == b"t") for r in rows
        }

    async def _get_many(self, profile_ids: list[str]) -> dict[str, ResolvedProfile]:
        async def run(conn: AsyncConnection[Any]) -> dict[str, ResolvedProfile]:
            cursor = await conn.execute(
                _GET_MANY, {"ids": profile_ids}, prepare=True, binary=True
            )
            rows = await cursor.fetchall()
            return {r[0]: ResolvedProfile(_profile(r, 2), bool(r[1])) for r in rows}

        return await self._run(run)

    async def _lookup_one(self, identifier: Identifier) -> ResolvedProfile | int:
        return (await self._lookup_many([identifier])).get(identifier, 0)

    async def _lookup_many(
        self, identifiers: list[Identifier]
    ) -> dict[Identifier, ResolvedProfile | int]:
        rows = await self._query(
            "up_lookup",
            text_array([i.type for i in identifiers]),
            text_array([i.value for i in identifiers]),
        )
        found: dict[Identifier, ResolvedProfile | int] = {}
        for row in rows:
            key = Identifier(_text(row[0]), _text(row[1]))
            holders = int(_text(row[2]))
            if holders != 1:
                found[key] = holders
            elif row[3] is None:
                found[key] = 0  # the one holder was removed meanwhile
            else:
                found[key] = ResolvedProfile(_text_profile(row, 3), False)
        return found

    async def _query(self, statement: str, *params: bytes) -> list[Row]:
        """Run a coalesced read on an idle direct connection; retry once on a new connection
        if it had broken (reads are idempotent)."""
        if not self._opened or self._closed:
            await self.open()
        connection = self._idle.pop()
        try:
            try:
                return await connection.query(statement, params)
            except ConnectionLost:
                if self._closed:
                    # Closed under a read: fail it, as the coalescer fails its batches, rather
                    # than open a connection the closing pool would leave behind.
                    raise _closing() from None
                return await connection.query(statement, params)
        finally:
            self._idle.append(connection)

    async def _run(self, work: Callable[[AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """Run ``work`` on a pooled connection; retry once if the connection had gone bad.

        Raises:
            QueryTimedOut: The store cancelled the statement (``statement_timeout``).
            StoreError: The store failed or no connection could be had in time.
        """
        if not self._opened or self._closed:
            await self.open()
        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn:
                    try:
                        return await work(conn)
                    except psycopg.OperationalError:
                        # A connection the server closed (restart, idle timeout) is only found
                        # out by using it; the pool discards it when it comes back broken.
                        if attempt == 1 and conn.broken:
                            continue
                        raise
            except psycopg.errors.QueryCanceled as exc:
                raise QueryTimedOut("the store cancelled the query at its timeout") from exc
            except psycopg.Error as exc:
                raise StoreError(f"store query failed: {exc}") from exc
            except PoolTimeout as exc:
                raise StoreError(f"no store connection available: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _forget(task: asyncio.Task[Any]) -> None:
    # Retrieve the outcome of a statement whose caller went away (no "never retrieved" warning).
    if not task.cancelled():
        task.exception()


def _identifier_arrays(identifiers: list[Identifier]) -> dict[str, list[str]]:
    return {"types": [i.type for i in identifiers], "values": [i.value for i in identifiers]}


def _closing() -> Exception:
    return StoreError("the server is stopping")


async def _configure(conn: AsyncConnection[Any]) -> None:
    # Both the text and the binary JSONB loaders of this connection use orjson.
    set_json_loads(orjson.loads, conn)


def _text(value: bytes | None) -> str:
    if value is None:
        raise StoreError("the store returned NULL where a value was expected")
    return value.decode()


def _text_profile(row: Row, first: int) -> StoredProfile:
    """Like :func:`_profile`, from a text-format row of a direct connection."""
    fields, identifiers = row[first + 1], row[first + 2]
    if fields is None or identifiers is None:
        raise StoreError("the store returned a profile without its documents")
    return StoredProfile(
        _text(row[first]),
        orjson.loads(fields),
        orjson.loads(identifiers),
        int(_text(row[first + 3])),
        int(_text(row[first + 4])),
        int(_text(row[first + 5])),
    )


def _profile(row: tuple[Any, ...], first: int) -> StoredProfile:
    """The profile columns of ``row`` starting at index ``first`` (see ``_PROFILE_COLUMNS``)."""
    return StoredProfile(
        row[first], row[first + 1], row[first + 2], row[first + 3], row[first + 4], row[first + 5]
    )


__all__ = ["COALESCED_STATEMENTS", "DEFAULT_STATEMENT_TIMEOUT_S", "ProfileReadPool"]
