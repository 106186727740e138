"""SubscribeProfileChanges end to end: real PostgreSQL store, real change feed, real gRPC server.

The server runs the service's own ``ProfileService`` (without its auth interceptor), delegating to
``ProfileSubscriptions``. Changes are written straight into the store (``append_changes``, or the
applier for realistic ones); the store's NOTIFY wakes the feed exactly as in production. The feed's
poll interval is set long, so a live delivery here proves the LISTEN path (one test covers the poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest

from unified_profile.server.engine.identity import IdentifierType
from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord
from unified_profile.server.engine.survivorship import Rule, RuleSet
from unified_profile.server.feed import (
    ChangeFeed,
    ChangeFeedConfig,
    ChangeFilter,
    CursorOutOfRange,
    Heartbeat,
    ListenerConfig,
    StartAt,
)
from unified_profile.server.ingest.applier import IncomingRecord, ProfileApplier
from unified_profile.server.rpc.change_convert import subscribe_response
from unified_profile.server.rpc.change_encoding import EncodedStreamsInterceptor
from unified_profile.server.rpc.service import ProfileService
from unified_profile.server.rpc.subscriptions import ProfileSubscriptions
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ChangeRow, ProfileStore
from unified_profile.v1 import profile_pb2, profile_service_pb2, profile_service_pb2_grpc

pytestmark = pytest.mark.integration

Request = profile_service_pb2.SubscribeProfileChangesRequest
Start = Request.Start
K = profile_pb2.ChangeKind
COMMIT_US = 1_700_000_000_000_000


# --- harness ------------------------------------------------------------------------------------


@dataclass
class Harness:
    store: ProfileStore
    feed: ChangeFeed[Any]
    stub: profile_service_pb2_grpc.ProfileServiceStub
    target: str

    async def append(self, *rows: ChangeRow) -> int:
        """Commit rows in one transaction (in a thread: the server shares this event loop)."""
        def write() -> int:
            with self.store.batch() as batch:
                return batch.append_changes(list(rows))
        return await asyncio.to_thread(write)

    def subscribe(self, start=Start.START_EARLIEST, after=0, *, kinds=(), paths=(), sources=(),
                  heartbeat=1, include_profile=False, per_message=0, stub=None):
        request = Request(
            start=start, after_sequence=after, heartbeat_seconds=heartbeat,
            include_profile=include_profile, max_changes_per_message=per_message,
            filter=profile_service_pb2.ChangeFilter(
                kinds=list(kinds), field_paths=list(paths), sources=list(sources)
            ),
        )
        return (stub or self.stub).SubscribeProfileChanges(request)


@pytest.fixture
def store_dsn(new_database):
    dsn = new_database("subs")
    migrate.upgrade(dsn)
    return dsn


@contextlib.asynccontextmanager
async def serving(dsn: str, listen_dsn: str | None = None, max_message_bytes: int = 4 << 20,
                  on_read: Callable[[list[Any]], None] | None = None,
                  **config: Any) -> AsyncIterator[Harness]:
    config.setdefault("poll_interval_s", 60.0)
    store = ProfileStore.connect(dsn)
    feed = ChangeFeed(store, listen_dsn or dsn, subscribe_response, ChangeFeedConfig(**config),
                      on_read=on_read)
    await feed.start()
    # The service's own servicer, delegating to the subscriptions; no auth interceptor here, only
    # the one that sends the feed's encoded messages as they are.
    subscriptions = ProfileSubscriptions(feed, store, max_message_bytes)
    service = ProfileService(store, TYPES, RULES, subscriptions=subscriptions)
    server = grpc.aio.server(
        interceptors=[EncodedStreamsInterceptor()],
        options=[("grpc.max_send_message_length", max_message_bytes)],
    )
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Harness(store, feed, profile_service_pb2_grpc.ProfileServiceStub(channel), target)
    finally:
        await channel.close()
        await feed.close()
        await server.stop(None)
        service.close()
        store.close()


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), timeout=120))


def change(profile: str = "p1", kind: str = "UPDATED", paths: Sequence[str] = ("loyalty.tier",),
           source: str = "crm", related: dict[str, Any] | None = None, pad: str = "") -> ChangeRow:
    cause = ({"steward": "ops@example.com", "override": "force_link", "reason": "same person"}
             if source == "steward" else
             {"source": source, "table": "public.t", "key": {"id": 1}, "op": "u", "lsn": 42,
              "commit_time_us": COMMIT_US})
    return ChangeRow(profile, kind, {p: {"old": None, "new": f"v{pad}"} for p in paths},
                     related or {}, [cause])


def changes_in(response) -> list[profile_pb2.ProfileChange]:
    """The changes one message carries: one (``change``), several (``changes``) or none."""
    if response.HasField("changes"):
        assert response.changes.changes, "a batch message without changes"
        return list(response.changes.changes)
    return [response.change] if response.HasField("change") else []


async def read_changes(call, count: int, timeout: float = 15.0, sizes: list[int] | None = None
                       ) -> list[profile_pb2.ProfileChange]:
    """The next ``count`` changes of a stream (heartbeats skipped); ``sizes`` gets each message's
    number of changes."""
    changes: list[profile_pb2.ProfileChange] = []
    async with asyncio.timeout(timeout):
        while len(changes) < count:
            response = await call.read()
            assert response is not grpc.aio.EOF, f"stream ended after {len(changes)} changes"
            carried = changes_in(response)
            changes += carried
            if carried and sizes is not None:
                sizes.append(len(carried))
    return changes


async def read_until_head(call, head: int, timeout: float = 20.0) -> list[int]:
    """Sequences of every change until a heartbeat says everything up to ``head`` was sent."""
    sequences: list[int] = []
    async with asyncio.timeout(timeout):
        while True:
            response = await call.read()
            assert response is not grpc.aio.EOF
            if response.HasField("heartbeat"):
                if response.heartbeat.head_sequence >= head:
                    return sequences
            else:
                sequences += [c.sequence for c in changes_in(response)]


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(15):
            while (await call.read()) is not grpc.aio.EOF:
                pass
    return raised.value


# --- realistic changes through the applier --------------------------------------------------------

TYPES = {
    "crm_id": IdentifierType("crm_id", max_per_profile=1),
    "loyalty_id": IdentifierType("loyalty_id", max_per_profile=2),  # a member may have two cards
}
RULES = RuleSet(default=Rule("last_writer_wins", ("crm", "loyalty")),
                patterns=(("loyalty.*", Rule("source_priority", ("loyalty",))),))


def crm(key: int, position: int, name: str) -> SourceRecord:
    return SourceRecord(
        key=RecordKey.of("crm", "public.customers", {"id": key}),
        fields={"person.given_name": name, "contact.email": f"{name.lower()}@example.com"},
        identifiers=frozenset({Identifier("crm_id", str(key))}),
        version=position, commit_time_us=COMMIT_US + position, position=position,
    )


def member(key: str, position: int, crm_id: int | None, tier: str) -> SourceRecord:
    identifiers = {Identifier("loyalty_id", key)}
    if crm_id is not None:
        identifiers.add(Identifier("crm_id", str(crm_id)))
    return SourceRecord(
        key=RecordKey.of("loyalty", "public.members", {"member_id": key}),
        fields={"loyalty.tier": tier}, identifiers=frozenset(identifiers),
        version=position, commit_time_us=COMMIT_US + position, position=position,
    )


async def apply(store: ProfileStore, *records: SourceRecord) -> None:
    def write() -> None:
        with store.batch() as batch:
            ProfileApplier(TYPES, RULES).apply(batch, [
                IncomingRecord(r, {"source": r.key.source, "table": r.key.table,
                                   "key": r.key.key, "lsn": r.position,
                                   "commit_time_us": r.commit_time_us})
                for r in records
            ])
    await asyncio.to_thread(write)


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_message", [0, 10], ids=["one-per-message", "batched"])
def test_catch_up_from_the_log_then_live_changes_with_profiles(store_dsn, per_message):
    async def scenario():
        async with serving(store_dsn) as h:
            await apply(h.store, crm(1, 10, "Anne"))
            await apply(h.store, member("L1", 11, crm_id=1, tier="gold"))
            call = h.subscribe(Start.START_EARLIEST, include_profile=True, per_message=per_message)
            created, updated = await read_changes(call, 2)
            assert (created.sequence, created.kind) == (1, K.CHANGE_KIND_CREATED)
            assert {c.path for c in created.changes} == {"person.given_name", "contact.email"}
            anne = created.profile_id
            assert created.profile.profile_id == anne
            assert created.profile.person.given_name == "Anne"
            assert (updated.sequence, updated.kind) == (2, K.CHANGE_KIND_UPDATED)
            [tier] = updated.changes
            assert (tier.path, tier.old_value.WhichOneof("kind"), tier.new_value.string_value) == (
                "loyalty.tier", "null_value", "gold")
            [cause] = updated.causes
            assert (cause.source, cause.table, cause.record_key, cause.lsn) == (
                "loyalty", "public.members", '{"member_id":"L1"}', 11)
            assert cause.committed_at.ToMicroseconds() == COMMIT_US + 11
            assert updated.profile.loyalty.tier == "gold"

            # Live: a second person appears, then turns out to be the first one.
            await apply(h.store, member("L2", 12, crm_id=None, tier="silver"))
            [other] = await read_changes(call, 1, timeout=5)
            assert (other.sequence, other.kind) == (3, K.CHANGE_KIND_CREATED)
            await apply(h.store, member("L2", 13, crm_id=1, tier="silver"))
            merged = (await read_changes(call, 1, timeout=5))[0]
            assert (merged.kind, merged.profile_id) == (K.CHANGE_KIND_MERGED, anne)
            assert merged.related_profile_id == other.profile_id
            assert merged.profile.record_count == 3
            call.cancel()
    run(scenario)


def test_each_change_of_a_batch_carries_its_own_profile_and_a_deletion_none(store_dsn):
    # One message holds changes of several people, one of them deleted since: each change gets
    # its own profile as it is now (read together for the message), the deleted one none.
    async def scenario():
        async with serving(store_dsn) as h:
            await apply(h.store, crm(1, 10, "Anne"), crm(2, 11, "Bob"), crm(3, 12, "Cleo"))
            gone = SourceRecord(
                key=RecordKey.of("crm", "public.customers", {"id": 2}), position=13, deleted=True,
                commit_time_us=COMMIT_US + 13,
            )
            await apply(h.store, gone)
            sizes: list[int] = []
            call = h.subscribe(Start.START_EARLIEST, include_profile=True, per_message=10)
            changes = await read_changes(call, 4, sizes=sizes)
            call.cancel()
            return changes, sizes

    changes, sizes = run(scenario)
    assert sizes[0] > 1  # several changes, and so several profiles, in one message
    created = [c for c in changes if c.kind == K.CHANGE_KIND_CREATED]
    names = {c.profile_id: c.profile.person.given_name for c in created if c.HasField("profile")}
    [deleted] = [c for c in changes if c.kind == K.CHANGE_KIND_DELETED]
    assert sorted(names.values()) == ["Anne", "Cleo"]  # Bob's profile is gone: none carried
    assert all(c.profile.profile_id == c.profile_id for c in created if c.HasField("profile"))
    assert not deleted.HasField("profile")
    assert deleted.profile_id not in names


def test_a_resumed_subscriber_sees_every_later_change_exactly_once_in_order(store_dsn):
    total = 400

    async def scenario():
        async with serving(store_dsn, buffer_size=16, read_batch=50) as h:
            async def writer():
                for i in range(0, total, 8):
                    await h.append(*[change(f"p{j}") for j in range(i, i + 8)])
                    await asyncio.sleep(0.005)

            writing = asyncio.create_task(writer())
            received: list[int] = []
            rng = random.Random(7)
            while not received or received[-1] < total:
                if received:
                    call = h.subscribe(Start.START_AFTER_SEQUENCE, after=received[-1])
                else:
                    call = h.subscribe(Start.START_EARLIEST)
                batch = await read_changes(call, min(rng.randint(1, 60), total - len(received)))
                received += [c.sequence for c in batch]
                call.cancel()  # a dropped connection, mid-stream
            await writing
            assert received == list(range(1, total + 1))
    run(scenario)


FILTER_CHANGES = [
    change("p1", "CREATED", ["person.given_name"], "crm"),                    # 1
    change("p1", "UPDATED", ["loyalty.tier"], "loyalty"),                     # 2
    change("p1", "UPDATED", ["consent.email_marketing.granted"], "crm"),      # 3
    change("p1", "UPDATED", ["contact.email"], "crm"),                        # 4
    change("p1", "MERGED", [], "steward", {"merged": "p2"}),                  # 5
    change("p1", "UPDATED", ["traits.vip"], "loyalty"),                       # 6
    change("p1", "SPLIT", [], "loyalty", {"split_into": "p3"}),               # 7
    change("p1", "DELETED", [], "crm"),                                       # 8
    change("p4", "UPDATED", ["consent.push.updated_at", "loyalty.points_balance"], "loyalty"),  # 9
]
FILTER_CASES: list[tuple[dict[str, Any], list[int]]] = [
    ({}, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ({"kinds": [K.CHANGE_KIND_UPDATED]}, [2, 3, 4, 6, 9]),
    ({"kinds": [K.CHANGE_KIND_MERGED, K.CHANGE_KIND_SPLIT]}, [5, 7]),
    # Whole-profile kinds (CREATED, MERGED, SPLIT, DELETED) match any path filter.
    ({"paths": ["loyalty.tier"]}, [1, 2, 5, 7, 8]),
    ({"paths": ["consent.*"]}, [1, 3, 5, 7, 8, 9]),
    ({"paths": ["consent.*.granted"]}, [1, 3, 5, 7, 8]),
    ({"paths": ["traits"]}, [1, 5, 6, 7, 8]),
    ({"paths": ["contact.email", "traits.vip"]}, [1, 4, 5, 6, 7, 8]),
    ({"sources": ["steward"]}, [5]),
    ({"sources": ["loyalty"]}, [2, 6, 7, 9]),
    ({"kinds": [K.CHANGE_KIND_UPDATED], "paths": ["loyalty.*"], "sources": ["loyalty"]}, [2, 9]),
]


def test_filters_by_kind_path_and_source_live_and_in_catch_up(store_dsn):
    async def scenario():
        async with serving(store_dsn) as h:
            live = [h.subscribe(Start.START_LATEST, **f) for f, _ in FILTER_CASES]
            for call in live:  # the first heartbeat proves the subscription is established
                assert await read_until_head(call, 0) == []
            for row in FILTER_CHANGES:
                await h.append(row)
            replayed = [h.subscribe(Start.START_EARLIEST, **f) for f, _ in FILTER_CASES]
            for calls in (live, replayed):
                for call, (filter_, expected) in zip(calls, FILTER_CASES, strict=True):
                    assert await read_until_head(call, 9) == expected, filter_
                    call.cancel()
    run(scenario)


def _oracle(kinds: set[str], patterns: list[str], sources: set[str]) -> Callable[[ChangeRow], bool]:
    """An independent statement of the filter rules, for comparison."""
    regexes = [re.compile(r"\.".join("[^.]+" if s == "*" else re.escape(s)
                                     for s in p.split(".")) + r"(\..+)?") for p in patterns]

    def passes(row: ChangeRow) -> bool:
        if kinds and row.kind not in kinds:
            return False
        row_sources = {"steward" if "steward" in c else c["source"] for c in row.cause}
        if sources and not sources & row_sources:
            return False
        if patterns and row.kind == "UPDATED":
            return any(r.fullmatch(path) for r in regexes for path in row.changes)
        return True
    return passes


def test_a_hundred_concurrent_subscribers_each_receive_exactly_their_changes(store_dsn):
    rng = random.Random(11)
    kinds = ["CREATED", "UPDATED", "MERGED", "SPLIT", "DELETED"]
    paths = ["loyalty.tier", "loyalty.points_balance", "person.given_name", "contact.email",
             "consent.push.granted", "consent.sms_marketing.granted", "traits.vip"]
    patterns = ["loyalty.tier", "loyalty.*", "consent.*", "consent.*.granted", "person",
                "traits.vip", "*.email", "contact.email"]
    sources = ["crm", "loyalty", "steward"]
    rows = [
        change(f"p{rng.randint(1, 20)}",
               kind := rng.choices(kinds, weights=[1, 6, 1, 1, 1])[0],
               rng.sample(paths, rng.randint(1, 3)) if kind == "UPDATED" else [],
               rng.choice(sources))
        for _ in range(300)
    ]
    filters = [
        (set(rng.sample(kinds, rng.randint(0, 2))), rng.sample(patterns, rng.randint(0, 2)),
         set(rng.sample(sources, rng.randint(0, 1))))
        for _ in range(100)
    ]
    code = {name: K.Value(f"CHANGE_KIND_{name}") for name in kinds}

    async def scenario():
        async with serving(store_dsn) as h:
            await h.append(*rows[:100])  # a backlog, so half the subscribers start by catching up
            # Odd ones replay the backlog first; even ones resume after it and are live at once.
            # Every third one takes up to 7 changes per message.
            calls = [
                h.subscribe(Start.START_EARLIEST if i % 2 else Start.START_AFTER_SEQUENCE,
                            after=0 if i % 2 else 100,
                            kinds=[code[k] for k in sorted(k_)], paths=p_, sources=sorted(s_),
                            per_message=7 if i % 3 == 0 else 0)
                for i, (k_, p_, s_) in enumerate(filters)
            ]
            for i in range(100, 300, 10):
                await h.append(*rows[i:i + 10])
            results = await asyncio.gather(*(read_until_head(call, 300) for call in calls))
            for i, ((k_, p_, s_), got) in enumerate(zip(filters, results, strict=True)):
                first = 0 if i % 2 else 100
                passes = _oracle(k_, p_, s_)
                expected = [n for n, row in enumerate(rows, 1) if n > first and passes(row)]
                assert got == expected, (i, k_, p_, s_)
            for call in calls:
                call.cancel()
    run(scenario)


def test_a_subscriber_that_never_reads_delays_nobody_and_later_gets_everything(store_dsn):
    total = 3000

    async def scenario():
        async with serving(store_dsn, buffer_size=64, read_batch=50) as h:
            # Its own connection, without BDP probing (which would grow the window to absorb
            # more), so the server really meets a full flow-control window.
            slow_channel = grpc.aio.insecure_channel(h.target, options=[("grpc.http2.bdp_probe", 0)])
            slow = h.subscribe(Start.START_AFTER_SEQUENCE,
                               stub=profile_service_pb2_grpc.ProfileServiceStub(slow_channel))
            fast = h.subscribe(Start.START_AFTER_SEQUENCE)
            async with asyncio.timeout(10):
                while h.feed.stats().live < 2:  # both receive from the pump before any write
                    await asyncio.sleep(0.01)

            async def fast_reader() -> tuple[list[int], float]:
                changes = await read_changes(fast, total, timeout=60)
                return [c.sequence for c in changes], time.monotonic()

            reading = asyncio.create_task(fast_reader())
            for i in range(0, total, 25):
                await h.append(*[change(f"p{j}", pad="x" * 200) for j in range(i, i + 25)])
            last_commit = time.monotonic()
            fast_sequences, fast_done = await reading
            assert fast_sequences == list(range(1, total + 1))
            assert fast_done - last_commit < 10.0  # not held back by the slow one (which never reads)

            stats = h.feed.stats()
            assert stats.fallbacks >= 1
            assert (stats.subscriptions, stats.live) == (2, 1)  # the slow one reads the log
            assert stats.buffered <= 64  # its memory stays bounded

            slow_changes = await read_changes(slow, total, timeout=60)
            assert [c.sequence for c in slow_changes] == list(range(1, total + 1))
            for call in (slow, fast):
                call.cancel()
            await slow_channel.close()
    run(scenario)


def test_batched_messages_carry_each_change_once_in_order_from_the_log_and_live(store_dsn):
    async def scenario():
        async with serving(store_dsn, read_batch=100) as h:
            await h.append(*[change(f"p{i}") for i in range(250)])   # a backlog to catch up on
            batched = h.subscribe(Start.START_EARLIEST, per_message=40)
            single = h.subscribe(Start.START_EARLIEST)
            sizes: list[int] = []
            backlog = await read_changes(batched, 250, sizes=sizes)
            assert [c.sequence for c in backlog] == list(range(1, 251))
            assert max(sizes) == 40 and len(sizes) < 250 / 2
            # Live: 200 changes committed at once wait for the stream together.
            await h.append(*[change(f"q{i}") for i in range(200)])
            live_sizes: list[int] = []
            live = await read_changes(batched, 200, sizes=live_sizes)
            assert [c.sequence for c in live] == list(range(251, 451))
            assert max(live_sizes) <= 40 and len(live_sizes) < 200 / 2
            assert {c.profile_id for c in live} == {f"q{i}" for i in range(200)}
            # A stream that did not ask for batches still gets one change per message.
            one_each: list[int] = []
            await read_changes(single, 450, sizes=one_each)
            assert set(one_each) == {1}
            for call in (batched, single):
                call.cancel()
    run(scenario)


def test_batches_stay_under_the_servers_message_limit(store_dsn):
    async def scenario():
        async with serving(store_dsn, max_message_bytes=4096) as h:
            await h.append(*[change(f"p{i}", pad="x" * 300) for i in range(60)])  # ~20 KB
            call = h.subscribe(Start.START_EARLIEST, per_message=1_000)
            sizes: list[int] = []
            changes = await read_changes(call, 60, sizes=sizes)
            assert [c.sequence for c in changes] == list(range(1, 61))
            assert len(sizes) > 1 and max(sizes) > 1  # several full messages, none refused
            call.cancel()
    run(scenario)


def test_heartbeats_while_idle_carry_the_head(store_dsn):
    async def scenario():
        async with serving(store_dsn) as h:
            await h.append(change(), change())
            call = h.subscribe(Start.START_LATEST, kinds=[K.CHANGE_KIND_DELETED], heartbeat=1)
            started = time.monotonic()
            first = await call.read()
            assert first.heartbeat.head_sequence == 2
            assert time.monotonic() - started >= 0.9  # only after the idle interval
            assert first.heartbeat.at.seconds > 0
            await h.append(change(), change(), change())  # none passes the filter
            async with asyncio.timeout(10):
                while (response := await call.read()).heartbeat.head_sequence < 5:
                    assert not response.HasField("change")
            call.cancel()
    run(scenario)


def test_a_start_older_than_retention_is_out_of_range_with_how_to_resync(store_dsn):
    async def scenario():
        async with serving(store_dsn) as h:
            await h.append(*[change() for _ in range(10)])
            # Retention: rows up to 5 are gone.
            with psycopg.connect(store_dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM up_change_log WHERE sequence <= 5")

            error = await status_of(h.subscribe(Start.START_AFTER_SEQUENCE, after=3))
            assert error.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "oldest retained change is 6" in error.details()
            assert "START_EARLIEST" in error.details() and "BatchGetProfiles" in error.details()

            error = await status_of(h.subscribe(Start.START_AFTER_SEQUENCE, after=11))
            assert error.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "beyond the change log's head (10)" in error.details()

            for call in (h.subscribe(Start.START_AFTER_SEQUENCE, after=5),
                         h.subscribe(Start.START_EARLIEST)):
                assert await read_until_head(call, 10) == [6, 7, 8, 9, 10]
                call.cancel()
    run(scenario)


def test_earliest_after_retention_is_in_range_even_when_it_goes_live_before_the_feed_reads(
    store_dsn,
):
    # The race a loaded machine hit: an EARLIEST start resolves from the store (after 5, the
    # oldest retained being 6) and goes live while the pump's head still trails at 0; the pump
    # then meets the hole 1..5 and must not rewind that subscription to its own head.
    async def scenario():
        # No notifications and no poll within the test: the pump reads only when woken here.
        async with serving(store_dsn, listen_dsn="host=127.0.0.1 port=1 connect_timeout=1",
                           poll_interval_s=60.0) as h:
            await h.append(*[change() for _ in range(10)])
            with psycopg.connect(store_dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM up_change_log WHERE sequence <= 5")
            assert h.feed.head == 0
            subscription = await h.feed.subscribe(StartAt.earliest(), ChangeFilter())
            entries = subscription.batches(1)
            first = asyncio.ensure_future(anext(entries))
            async with asyncio.timeout(10):
                while not subscription.live:
                    await asyncio.sleep(0)
            h.feed._wake.set()  # what the notification of the ten commits would have done
            received = [(await first)[0].sequence]
            received += [(await anext(entries))[0].sequence for _ in range(4)]
            assert received == [6, 7, 8, 9, 10]
            assert h.feed.head == 10
            subscription.close()
    run(scenario)


def test_every_change_is_handed_to_on_read_before_a_subscriber_gets_it(store_dsn):
    # What the read cache relies on to drop a profile before its subscriber can read it again:
    # both the subscription's own catch-up reads and the pump's live reads go through on_read.
    seen: set[int] = set()

    def on_read(changes: list[Any]) -> None:
        seen.update(c.sequence for c in changes)

    async def next_changes(entries: Any) -> list[int]:
        while isinstance(batch := await anext(entries), Heartbeat):
            pass
        received = [e.sequence for e in batch]
        # Checked on receipt: handed to on_read before, not merely by the time of the assert.
        assert set(received) <= seen, f"{received} reached the subscriber before on_read"
        return received

    async def scenario():
        # No notifications and no poll: the pump reads only when woken here.
        async with serving(store_dsn, listen_dsn="host=127.0.0.1 port=1 connect_timeout=1",
                           on_read=on_read) as h:
            await h.append(*[change() for _ in range(3)])
            h.feed._wake.set()
            async with asyncio.timeout(10):
                while h.feed.head < 3:  # published: a new subscriber has to read the log
                    await asyncio.sleep(0.01)
            seen.clear()
            subscription = await h.feed.subscribe(StartAt.earliest(), ChangeFilter())
            entries = subscription.batches(10)
            assert await next_changes(entries) == [1, 2, 3]
            assert seen == {1, 2, 3}  # the subscription's own catch-up read
            live = asyncio.ensure_future(next_changes(entries))
            async with asyncio.timeout(10):
                while not subscription.live:
                    await asyncio.sleep(0.01)
            seen.clear()
            await h.append(change(), change())
            h.feed._wake.set()  # what the notification would have done
            assert await live == [4, 5]
            assert seen == {4, 5}  # the pump's read
            subscription.close()
    run(scenario)


def test_retention_overtaking_a_catching_up_subscriber_ends_it_out_of_range(store_dsn):
    async def scenario():
        async with serving(store_dsn, read_batch=5) as h:
            await h.append(*[change() for _ in range(20)])
            async with asyncio.timeout(5):
                while h.feed.head < 20:  # published: the subscriber has to read the log
                    await asyncio.sleep(0.01)
            subscription = await h.feed.subscribe(StartAt.earliest(), ChangeFilter())
            entries = subscription.batches(5)
            assert [e.sequence for e in await anext(entries)] == [1, 2, 3, 4, 5]
            with psycopg.connect(store_dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM up_change_log WHERE sequence <= 10")
            with pytest.raises(CursorOutOfRange, match="oldest retained change is 11"):
                await anext(entries)
            assert h.feed.stats().subscriptions == 0
    run(scenario)


def test_latest_starts_after_the_head_at_subscribe_time(store_dsn):
    async def scenario():
        async with serving(store_dsn) as h:
            await h.append(*[change() for _ in range(5)])
            call = h.subscribe(Start.START_LATEST)
            assert await read_until_head(call, 5) == []
            await h.append(*[change() for _ in range(3)])
            assert await read_until_head(call, 8) == [6, 7, 8]
            call.cancel()
    run(scenario)


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"start": Start.START_UNSPECIFIED}, "start"),
    ({"start": Start.START_AFTER_SEQUENCE, "after_sequence": -1}, "after_sequence"),
    ({"start": Start.START_LATEST, "after_sequence": 4}, "after_sequence"),
    ({"heartbeat_seconds": -1}, "heartbeat_seconds"),
    ({"max_changes_per_message": -1}, "max_changes_per_message"),
    ({"max_changes_per_message": 1_001}, "max_changes_per_message"),
    ({"filter": {"kinds": [K.CHANGE_KIND_UPDATED, 0]}}, "filter.kinds[1]"),
    ({"filter": {"kinds": [42]}}, "filter.kinds[0]"),
    ({"filter": {"field_paths": ["loyalty..tier"]}}, "filter.field_paths[0]"),
    ({"filter": {"field_paths": ["consent.*", "loyalty.ti*"]}}, "filter.field_paths[1]"),
    ({"filter": {"field_paths": ["loyalty.teir"]}}, "did you mean loyalty.tier"),
    ({"filter": {"sources": [""]}}, "filter.sources[0]"),
])
def test_invalid_requests_name_the_field(store_dsn, request_fields, field):
    async def scenario():
        async with serving(store_dsn) as h:
            fields = {"start": Start.START_EARLIEST, **request_fields}
            filter_ = profile_service_pb2.ChangeFilter(**fields.pop("filter", {}))
            call = h.stub.SubscribeProfileChanges(Request(filter=filter_, **fields))
            error = await status_of(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in error.details()
    run(scenario)


def test_cancelled_subscriptions_leave_nothing_behind_and_shutdown_ends_streams(store_dsn):
    async def scenario():
        async with serving(store_dsn, buffer_size=8, read_batch=20) as h:
            await h.append(*[change() for _ in range(200)])
            tasks_before = len(asyncio.all_tasks())
            calls = [h.subscribe(Start.START_EARLIEST if i % 2 else Start.START_LATEST)
                     for i in range(20)]
            for call in calls[1::2]:
                await read_changes(call, 1)
            for call in calls[::2]:
                await read_until_head(call, 200)
            await h.append(*[change() for _ in range(50)])  # buffers fill, some fall back
            assert h.feed.stats().subscriptions == 20
            for call in calls:
                call.cancel()
            async with asyncio.timeout(10):
                while h.feed.stats().subscriptions or len(asyncio.all_tasks()) > tasks_before:
                    await asyncio.sleep(0.05)
            assert h.feed.stats().buffered == 0

            survivor = h.subscribe(Start.START_LATEST)
            await read_until_head(survivor, 250)
            await h.feed.close()
            error = await status_of(survivor)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "START_AFTER_SEQUENCE" in error.details()
    run(scenario)


def test_the_listener_reconnects_after_losing_its_connection(store_dsn):
    async def scenario():
        listener = ListenerConfig(reconnect_initial_s=0.1)
        async with serving(store_dsn, listener=listener) as h:
            call = h.subscribe(Start.START_AFTER_SEQUENCE)
            await h.append(change())
            assert [c.sequence for c in await read_changes(call, 1, timeout=5)] == [1]
            with psycopg.connect(store_dsn, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                ).fetchall()
            assert killed == [(True,)]

            def listening() -> bool:
                with psycopg.connect(store_dsn, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                    ).fetchone()
                return bool(row and row[0])

            async with asyncio.timeout(30):
                while not await asyncio.to_thread(listening):
                    await asyncio.sleep(0.1)
            await h.append(change())
            # Delivered well within the 60 s poll interval: by the reconnected listener.
            assert [c.sequence for c in await read_changes(call, 1, timeout=5)] == [2]
            call.cancel()
    run(scenario)


def test_without_notifications_the_poll_still_delivers(store_dsn):
    async def scenario():
        # The listener cannot connect at all: only polling moves the feed.
        async with serving(store_dsn, listen_dsn="host=127.0.0.1 port=1 connect_timeout=1",
                           poll_interval_s=0.2) as h:
            call = h.subscribe(Start.START_AFTER_SEQUENCE)
            await h.append(change(), change())
            assert [c.sequence for c in await read_changes(call, 2, timeout=5)] == [1, 2]
            call.cancel()
    run(scenario)
