"""The serving read hot path on real PostgreSQL: coalesced reads answer as single reads do, and a
deadline cancels the statements it covers (batched or not) in PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from unified_profile.server.engine.records import Identifier
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore, StoreError
from unified_profile.server.store.read_connection import ReadConnection
from unified_profile.server.store.read_pool import ProfileReadPool

from .rpc_support import apply, crm, member

pytestmark = pytest.mark.integration


@pytest.fixture
def store_dsn(new_database):
    dsn = new_database("readpool")
    migrate.upgrade(dsn)
    return dsn


@pytest.fixture
def people(store_dsn):
    """Anne (with her membership merged in: an alias), Bob, and a shared household email."""
    store = ProfileStore.connect(store_dsn)
    try:
        [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
        [(alias, _, _)] = apply(store, member("L1", 11, crm_id=None))
        apply(store, member("L1", 12, crm_id=1))
        [(bob, _, _)] = apply(store, crm(2, 20, email="family@example.com", name="Bob"))
        [(carol, _, _)] = apply(store, crm(3, 21, email="family@example.com", name="Carol"))
    finally:
        store.close()
    return {"anne": anne, "alias": alias, "bob": bob, "carol": carol}


def test_concurrent_reads_share_statements_and_answer_as_single_reads_do(store_dsn, people):
    ids = [people["anne"], people["alias"], people["bob"], "p_nobody"] * 25
    identifiers = [
        Identifier("crm_id", "1"), Identifier("loyalty_id", "L1"),
        Identifier("email", "family@example.com"), Identifier("email", "nobody@example.com"),
    ] * 25

    async def scenario():
        pool = ProfileReadPool(store_dsn, size=2)
        try:
            alone = {i: await pool.get_profile(i, 5.0) for i in set(ids)}
            together = await asyncio.gather(*(pool.get_profile(i, 5.0) for i in ids))
            looked_alone = {i: await pool.lookup_profile(i, 5.0) for i in set(identifiers)}
            looked = await asyncio.gather(*(pool.lookup_profile(i, 5.0) for i in identifiers))
            return alone, together, looked_alone, looked
        finally:
            await pool.close()

    alone, together, looked_alone, looked = asyncio.run(scenario())
    assert together == [alone[i] for i in ids]
    assert alone["p_nobody"] is None
    assert alone[people["alias"]].via_alias
    assert alone[people["alias"]].profile.profile_id == people["anne"]
    assert not alone[people["anne"]].via_alias
    assert looked == [looked_alone[i] for i in identifiers]
    assert looked_alone[Identifier("crm_id", "1")].profile.profile_id == people["anne"]
    assert looked_alone[Identifier("loyalty_id", "L1")].profile.profile_id == people["anne"]
    assert looked_alone[Identifier("email", "family@example.com")] == 2
    assert looked_alone[Identifier("email", "nobody@example.com")] == 0


def test_a_deadline_cancels_single_and_batched_statements_in_postgresql(store_dsn, people):
    def lock_waiters(observer) -> int:
        (count,) = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").fetchone()
        return int(count)

    async def reads(pool):
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(pool.get_profile(people["anne"], 0.5) for _ in range(10)),
            pool.lookup_profile(Identifier("crm_id", "2"), 0.5),
            pool.get_profiles([people["bob"], people["carol"]], 0.5),
            return_exceptions=True,
        )
        return outcomes, time.monotonic() - started

    async def scenario(locker, observer):
        pool = ProfileReadPool(store_dsn, size=2)
        try:
            assert (await pool.get_profile(people["anne"], 5.0)) is not None   # connections up
            locker.execute("LOCK TABLE up_profiles IN ACCESS EXCLUSIVE MODE")
            outcomes, took = await reads(pool)
            deadline = time.monotonic() + 5
            while lock_waiters(observer) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            waiting = lock_waiters(observer)
            locker.rollback()
            after = await pool.get_profile(people["anne"], 5.0)
            return outcomes, took, waiting, after
        finally:
            await pool.close()

    with psycopg.connect(store_dsn) as locker, \
            psycopg.connect(store_dsn, autocommit=True) as observer:
        outcomes, took, waiting, after = asyncio.run(scenario(locker, observer))
    assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
    assert took < 3
    assert waiting == 0            # every statement was cancelled, none left waiting on the lock
    assert after is not None and after.profile.profile_id == people["anne"]   # pool still works


def test_reads_survive_the_store_closing_their_connections(store_dsn, people):
    async def scenario(admin):
        pool = ProfileReadPool(store_dsn, size=2)
        try:
            before = await pool.get_profile(people["anne"], 5.0)
            # What a server restart or an idle timeout does to every connection of the pool.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.2)
            got = await asyncio.gather(*(pool.get_profile(people["anne"], 5.0) for _ in range(4)))
            looked = await pool.lookup_profile(Identifier("crm_id", "2"), 5.0)
            return before, got, looked
        finally:
            await pool.close()

    with psycopg.connect(store_dsn, autocommit=True) as admin:
        before, got, looked = asyncio.run(scenario(admin))
    assert before is not None
    assert got == [before] * 4
    assert not isinstance(looked, int) and looked.profile.profile_id == people["bob"]


def _connections(admin) -> int:
    """Other client connections to the store's database."""
    return _backends(admin, "backend_type = 'client backend'")


def _lock_waiters(observer) -> int:
    """Other backends of the store's database waiting for a lock."""
    return _backends(observer, "wait_event_type = 'Lock'")


def _backends(conn, condition: str) -> int:
    (count,) = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        f"AND {condition} AND pid <> pg_backend_pid()").fetchone()
    return int(count)


