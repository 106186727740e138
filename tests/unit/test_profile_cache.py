"""Unit tests for the read cache (rpc/profile_cache.py) and its notifications (store/profile_writes.py)."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import generate_latest

from unified_profile.server import metrics
from unified_profile.server.engine.records import Identifier
from unified_profile.server.rpc.profile_cache import CachedProfile, ProfileCache
from unified_profile.server.store import profile_writes
from unified_profile.server.store.profile_writes import ProfileWrites
from unified_profile.server.store.rows import LoggedChange

ANNE = CachedProfile("p_anne", b"anne's profile")
EMAIL = Identifier("email", "anne@example.com")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serving_cache(max_profiles: int = 10, ttl_s: float = 60.0, clock: Clock | None = None):
    cache = ProfileCache(max_profiles, ttl_s, clock or Clock())
    cache.listening()
    return cache


def wrote(*profile_ids: str, identifiers: tuple[Identifier, ...] = ()) -> ProfileWrites:
    return ProfileWrites(
        frozenset(profile_ids),
        frozenset(profile_writes.identifier_digest(i) for i in identifiers),
    )


def test_nothing_is_cached_or_served_before_the_listener_listens() -> None:
    cache = ProfileCache(10, 60.0)
    assert cache.epoch() is None
    cache.put("p_anne", ANNE, 0)
    cache.listening()
    assert cache.get("p_anne") is None


def test_an_answer_is_served_until_its_profile_is_written() -> None:
    cache = serving_cache()
    cache.put("p_anne", ANNE, cache.epoch())
    assert cache.get("p_anne") == ANNE
    cache.written(wrote("p_bob"))
    assert cache.get("p_anne") == ANNE
    cache.written(wrote("p_anne"))
    assert cache.get("p_anne") is None


def test_an_answer_read_while_a_write_was_heard_of_is_not_kept() -> None:
    cache = serving_cache()
    epoch = cache.epoch()
    cache.written(wrote("p_bob"))  # any profile: the read's snapshot may predate it
    cache.put("p_anne", ANNE, epoch)
    assert cache.get("p_anne") is None
    cache.put("p_anne", ANNE, cache.epoch())
    assert cache.get("p_anne") == ANNE


def test_an_alias_is_dropped_with_the_profile_it_resolved_to() -> None:
    cache = serving_cache()
    cache.put("p_annie", ANNE, cache.epoch())  # p_annie was merged into p_anne
    cache.written(wrote("p_anne"))
    assert cache.get("p_annie") is None


def test_a_lookup_is_dropped_when_its_value_is_linked_again_or_its_profile_written() -> None:
    cache = serving_cache()
    cache.put_lookup(EMAIL, ANNE, cache.epoch())
    cache.written(wrote("p_bob", identifiers=(Identifier("email", "bob@example.com"),)))
    assert cache.lookup(EMAIL) == ANNE
    # Another record now holds Anne's email: the lookup may have become ambiguous.
    cache.written(wrote("p_bob", identifiers=(EMAIL,)))
    assert cache.lookup(EMAIL) is None
    cache.put_lookup(EMAIL, ANNE, cache.epoch())
    cache.written(wrote("p_anne"))
    assert cache.lookup(EMAIL) is None


def test_changes_the_feed_delivers_drop_every_profile_they_name() -> None:
    cache = serving_cache()
    cache.put("p_annie", CachedProfile("p_annie", b"annie"), cache.epoch())
    cache.put("p_carl", CachedProfile("p_carl", b"carl"), cache.epoch())
    cache.changes_read([LoggedChange(7, "p_anne", "MERGED", {}, {"merged": "p_annie"}, [])])
    assert cache.get("p_annie") is None
    assert cache.get("p_carl") is not None


def test_losing_the_listener_forgets_everything_and_stops_serving() -> None:
    cache = serving_cache()
    cache.put("p_anne", ANNE, cache.epoch())
    cache.lost()
    assert cache.epoch() is None
    assert cache.get("p_anne") is None
    cache.listening()
    assert cache.get("p_anne") is None  # writes made while nobody listened are unknown


def test_the_least_recently_used_answer_goes_first() -> None:
    cache = serving_cache(max_profiles=2)
    for name in ("a", "b"):
        cache.put(f"p_{name}", CachedProfile(f"p_{name}", b""), cache.epoch())
    assert cache.get("p_a") is not None  # b is now the least recently used
    cache.put("p_c", CachedProfile("p_c", b""), cache.epoch())
    assert cache.get("p_b") is None
    assert cache.get("p_a") is not None
    assert cache.get("p_c") is not None
    assert len(cache) == 2


def test_an_answer_expires_after_its_time() -> None:
    clock = Clock()
    cache = serving_cache(ttl_s=30.0, clock=clock)
    cache.put("p_anne", ANNE, cache.epoch())
    clock.now = 29.9
    assert cache.get("p_anne") == ANNE
    clock.now = 30.0
    assert cache.get("p_anne") is None


def test_hits_and_misses_are_counted() -> None:
    cache = serving_cache()
    cache.get("p_anne")
    cache.put("p_anne", ANNE, cache.epoch())
    cache.get("p_anne")
    cache.get("p_anne")
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


# --- notifications ----------------------------------------------------------------------------


def test_a_large_transaction_is_announced_in_payloads_postgresql_accepts() -> None:
    ids = {f"p_{n:024x}" for n in range(2_000)}
    identifiers = [Identifier("email", f"person{n}@example.com") for n in range(500)]
    payloads = list(profile_writes.encode(ids, identifiers))
    assert len(payloads) > 1
    assert all(len(p.encode()) <= profile_writes.MAX_PAYLOAD_BYTES for p in payloads)
    decoded = [profile_writes.decode(p) for p in payloads]
    assert set().union(*(d.profile_ids for d in decoded)) == ids
    assert set().union(*(d.identifier_digests for d in decoded)) == {
        profile_writes.identifier_digest(i) for i in identifiers
    }


def test_notifications_carry_no_identifier_value() -> None:
    [payload] = profile_writes.encode({"p_anne"}, [EMAIL])
    assert "anne@example.com" not in payload
    assert orjson.loads(payload)["p"] == ["p_anne"]


def test_nothing_written_is_not_announced() -> None:
    assert list(profile_writes.encode(set(), [])) == []


@pytest.mark.parametrize("payload", ["", "17", "[1, 2]", '{"p": [3]}', "not json"])
def test_a_payload_not_ours_is_refused(payload: str) -> None:
    with pytest.raises(ValueError, match="not a profile-writes payload"):
        profile_writes.decode(payload)


def test_the_cache_counters_are_exported_for_prometheus() -> None:
    cache = serving_cache()
    cache.get("p_anne")
    cache.put("p_anne", ANNE, cache.epoch())
    cache.get("p_anne")
    metrics.READ_CACHE.read = lambda: (
        cache.stats.hits, cache.stats.misses, len(cache), cache.serving
    )
    try:
        text = generate_latest().decode()
    finally:
        metrics.READ_CACHE.read = lambda: None
    assert 'up_read_cache_reads_total{result="hit"} 1.0' in text
    assert 'up_read_cache_reads_total{result="miss"} 1.0' in text
    assert "up_read_cache_entries 1.0" in text
    assert "up_read_cache_serving 1.0" in text
