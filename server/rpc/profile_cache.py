"""The serving process's read cache: whole profiles as encoded, dropped when the store writes them.

GetProfile, LookupProfile and each ref of BatchGetProfiles answer from here when they can: no
store round trip, no document parsing, no message building. Every applying transaction announces
the profiles it wrote and the identifier values it linked (:mod:`..store.profile_writes`,
``NOTIFY`` at commit), and :func:`follow_writes` drops what they name. How that stays coherent:

* **Nothing is cached while nobody listens.** The cache serves and fills only between the
  listener's ``LISTEN`` and the loss of its connection; a loss empties it (notifications sent
  meanwhile reach nobody), a reconnect starts it empty.
* **A read that overlaps a write is not kept.** A read takes the cache's epoch before it asks the
  store; every notification (and every loss) advances the epoch; the answer is kept only if the
  epoch has not moved. So an answer read from a snapshot older than a write the listener has
  already seen is never stored, and a write after the snapshot is dropped when it is heard of.
* **Aliases and lookups follow the profile they resolved to.** An entry asked for by an alias or
  an identifier is dropped with the profile it answered with (a merge names the profile merged
  away; an erasure names the erased one). A lookup is also dropped when its value is linked to
  any record again: a second holder makes it ambiguous, and this does not rely on the engine
  also rewriting the first holder's profile (which today it does).
* **What a subscriber was told of is gone first.** The change feed hands this cache the changes
  of each log read before delivering them (:meth:`ProfileCache.changes_read`), so a subscriber's
  next read on this server sees at least those changes, whichever notification arrives first.
* **Entries expire** after ``ttl_s`` whatever happens, and the cache holds at most
  ``max_profiles`` answers of each kind, least recently used out first.

What a reader may see: a profile as it was until this process hears of the write that replaced
it, typically a few milliseconds after the commit; the change feed hears of it the same way. A
steward call answered by this process empties its cache before replying, so its caller's next
read here sees the effect. Everything runs on the server's event loop: no locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from ..engine.records import Identifier
from ..feed.listener import ListenerConfig, listen
from ..store import profile_writes
from ..store.profile_writes import PROFILE_WRITES_CHANNEL, ProfileWrites
from ..store.rows import LoggedChange

log = structlog.get_logger(__name__)

_K = TypeVar("_K")


@dataclass(frozen=True, slots=True)
class CachedProfile:
    """One answer: the profile it resolved to, as the encoded ``unified_profile.v1.Profile``.

    Attributes:
        profile_id: The live profile's id (an alias asked for resolves to it).
        encoded: The whole profile (no field mask), serialised.
    """

    profile_id: str
    encoded: bytes


@dataclass(slots=True)
class CacheStats:
    """Counters since start (for metrics and tests).

    Attributes:
        hits: Reads answered from the cache.
        misses: Reads that went to the store.
        resets: Times the cache was emptied whole (listener connected or lost, steward write).
    """

    hits: int = 0
    misses: int = 0
    resets: int = 0


class _Answers(Generic[_K]):
    """Key → answer, least recently used first, indexed by the profile each answer resolved to
    and, when ``tag`` is given, by ``tag(key)`` (for dropping)."""

    def __init__(self, limit: int, tag: Callable[[_K], str] | None = None) -> None:
        self._limit = limit
        self._tag = tag
        self._entries: OrderedDict[_K, tuple[CachedProfile, float]] = OrderedDict()
        self._keys_of: dict[str, set[_K]] = {}
        self._keys_tagged: dict[str, set[_K]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _K, now: float) -> CachedProfile | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            self.drop(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: _K, answer: CachedProfile, expires: float) -> None:
        self.drop(key)
        self._entries[key] = (answer, expires)
        self._keys_of.setdefault(answer.profile_id, set()).add(key)
        if self._tag is not None:
            self._keys_tagged.setdefault(self._tag(key), set()).add(key)
        while len(self._entries) > self._limit:
            self.drop(next(iter(self._entries)))

    def drop(self, key: _K) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            _unindex(self._keys_of, found[0].profile_id, key)
            if self._tag is not None:
                _unindex(self._keys_tagged, self._tag(key), key)

    def drop_profile(self, profile_id: str) -> None:
        for key in list(self._keys_of.get(profile_id, ())):
            self.drop(key)

    def drop_tagged(self, tag: str) -> None:
        for key in list(self._keys_tagged.get(tag, ())):
            self.drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._keys_of.clear()
        self._keys_tagged.clear()


def _unindex(index: dict[str, set[_K]], name: str, key: _K) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]


class ProfileCache:
    """Answers of GetProfile (by id or alias) and LookupProfile (by identifier).

    Args:
        max_profiles: Answers kept of each kind.
        ttl_s: How long an answer may be served, at most.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self, max_profiles: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._by_id: _Answers[str] = _Answers(max_profiles)
        self._by_identifier: _Answers[Identifier] = _Answers(
            max_profiles, profile_writes.identifier_digest
        )
        self._epoch = 0
        self._listening = False
        self.stats = CacheStats()

    @property
    def serving(self) -> bool:
        """Whether the cache answers (its listener is connected)."""
        return self._listening

    def __len__(self) -> int:
        return len(self._by_id) + len(self._by_identifier)

    # --- reads ---------------------------------------------------------------------------------

    def get(self, profile_id: str) -> CachedProfile | None:
        """The answer for a profile id or alias, if cached."""
        return self._count(self._by_id.get(profile_id, self._clock()) if self._listening else None)

    def lookup(self, identifier: Identifier) -> CachedProfile | None:
        """The answer for a (normalised) identifier held by exactly one profile, if cached."""
        if not self._listening:
            return self._count(None)
        return self._count(self._by_identifier.get(identifier, self._clock()))

    def epoch(self) -> int | None:
        """Take before reading the store; give to :meth:`put`. ``None``: do not cache."""
        return self._epoch if self._listening else None

    def put(self, profile_id: str, answer: CachedProfile, epoch: int | None) -> None:
        """Keep the store's answer for ``profile_id`` unless a write was heard of meanwhile."""
        if self._keep(epoch):
            self._by_id.put(profile_id, answer, self._clock() + self._ttl_s)

    def put_lookup(self, identifier: Identifier, answer: CachedProfile, epoch: int | None) -> None:
        """Keep the store's answer for ``identifier`` unless a write was heard of meanwhile."""
        if self._keep(epoch):
            self._by_identifier.put(identifier, answer, self._clock() + self._ttl_s)

    # --- what the listener reports -------------------------------------------------------------

    def written(self, writes: ProfileWrites) -> None:
        """Drop the answers a committed transaction may have changed."""
        self._epoch += 1
        for profile_id in writes.profile_ids:
            self._by_id.drop_profile(profile_id)
            self._by_identifier.drop_profile(profile_id)
        for digest in writes.identifier_digests:
            self._by_identifier.drop_tagged(digest)

    def changes_read(self, changes: Iterable[LoggedChange]) -> None:
        """Drop the profiles the change feed is about to deliver changes of (and those they name:
        a merge names the profile merged away, a split the profile split from or into)."""
        named = set()
        for change in changes:
            named.add(change.profile_id)
            named.update(v for v in change.related.values() if isinstance(v, str))
        self.written(ProfileWrites(frozenset(named), frozenset()))

    def listening(self) -> None:
        """The listener listens: start serving, empty (what was missed meanwhile is unknown)."""
        self._reset()
        self._listening = True

    def lost(self) -> None:
        """The listener lost its connection: stop serving and forget everything."""
        self._listening = False
        self._reset()

    def clear(self) -> None:
        """Forget every answer (a steward write of this process; a notification not understood)."""
        self._reset()

    # --- inside --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._epoch += 1
        self.stats.resets += 1
        self._by_id.clear()
        self._by_identifier.clear()

    def _keep(self, epoch: int | None) -> bool:
        return epoch is not None and self._listening and epoch == self._epoch

    def _count(self, found: CachedProfile | None) -> CachedProfile | None:
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found


LISTENER = ListenerConfig(liveness_s=5.0)
"""How the cache's listener connects: a silent connection is probed every 5 s (a dead one found
that way is a window in which writes went unheard, so it is kept short)."""


async def follow_writes(cache: ProfileCache, dsn: str, config: ListenerConfig = LISTENER) -> None:
    """Keep ``cache`` coherent with the store at ``dsn`` until cancelled (see the module)."""

    def on_notify(payload: str) -> None:
        try:
            writes = profile_writes.decode(payload)
        except ValueError:
            # Not ours, or from a newer release: what it names is unknown, so forget everything.
            log.warning("read_cache.unreadable_notification", channel=PROFILE_WRITES_CHANNEL)
            cache.clear()
            return
        cache.written(writes)

    await listen(dsn, PROFILE_WRITES_CHANNEL, cache.listening, on_notify, cache.lost, config)


__all__ = ["LISTENER", "CacheStats", "CachedProfile", "ProfileCache", "follow_writes"]