async def _cancel_twice(read: asyncio.Future, observer) -> int:
    """Cancel a read twice, as gRPC may at a deadline; then the statements still waiting on a
    lock, once those the read started had up to 5 s to be cancelled in PostgreSQL."""
    read.cancel()
    await asyncio.sleep(0)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    deadline = time.monotonic() + 5
    while _lock_waiters(observer) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return _lock_waiters(observer)


def test_a_read_cancelled_twice_leaves_no_statement_behind(store_dsn, people):
    # What gRPC does at a deadline: the handler's task is cancelled, and may be again while the
    # read is stopping. The read runs in that task (it found a connection free).
    async def scenario(locker, observer):
        pool = ProfileReadPool(store_dsn, size=2)
        try:
            assert (await pool.get_profile(people["anne"], 5.0)) is not None
            locker.execute("LOCK TABLE up_profiles IN ACCESS EXCLUSIVE MODE")
            read = asyncio.ensure_future(pool.get_profile(people["bob"], 30.0))
            await asyncio.sleep(0.3)
            waiting = await _cancel_twice(read, observer)
            locker.rollback()
            after = await asyncio.gather(*(pool.get_profile(people["bob"], 5.0) for _ in range(3)))
            return waiting, after
        finally:
            await pool.close()

    with psycopg.connect(store_dsn) as locker, \
            psycopg.connect(store_dsn, autocommit=True) as observer:
        waiting, after = asyncio.run(scenario(locker, observer))
    assert waiting == 0
    assert [r.profile.profile_id for r in after if r is not None] == [people["bob"]] * 3


def test_a_read_cancelled_while_its_connection_prepares_leaves_nothing_waiting(store_dsn, people):
    # A new connection prepares its statements, and a PREPARE waits for a lock on the tables it
    # names. The read is cancelled twice meanwhile, as gRPC does at a deadline.
    async def scenario(locker, observer):
        pool = ProfileReadPool(store_dsn, size=2)
        try:
            locker.execute("LOCK TABLE up_profiles IN ACCESS EXCLUSIVE MODE")
            read = asyncio.ensure_future(pool.get_profile(people["bob"], 30.0))
            deadline = time.monotonic() + 10
            while not _lock_waiters(observer) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            preparing = _backends(observer, "query LIKE 'PREPARE%' AND wait_event_type = 'Lock'")
            waiting = await _cancel_twice(read, observer)
            locker.rollback()
            after = await pool.get_profile(people["bob"], 5.0)
            return preparing, waiting, after
        finally:
            await pool.close()

    with psycopg.connect(store_dsn) as locker, \
            psycopg.connect(store_dsn, autocommit=True) as observer:
        preparing, waiting, after = asyncio.run(scenario(locker, observer))
    assert preparing == 1          # the read was cancelled while its connection prepared
    assert waiting == 0            # and its PREPARE was cancelled, not left waiting on the lock
    assert after is not None and after.profile.profile_id == people["bob"]


def test_closing_the_pool_fails_reads_in_flight_and_leaves_no_connection(store_dsn, people):
    async def scenario(locker, admin):
        pool = ProfileReadPool(store_dsn, size=2)
        # Both connections up (a read made at once on each), so the reads below reach them.
        await asyncio.gather(*(pool.get_profile(people["anne"], 5.0) for _ in range(2)))
        locker.execute("LOCK TABLE up_profiles IN ACCESS EXCLUSIVE MODE")
        reads = [asyncio.ensure_future(pool.get_profile(people["bob"], 30.0)) for _ in range(4)]
        await asyncio.sleep(0.3)
        await pool.close()
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        locker.rollback()
        await asyncio.sleep(0.2)
        return outcomes, _connections(admin)

    with psycopg.connect(store_dsn) as locker, \
            psycopg.connect(store_dsn, autocommit=True) as admin:
        outcomes, left = asyncio.run(scenario(locker, admin))
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert left == 1   # only the test's locker


def test_a_closed_pool_refuses_reads_instead_of_reopening(store_dsn, people):
    """A call the server is still finishing may read after the pool closed: it must fail, not
    open connections that nothing will close."""
    async def scenario(admin):
        pool = ProfileReadPool(store_dsn, size=2)
        await pool.get_profile(people["anne"], 5.0)
        await pool.close()
        outcomes = await asyncio.gather(
            pool.get_profile(people["bob"], 5.0),
            pool.lookup_profile(Identifier("crm_id", "1"), 5.0),
            pool.get_profiles([people["bob"], people["anne"]], 5.0),
            pool.open(),
            return_exceptions=True,
        )
        await asyncio.sleep(0.2)
        return outcomes, _connections(admin)

    with psycopg.connect(store_dsn, autocommit=True) as admin:
        outcomes, left = asyncio.run(scenario(admin))
    assert all(
        isinstance(o, StoreError) and "stopping" in str(o) for o in outcomes
    ), outcomes
    assert left == 0


def test_a_statement_cancelled_while_being_sent_leaves_the_connection_usable(store_dsn):
    # 64 MiB of parameter: more than the socket takes at once, so the statement is still being
    # sent when its caller is cancelled.
    big = b"x" * (64 << 20)

    async def scenario():
        connection = ReadConnection(
            store_dsn, {"up_length": "SELECT length($1::text)"}, {"connect_timeout": 5}
        )
        try:
            assert await connection.query("up_length", [b"abc"]) == [(b"3",)]
            sending = asyncio.ensure_future(connection.query("up_length", [big]))
            await asyncio.sleep(0)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            return await asyncio.wait_for(connection.query("up_length", [b"abcd"]), 10)
        finally:
            await connection.close()

    assert asyncio.run(scenario()) == [(b"4",)]
