"""Announcing which profiles a transaction wrote: ``NOTIFY`` on :data:`PROFILE_WRITES_CHANNEL`.

The change log tells subscribers what changed in a profile's *values*; a profile's stored row also
changes when only its provenance, identifiers or record count do, and no change-log entry says so.
Whatever keeps profiles in memory (the serving processes' read cache) needs to hear of every such
write, so each applying transaction (:class:`~.store_batch.StoreBatch`) sends, before it commits:

* the ids of the profiles it wrote, removed or merged away (``"p"``);
* a short digest of each identifier value it linked to a record (``"i"``): a value that gains a
  holder can make a lookup answered before ambiguous, or answered by another profile, even though
  the profile it used to resolve to was not written.

PostgreSQL delivers a notification at commit, to the sessions listening then, in commit order, and
never for a rolled-back transaction. Digests rather than values keep personal data out of the
notification queue; 32 bits make two values share a digest rarely, and when they do a cached
lookup is dropped for nothing, never kept wrongly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import orjson

from ..engine.records import Identifier

PROFILE_WRITES_CHANNEL = "up_profile_writes"
"""The LISTEN/NOTIFY channel naming the profiles a committed transaction wrote."""

MAX_PAYLOAD_BYTES = 7_000
"""Payload size per notification: under PostgreSQL's 8,000-byte limit, with room to spare."""


def identifier_digest(identifier: Identifier) -> str:
    """The identifier's digest as notifications carry it (8 hex digits)."""
    text = f"{identifier.type}\x1f{identifier.value}".encode()
    return hashlib.blake2b(text, digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class ProfileWrites:
    """What one notification names.

    Attributes:
        profile_ids: Profiles written, removed or merged away.
        identifier_digests: Digests (:func:`identifier_digest`) of identifier values linked.
    """

    profile_ids: frozenset[str]
    identifier_digests: frozenset[str]


def encode(profile_ids: Collection[str], identifiers: Iterable[Identifier]) -> Iterator[str]:
    """The payloads announcing these writes, each within :data:`MAX_PAYLOAD_BYTES`."""
    items = [("p", p) for p in sorted(profile_ids)]
    items += [("i", d) for d in sorted({identifier_digest(i) for i in identifiers})]
    if not items:
        return
    chunk: dict[str, list[str]] = {}
    size = 0
    for kind, value in items:
        cost = len(value.encode()) + 4  # quotes, comma, and slack for a new key
        if chunk and size + cost > MAX_PAYLOAD_BYTES - 16:
            yield orjson.dumps(chunk).decode()
            chunk, size = {}, 0
        chunk.setdefault(kind, []).append(value)
        size += cost
    yield orjson.dumps(chunk).decode()


def decode(payload: str) -> ProfileWrites:
    """A notification's payload.

    Raises:
        ValueError: Not a payload :func:`encode` makes.
    """
    try:
        data = orjson.loads(payload)
        profile_ids = frozenset(data.get("p", ()))
        digests = frozenset(data.get("i", ()))
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ValueError(f"not a profile-writes payload: {payload[:80]!r}") from exc
    if not all(isinstance(v, str) for v in profile_ids | digests):
        raise ValueError(f"not a profile-writes payload: {payload[:80]!r}")
    return ProfileWrites(profile_ids, digests)


__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROFILE_WRITES_CHANNEL",
    "ProfileWrites",
    "decode",
    "encode",
    "identifier_digest",
]
