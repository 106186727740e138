"""Applying new record images to the stored profiles, inside one store transaction.

For a batch of changed records the applier gathers the part of the identity graph they can affect
(records sharing an identifier with them, old or new, and every record of the profiles they were
in), recomputes who is the same person with the pure engine, and turns the difference into
profile rows and change-log entries:

- profile ids are stable: a cluster keeps the id of the oldest profile whose records it inherits
  (a profile's heir is the cluster holding most of its records); other inherited ids become
  aliases (MERGED); a cluster that inherits no id gets a new one, derived from its smallest record
  key so that the same history always produces the same ids (CREATED, and SPLIT on the profile it
  came from);
- a profile whose records are all gone is DELETED;
- field values are recomputed from the cluster's records (survivorship); only value changes are
  logged (UPDATED), so a recomputation that changes nothing emits nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.identity import (
    IdentifierType,
    IdentityConflict,
    IdentityResolution,
    LinkOverride,
    resolve_identities,
)
from ..engine.mapping import fill_unavailable
from ..engine.records import Identifier, RecordKey, SourceRecord, key_order
from ..engine.survivorship import RuleSet, merge_fields
from ..store import profile_document
from ..store.rows import ChangeRow, StoredProfile, StoredRecord
from ..store.store_batch import StoreBatch

_ID_NAMESPACE = uuid.UUID("8d6f3a52-4f4e-4c1e-9d7a-2b1f0c6e5a31")
_MAX_COMPONENT_ROUNDS = 50


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """A record image to apply and what caused it (for the change log).

    ``force`` recomputes the record's profile even if the image is not newer than the stored one
    (a steward override changed how records link, not the records themselves).
    """

    record: SourceRecord
    cause: dict[str, Any]
    force: bool = False


class ProfileApplier:
    """Recomputes the profiles a batch of record images affects."""

    def __init__(self, identifier_types: Mapping[str, IdentifierType], rules: RuleSet) -> None:
        self._types = identifier_types
        self._rules = rules

    def apply(self, batch: StoreBatch, incoming: Sequence[IncomingRecord]) -> list[ChangeRow]:
        """Store the images, recompute affected profiles, append the change log; return it."""
        latest: dict[RecordKey, IncomingRecord] = {}
        for item in incoming:
            current = latest.get(item.record.key)
            if current is None or item.record.position >= current.record.position:
                latest[item.record.key] = item
        stored = batch.load_records(latest.keys())
        # A redelivered or older image (position not newer than the stored one) changes nothing.
        changed = {
            key: _with_unavailable_filled(item, stored.get(key))
            for key, item in latest.items()
            if key not in stored or item.record.position > stored[key].record.position or item.force
        }
        if not changed:
            return []
        same_links, relinking = _split_by_links(changed, stored)
        joining = self._joining_one_profile(batch, relinking, stored)
        known: dict[RecordKey, StoredRecord] = {}
        clusters: list[frozenset[RecordKey]] = []
        conflicts: tuple[IdentityConflict, ...] = ()
        if relinking:
            known = self._gather_component(batch, relinking, stored)
            # A record whose links did not change, or that only joins a profile, still joins a
            # recomputation that reached it (or its profile: the whole profile was gathered).
            reached = {found.profile_id for found in known.values()}
            for key in [k for k in same_links if k in known]:
                relinking[key] = same_links.pop(key)
            for key in [k for k, profile_id in joining.items() if profile_id in reached]:
                relinking[key] = changed[key]
                del joining[key]
            images = {key: known[key].record for key in known}
            images.update({key: item.record for key, item in relinking.items()})
            overrides = [
                LinkOverride(kind, a, b)  # type: ignore[arg-type]
                for kind, a, b in batch.load_overrides(images.keys())
            ]
            resolution = resolve_identities(images.values(), self._types, overrides)
            clusters.extend(resolution.clusters)
            conflicts = resolution.conflicts
        if same_links or joining:
            profiles = {stored[key].profile_id for key in same_links} | set(joining.values())
            members = self._members_of_profiles(batch, profiles, stored)
            known.update(members)
            clusters.extend(_stored_clusters(members, joining))
        images = {key: known[key].record for key in known}
        images.update({key: item.record for key, item in changed.items()})
        resolution = IdentityResolution(tuple(sorted(clusters, key=_first_key)), (), conflicts)
        plan = _Plan(batch, self._rules, changed, known, images, resolution)
        return plan.execute(links_unchanged=same_links.keys())

    def _joining_one_profile(
        self,
        batch: StoreBatch,
        relinking: dict[RecordKey, IncomingRecord],
        stored: Mapping[RecordKey, StoredRecord],
    ) -> dict[RecordKey, str]:
        """New records that can only join one existing profile; taken out of ``relinking``.

        The commonest new record is an activity row (a points-ledger entry, a redemption, a
        service case) carrying one identifier its person's profile already holds. Gathering and
        resolving that person's whole identity graph again would change nothing: a record whose
        only identifier value is held by live records that are all in one profile joins that
        profile, and adds no value that could break a limit or change any other join (see
        :mod:`..engine.identity`: had the holders' join on that value been refused, limits and
        never-links would have kept them apart for good). Records with a steward override take
        the full path, as does everything when another record in the batch reaches the profile.

        Returns:
            Record key → the profile it joins.
        """
        candidates = {
            key: next(iter(item.record.identifiers))
            for key, item in relinking.items()
            if len(item.record.identifiers) == 1
            and not item.force
            and not item.record.deleted
            and (key not in stored or stored[key].record.deleted)
        }
        if not candidates:
            return {}
        holders = batch.sole_profiles_holding(set(candidates.values()))
        joining = {
            key: holders[identifier]
            for key, identifier in candidates.items()
            if identifier in holders
        }
        if joining:
            for _, a, b in batch.load_overrides(joining.keys()):
                joining.pop(a, None)
                joining.pop(b, None)
        for key in joining:
            del relinking[key]
        return joining

    def _members_of_profiles(
        self,
        batch: StoreBatch,
        profiles: Collection[str | None],
        stored: Mapping[RecordKey, StoredRecord],
    ) -> dict[RecordKey, StoredRecord]:
        """Every record of these profiles, as stored."""
        keys = batch.records_of_profiles([p for p in profiles if p is not None])
        members = {key: stored[key] for key in keys if key in stored}
        members.update(batch.load_records(keys - members.keys()))
        return members

    def _gather_component(
        self,
        batch: StoreBatch,
        changed: Mapping[RecordKey, IncomingRecord],
        stored: Mapping[RecordKey, StoredRecord],
    ) -> dict[RecordKey, StoredRecord]:
        # Start from the records that changed only: an unchanged (redelivered) record in the same
        # batch joins the recomputation through its identifiers and profile, with everything
        # linked to it, or not at all.
        known: dict[RecordKey, StoredRecord] = {k: v for k, v in stored.items() if k in changed}
        identifiers: set[Identifier] = set()
        profiles: set[str] = set()
        for key, item in changed.items():
            identifiers |= item.record.identifiers
            if key in stored:
                identifiers |= stored[key].record.identifiers
                if (profile_id := stored[key].profile_id) is not None:
                    profiles.add(profile_id)
        seen_identifiers: set[Identifier] = set()
        seen_profiles: set[str] = set()
        for _ in range(_MAX_COMPONENT_ROUNDS):
            new_identifiers, new_profiles = identifiers - seen_identifiers, profiles - seen_profiles
            if not new_identifiers and not new_profiles:
                break
            seen_identifiers |= new_identifiers
            seen_profiles |= new_profiles
            keys = batch.records_sharing(new_identifiers) | batch.records_of_profiles(new_profiles)
            override_keys = {k for _, a, b in batch.load_overrides(keys) for k in (a, b)}
            missing = (keys | override_keys) - known.keys() - changed.keys()
            for key, found in batch.load_records(missing).items():
                known[key] = found
                identifiers |= found.record.identifiers
                if found.profile_id:
                    profiles.add(found.profile_id)
        return known


class _Plan:
    """The effects of one recomputation, built in a deterministic order."""

    def __init__(
        self,
        batch: StoreBatch,
        rules: RuleSet,
        changed: Mapping[RecordKey, IncomingRecord],
        known: Mapping[RecordKey, StoredRecord],
        images: Mapping[RecordKey, SourceRecord],
        resolution: IdentityResolution,
    ) -> None:
        self.batch = batch
        self.rules = rules
        self.changed = changed
        self.images = images
        self.resolution = resolution
        self.old_profile = {key: stored.profile_id for key, stored in known.items()}
        self.members_of: dict[str, list[RecordKey]] = {}
        for key in sorted(self.old_profile, key=key_order):
            if (profile_id := self.old_profile[key]) is not None:
                self.members_of.setdefault(profile_id, []).append(key)
        old_ids = sorted(self.members_of)
        self.old_profiles = batch.load_profiles(old_ids)
        self.rows: list[ChangeRow] = []
        self.profiles: list[StoredProfile] = []
        self.retired: dict[str, str | None] = {}
        self.assignment: dict[RecordKey, str | None] = {}

    def execute(self, links_unchanged: Collection[RecordKey] = ()) -> list[ChangeRow]:
        """Work out the effects, write them, and return the change-log rows appended."""
        heirs = self._heirs()
        inherited_by: dict[frozenset[RecordKey], list[str]] = {}
        for profile_id, heir in heirs.items():
            inherited_by.setdefault(heir, []).append(profile_id)
        new_ids = self._new_ids([c for c in self.resolution.clusters if c not in inherited_by])
        plans: list[tuple[frozenset[RecordKey], list[str], str]] = []
        for cluster in self.resolution.clusters:
            inherited = sorted(
                inherited_by.get(cluster, ()),
                key=lambda p: (self.old_profiles[p].created_sequence, p),
            )
            survivor = inherited[0] if inherited else new_ids[cluster]
            plans.append((cluster, inherited, survivor))
        # Splits first, so a subscriber reads "split, created, updated" in that order.
        for cluster, inherited, survivor in plans:
            if not inherited:
                for parent in self._parents(cluster):
                    self._append(
                        parent, "SPLIT", {}, {"split_into": survivor}, self._causes(cluster)
                    )
        for cluster, inherited, survivor in plans:
            self._apply_cluster(cluster, inherited, survivor)
        for profile_id in sorted(self.old_profiles):
            if profile_id not in heirs:
                self._append(profile_id, "DELETED", {}, {}, self._causes(self._members(profile_id)))
                self.retired[profile_id] = None
        self._write(links_unchanged)
        return self.rows

    def _parents(self, cluster: frozenset[RecordKey]) -> list[str]:
        return sorted({p for k in cluster if (p := self.old_profile.get(k))})

    def _heirs(self) -> dict[str, frozenset[RecordKey]]:
        """Old profile → the new cluster that holds most of its (still live) records."""
        heirs: dict[str, frozenset[RecordKey]] = {}
        for profile_id in self.old_profiles:
            counts: dict[frozenset[RecordKey], int] = {}
            for key in self._members(profile_id):
                cluster = self.resolution.by_record.get(key)
                if cluster is not None:
                    counts[cluster] = counts.get(cluster, 0) + 1
            if counts:
                heirs[profile_id] = min(counts, key=lambda c: (-counts[c], min(c)))
        return heirs

    def _members(self, profile_id: str) -> list[RecordKey]:
        return self.members_of.get(profile_id, [])

    def _apply_cluster(
        self, cluster: frozenset[RecordKey], inherited: list[str], survivor: str
    ) -> None:
        causes = self._causes(cluster)
        rows_before = len(self.rows)
        document = profile_document.encode(
            merge_fields([self.images[k] for k in cluster], self.rules)
        )
        values = document["values"]
        identifiers = [
            list(pair)
            for pair in sorted(
                {(i.type, i.value) for k in cluster for i in self.images[k].identifiers}
            )
        ]
        if inherited:
            before = self.old_profiles[survivor]
            created_sequence = before.created_sequence
            for other in inherited[1:]:
                self._append(survivor, "MERGED", {}, {"merged": other}, causes)
                self.retired[other] = survivor
            changes = _diff(before.values, values)
            if changes:
                self._append(survivor, "UPDATED", changes, {}, causes)
        else:
            parents = self._parents(cluster)
            self._append(
                survivor,
                "CREATED",
                _diff({}, values),
                {"split_from": parents[0]} if parents else {},
                causes,
            )
            created_sequence = self.batch.head + len(self.rows)
        touched = len(self.rows) > rows_before
        self.profiles.append(
            StoredProfile(
                profile_id=survivor,
                document=document,
                identifiers=identifiers,
                record_count=len(cluster),
                created_sequence=created_sequence,
                updated_sequence=(
                    self.batch.head + len(self.rows)
                    if touched
                    else self.old_profiles[survivor].updated_sequence
                ),
            )
        )
        for key in cluster:
            self.assignment[key] = survivor

    def _new_ids(self, clusters: list[frozenset[RecordKey]]) -> dict[frozenset[RecordKey], str]:
        """Ids for clusters that inherit none, derived from their smallest record key.

        All first choices are checked in one query; a taken one (the founding record's earlier
        profile merged away) moves on to ``<key>#1``, ``#2``…
        """
        seeds = {cluster: str(min(cluster)) for cluster in clusters}
        firsts = {cluster: _profile_id(seed) for cluster, seed in seeds.items()}
        taken = self.batch.profile_ids_taken(set(firsts.values()))
        chosen: dict[frozenset[RecordKey], str] = {}
        claimed: set[str] = set()
        for cluster in clusters:
            candidate, attempt = firsts[cluster], 0
            while candidate in claimed or candidate in taken:
                attempt += 1
                if attempt > 1000:
                    raise RuntimeError(f"no free profile id for {seeds[cluster]}")
                candidate = _profile_id(f"{seeds[cluster]}#{attempt}")
                taken |= self.batch.profile_ids_taken([candidate])
            claimed.add(candidate)
            chosen[cluster] = candidate
        return chosen

    def _causes(self, keys: Any) -> list[dict[str, Any]]:
        return [self.changed[k].cause for k in sorted(keys, key=key_order) if k in self.changed]

    def _append(
        self,
        profile_id: str,
        kind: str,
        changes: dict[str, Any],
        related: dict[str, Any],
        cause: list[dict[str, Any]],
    ) -> None:
        self.rows.append(ChangeRow(profile_id, kind, changes, related, cause))

    def _write(self, links_unchanged: Collection[RecordKey]) -> None:
        batch = self.batch
        changed_records = [
            (item.record, None if item.record.deleted else self.assignment.get(key))
            for key, item in sorted(self.changed.items(), key=_by_record_key)
        ]
        moved = {
            key: profile
            for key, profile in sorted(self.assignment.items(), key=_by_record_key)
            if key not in self.changed and self.old_profile.get(key) != profile
        }
        head_before = batch.head
        # Nothing below reads: the writes go to the store together, in this order.
        with batch.pipelined():
            batch.save_records(changed_records, links_unchanged)
            batch.set_record_profiles(moved)
            batch.append_changes(self.rows)
            batch.retire_profiles(self.retired, head_before + len(self.rows))
            batch.save_profiles(self.profiles)
            batch.save_conflicts(
                (c.identifier, [str(k) for k in c.records], c.reason)
                for c in self.resolution.conflicts
                if isinstance(c.identifier, Identifier)
            )


def _split_by_links(
    changed: Mapping[RecordKey, IncomingRecord], stored: Mapping[RecordKey, StoredRecord]
) -> tuple[dict[RecordKey, IncomingRecord], dict[RecordKey, IncomingRecord]]:
    """Split changed records into those whose links stay as stored and the rest.

    Who is the same person depends only on records' identifiers, their being live and steward
    overrides. A live record that keeps its identifiers (most changes: a new address, points, a
    tier) therefore cannot change any cluster: its profile keeps its members and only its fields
    are recomputed, without gathering and resolving the identity graph around it. A forced
    recomputation (a steward override changed) always takes the full path.
    """
    same: dict[RecordKey, IncomingRecord] = {}
    relinking: dict[RecordKey, IncomingRecord] = {}
    for key, item in changed.items():
        before = stored.get(key)
        keeps_links = (
            before is not None
            and before.profile_id is not None
            and not item.force
            and not item.record.deleted
            and not before.record.deleted
            and item.record.identifiers == before.record.identifiers
        )
        (same if keeps_links else relinking)[key] = item
    return same, relinking


def _stored_clusters(
    members: Mapping[RecordKey, StoredRecord], joining: Mapping[RecordKey, str]
) -> list[frozenset[RecordKey]]:
    """The stored profiles' memberships, as clusters, with the new records joining them."""
    by_profile: dict[str, set[RecordKey]] = {}
    for key, found in members.items():
        if found.profile_id is not None and not found.record.deleted:
            by_profile.setdefault(found.profile_id, set()).add(key)
    for key, profile_id in joining.items():
        by_profile[profile_id].add(key)
    return [frozenset(keys) for keys in by_profile.values()]


