"""MergeProfiles and UnmergeProfiles on top of the steward's link overrides.

An override is between two *records*, because profiles are recomputed from records and a profile
id is only the name of a cluster. So:

- **Merge** force-links the smallest record key of each profile. The engine then joins the two
  clusters (the older profile id survives, the other becomes its alias) and keeps them joined
  whatever later changes say, as long as both records live. It is refused up front
  (FAILED_PRECONDITION) when a never-link separates a record of one profile from a record of the
  other: the never-link would win, and the caller should clear it first. Merging two ids that
  already name one profile changes nothing and answers with that profile, so a retry is safe.
- **Unmerge** never-links the named record with *every* other record of its profile, so that it
  ends up alone whatever links the rest: a never-link with one record only would let the others
  pull it back in through a shared identifier. Each pair is its own steward transaction; a retry
  after a failure re-applies the same overrides and is safe.

Both answer with the change-log entries the recomputations appended, with their sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from ..engine.identity import IdentifierType
from ..engine.records import RecordKey
from ..engine.survivorship import RuleSet
from ..ingest.applier import ProfileApplier
from ..ingest.steward import set_link_override
from ..store.profile_reads import (
    ProfileNotFound,
    ProfileReads,
    SequenceRecordingStore,
)
from ..store.profile_store import ProfileStore, StoredProfile
from ..store.rows import LoggedChange
from .convert import record_name
from .errors import FailedPrecondition, InvalidArgument

log = structlog.get_logger(__name__)


class StewardOps:
    """Merge and unmerge through :func:`~..ingest.steward.set_link_override`."""

    def __init__(
        self,
        store: ProfileStore,
        reads: ProfileReads,
        identifier_types: Mapping[str, IdentifierType],
        rules: RuleSet,
    ) -> None:
        self._store = store
        self._reads = reads
        self._applier = ProfileApplier(identifier_types, rules)

    def merge(
        self, first: str, second: str, actor: str, reason: str, timeout_s: float | None
    ) -> tuple[StoredProfile, list[LoggedChange]]:
        """Force two profiles together; return the survivor and the changes.

        Raises:
            ProfileNotFound: Either id names no profile.
            FailedPrecondition: A never-link keeps them apart.
            UnknownRecord: A record vanished meanwhile (retry).
        """
        resolved, keys, overrides = self._reads.profile_records([first, second], timeout_s)
        for requested, field in ((first, "profile_id"), (second, "other_profile_id")):
            if requested not in resolved:
                raise ProfileNotFound(f"{field}: profile {requested!r} not found")
        a, b = resolved[first].profile.profile_id, resolved[second].profile.profile_id
        if a == b:
            return resolved[first].profile, []
        ours, theirs = keys.get(a, []), keys.get(b, [])
        if not ours or not theirs:
            raise FailedPrecondition("a profile to merge has no live records")
        for kind, x, y in overrides:
            if kind == "never" and ((x in ours and y in theirs) or (x in theirs and y in ours)):
                raise FailedPrecondition(
                    f"a steward never-link between {record_name(x)} and {record_name(y)} keeps "
                    "these profiles apart; clear it before merging"
                )
        recording = SequenceRecordingStore(self._store)
        rows = set_link_override(recording, self._applier, "force", ours[0], theirs[0], actor, reason)
        entries = self._entries(recording.batch_heads, [len(rows)])
        after = self._reads.get_profiles([a, b])
        if a not in after or b not in after or (
            after[a].profile.profile_id != after[b].profile.profile_id
        ):
            raise FailedPrecondition(
                "the force-link was recorded but the engine keeps the profiles apart; "
                "ExplainProfile lists the conflict"
            )
        survivor = after[a].profile
        log.info(
            "profiles.merged", profile_id=survivor.profile_id, merged=sorted({a, b}),
            actor=actor, sequences=[e.sequence for e in entries],
        )
        return survivor, entries

    def unmerge(
        self, profile_id: str, record: RecordKey, actor: str, reason: str, timeout_s: float | None
    ) -> list[LoggedChange]:
        """Separate ``record`` from the rest of its profile; return the changes.

        Raises:
            ProfileNotFound: The id names no profile.
            InvalidArgument: ``record`` is not a live record of the profile.
            FailedPrecondition: It is the profile's only record.
            UnknownRecord: A record vanished meanwhile (retry).
        """
        resolved, keys, _ = self._reads.profile_records([profile_id], timeout_s)
        if profile_id not in resolved:
            raise ProfileNotFound(f"profile {profile_id!r} not found")
        target = resolved[profile_id].profile.profile_id
        members = keys.get(target, [])
        if record not in members:
            raise InvalidArgument(
                "record", f"is not a live record of profile {target!r} (ExplainProfile lists them)"
            )
        others = [k for k in members if k != record]
        if not others:
            raise FailedPrecondition("the record is the profile's only one; nothing to separate")
        recording = SequenceRecordingStore(self._store)
        counts = [
            len(set_link_override(recording, self._applier, "never", record, other, actor, reason))
            for other in others
        ]
        entries = self._entries(recording.batch_heads, counts)
        log.info(
            "profiles.unmerged", profile_id=target, actor=actor,
            sequences=[e.sequence for e in entries],
        )
        return entries

    def _entries(self, heads: Sequence[int], counts: Sequence[int]) -> list[LoggedChange]:
        # Each steward batch appended its rows right after the head it locked.
        entries: list[LoggedChange] = []
        for head, count in zip(heads, counts, strict=True):
            if count:
                entries += self._reads.changes_between(head + 1, head + count)
        return entries


__all__ = ["StewardOps"]
