"""The read cache over a real gRPC server on a real PostgreSQL store: what a reader sees after writes.

Every test first makes the server answer from its cache, then writes through the engine's applier
(or a steward call on another server), as another process would, and checks that the next reads
see the write once the notification has arrived, including writes that leave no change-log entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2

from unified_profile.server.rpc.profile_cache import ProfileCache
from unified_profile.server.rpc.service import ProfileService
from unified_profile.server.store.profile_store import ProfileStore
from unified_profile.server.store.profile_writes import PROFILE_WRITES_CHANNEL
from unified_profile.v1 import profile_pb2
from unified_profile.v1 import profile_service_pb2 as pb

from .rpc_support import (
    READER,
    RULES,
    STEWARD,
    TYPES,
    ServerThread,
    apply,
    bearer,
    crm,
    grpc_config,
    member,
    rpc_error,
    stub_for,
)

pytestmark = pytest.mark.integration

NOTICE_S = 10.0  # generous: a notification arrives within milliseconds


class CachedServer:
    """A server with a read cache, and a stub calling it."""

    def __init__(self, store: ProfileStore) -> None:
        self.cache = ProfileCache(1_000, 600.0)
        self.thread = ServerThread(
            ProfileService(store, TYPES, RULES, read_cache=self.cache), grpc_config()
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.thread.port}")
        self.stub = stub_for(self.channel)
        wait_for(lambda: self.cache.serving, "the cache's listener to listen")

    def get(self, profile_id: str) -> pb.GetProfileResponse:
        return self.stub.GetProfile(
            pb.GetProfileRequest(profile_id=profile_id), metadata=bearer(READER)
        )

    def lookup(self, type_: str, value: str) -> pb.LookupProfileResponse:
        return self.stub.LookupProfile(
            pb.LookupProfileRequest(identifier_type=type_, value=value), metadata=bearer(READER)
        )

    def batch_get(
        self, refs: list[pb.ProfileRef], mask: list[str] | None = None
    ) -> pb.BatchGetProfilesResponse:
        request = pb.BatchGetProfilesRequest(refs=refs)
        if mask is not None:
            request.field_mask.CopyFrom(field_mask_pb2.FieldMask(paths=mask))
        return self.stub.BatchGetProfiles(request, metadata=bearer(READER))

    def get_twice_from_cache(self, profile_id: str) -> pb.GetProfileResponse:
        """Read until an answer comes from the cache; that answer."""
        self.get(profile_id)
        hits = self.cache.stats.hits
        answer = self.get(profile_id)
        assert self.cache.stats.hits == hits + 1, "the second read was not served from the cache"
        return answer

    def close(self) -> None:
        self.channel.close()
        self.thread.stop()


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + NOTICE_S
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return result


@pytest.fixture
def server(store) -> Iterator[CachedServer]:
    server = CachedServer(store)
    yield server
    server.close()


def test_a_write_that_changes_no_value_still_replaces_the_cached_profile(store, server):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    before = server.get_twice_from_cache(anne)
    assert before.profile.provenance["person.given_name"].version == 10_000
    # The same values from a newer version of the row: no change-log entry, new provenance.
    assert apply(store, crm(1, 20, email="anne@example.com")) == []
    wait_for(
        lambda: server.get(anne).profile.provenance["person.given_name"].version == 20_000,
        "the newer provenance",
    )


def test_a_cached_profile_shows_a_new_value_once_written(store, server):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    assert server.get_twice_from_cache(anne).profile.person.given_name == "Anne"
    apply(store, crm(1, 20, email="anne@example.com", name="Ann"))
    wait_for(lambda: server.get(anne).profile.person.given_name == "Ann", "the new name")


def by_email(value: str) -> pb.ProfileRef:
    return pb.ProfileRef(identifier=profile_pb2.Identifier(type="email", value=value))


def test_a_batch_takes_what_the_cache_holds_reads_the_rest_and_sees_writes(store, server):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    [(bob, _, _)] = apply(store, crm(2, 20, email="bob@example.com", name="Bob"))
    server.get_twice_from_cache(anne)
    server.lookup("email", "bob@example.com")
    refs = [
        pb.ProfileRef(profile_id=anne),
        by_email("BOB@example.com"),
        pb.ProfileRef(profile_id="p_missing"),
        pb.ProfileRef(profile_id=bob),
        by_email("anne@example.com"),
    ]
    stats = server.cache.stats
    hits, misses = stats.hits, stats.misses
    first = server.batch_get(refs)
    assert (stats.hits - hits, stats.misses - misses) == (2, 3)
    assert [r.found for r in first.results] == [True, True, False, True, True]
    assert [r.profile.profile_id for r in first.results] == [anne, bob, "", bob, anne]
    assert [r.ref for r in first.results] == refs
    # The store's answers were kept: now only the unknown id misses, and a mask cuts the cache's.
    hits, misses = stats.hits, stats.misses
    masked = server.batch_get(refs, mask=["person"])
    assert (stats.hits - hits, stats.misses - misses) == (4, 1)
    assert [r.profile.person.given_name for r in masked.results] == [
        "Anne", "Bob", "", "Bob", "Anne"
    ]
    assert not masked.results[0].profile.HasField("contact")
    # What the cache answered is what the store answered.
    assert first.results[0].profile == first.results[4].profile == server.get(anne).profile
    assert first.results[1].profile == first.results[3].profile == server.get(bob).profile
    apply(store, crm(1, 30, email="anne@example.com", name="Ann"))
    wait_for(
        lambda: [r.profile.person.given_name for r in server.batch_get(refs).results]
        == ["Ann", "Bob", "", "Bob", "Ann"],
        "the batch to show the new name by id and by email",
    )


def test_an_id_merged_away_resolves_to_the_survivor_once_merged(store, server):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    [(annie, _, _)] = apply(store, member("L1", 11, crm_id=None))
    assert not server.get_twice_from_cache(annie).resolved_from_alias
    apply(store, member("L1", 12, crm_id=1))
    merged = wait_for(
        lambda: (answer := server.get(annie)).resolved_from_alias and answer,
        "the merge to be seen",
    )
    assert merged.profile.profile_id == anne
    assert merged.profile.loyalty.tier == "gold"


def test_a_cached_lookup_turns_ambiguous_when_another_person_gets_the_value(store, server):
    [(john, _, _)] = apply(store, crm(4, 10, email="family@example.com", name="John"))
    server.lookup("email", "family@example.com")
    hits = server.cache.stats.hits
    assert server.lookup("email", "family@example.com").profile.profile_id == john
    assert server.cache.stats.hits == hits + 1
    # Mary shares the household email but is another CRM customer: John's profile is not written.
    apply(store, crm(5, 11, email="family@example.com", name="Mary"))

    def refused() -> bool:
        try:
            server.lookup("email", "family@example.com")
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.FAILED_PRECONDITION
        return False

    wait_for(refused, "the lookup to be refused as ambiguous")


def test_a_profile_forgotten_through_another_server_is_not_found_here(store, server):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    server.get_twice_from_cache(anne)
    server.lookup("email", "anne@example.com")
    other = CachedServer(store)
    try:
        other.get_twice_from_cache(anne)
        other.stub.ForgetProfile(
            pb.ForgetProfileRequest(profile_id=anne, reason="erasure request"),
            metadata=bearer(STEWARD),
        )
        # The server that answered the steward call sees it at once.
        assert rpc_error(lambda: other.get(anne)).code() == grpc.StatusCode.NOT_FOUND
    finally:
        other.close()

    def not_found(call: Callable[[], Any]) -> bool:
        try:
            call()
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False

    wait_for(lambda: not_found(lambda: server.get(anne)), "GetProfile to be NOT_FOUND")
    wait_for(
        lambda: not_found(lambda: server.lookup("email", "anne@example.com")),
        "LookupProfile to be NOT_FOUND",
    )


def test_writes_made_while_the_listener_was_disconnected_are_never_served_stale(store, server):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    assert server.get_twice_from_cache(anne).profile.person.given_name == "Anne"
    resets = server.cache.stats.resets
    with psycopg.connect(store.dsn, autocommit=True) as admin:
        [(terminated,)] = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (f"unified-profile listener {PROFILE_WRITES_CHANNEL}",),
        ).fetchall()
    assert terminated == 1
    # Written before the listener reconnects (it waits at least 0.4 s): its notification is lost.
    apply(store, crm(1, 20, email="anne@example.com", name="Ann"))
    wait_for(lambda: server.cache.stats.resets >= resets + 2 and server.cache.serving,
             "the listener to notice the loss and listen again")
    assert server.get(anne).profile.person.given_name == "Ann"