def _first_key(cluster: frozenset[RecordKey]) -> tuple[str, str, str]:
    """Sort key of a cluster: its smallest record key (clusters are disjoint: no ties)."""
    return min(map(key_order, cluster))


def _by_record_key(item: tuple[RecordKey, Any]) -> tuple[str, str, str]:
    """Sort key of a (record key, value) pair; keys of one mapping are unique: no ties."""
    return key_order(item[0])


def _profile_id(seed: str) -> str:
    return "p_" + uuid.uuid5(_ID_NAMESPACE, seed).hex[:24]


def _with_unavailable_filled(item: IncomingRecord, stored: StoredRecord | None) -> IncomingRecord:
    """Unchanged TOASTed columns the event did not carry keep their stored values."""
    record = fill_unavailable(item.record, stored.record if stored else None)
    return item if record is item.record else IncomingRecord(record, item.cause, item.force)


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Changed field paths with old and new values (provenance-only changes are not changes).

    In path order. Most fields keep their value, so only the changed paths are sorted.
    """
    changes: dict[str, Any] = {}
    for path, new in after.items():
        old = before.get(path)
        if old != new:
            changes[path] = {"old": old, "new": new}
    for path in before.keys() - after.keys():
        if (old := before[path]) is not None:
            changes[path] = {"old": old, "new": None}
    return {path: changes[path] for path in sorted(changes)}
