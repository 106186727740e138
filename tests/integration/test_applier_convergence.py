"""Applying record images in any batching converges to the state a from-scratch recompute gives.

Hypothesis generates a small population of CRM and loyalty records, each with a short history of
images (identifiers from small pools: shared crm ids, shared household emails, loyalty links that
come and go, deletions), and applies the history to the real profile store (PostgreSQL) once in a
single batch and once split into several batches (each record's images in position order, plus
redelivered and older images). Properties checked after every run:

1. the stored state does not depend on the batching: the same profiles (field values with
   provenance, identifiers, record count), the same partition of live records into profiles (profile
   ids may differ with history, so the partition is compared, not the ids), the latest image of
   every record;
2. the change log is gap-free (1..head), and re-applying the whole history appends nothing;
3. every alias resolves to a live profile, every live record's profile exists (and counts it),
   deleted records belong to no profile, identifier rows match the live images;
4. the profiles equal a from-scratch recompute with the pure engine over the latest images.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text

from unified_profile.server.engine.identity import (
    IdentifierType,
    latest_images,
    resolve_identities,
)
from unified_profile.server.engine.records import (
    Identifier,
    RecordKey,
    SourceRecord,
    canonical_json,
)
from unified_profile.server.engine.survivorship import FieldValue, Rule, RuleSet, merge_fields
from unified_profile.server.ingest.applier import IncomingRecord, ProfileApplier
from unified_profile.server.store import profile_document
from unified_profile.server.store import schema as t
from unified_profile.server.store.profile_store import ProfileStore

pytestmark = pytest.mark.integration

TYPES = {
    "crm_id": IdentifierType("crm_id", max_per_profile=1),
    "loyalty_id": IdentifierType("loyalty_id", max_per_profile=1),
    "email": IdentifierType("email", normalize=("trim", "lower"), max_per_profile=5),
}
RULES = RuleSet(
    default=Rule("last_writer_wins", ("crm", "loyalty")),
    patterns=(
        ("person.*", Rule("source_priority", ("crm", "loyalty"))),
        ("loyalty.*", Rule("source_priority", ("loyalty",))),
    ),
)
APPLIER = ProfileApplier(TYPES, RULES)

CRM_IDS = ("1", "2", "3", "4")
LOYALTY_IDS = ("L1", "L2", "L3", "L4", "L5")
# Two household emails that several people share, and personal ones.
EMAILS = ("family@example.com", "home@example.com", "anne@example.com", "bob@example.com")
NAMES = ("Anne", "Bob", "Cleo")
TIERS = ("gold", "silver", "bronze")

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def reset(store: ProfileStore) -> None:
    """Empty every ``up_*`` table and put back the change-log head row (as the migration does)."""
    names = ", ".join(table.name for table in t.metadata.sorted_tables)
    with store.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY"))
        connection.execute(insert(t.change_log_head).values(id=1, sequence=0))


# --- the population ---------------------------------------------------------------------------


def crm_key(n: int) -> RecordKey:
    return RecordKey.of("crm", "public.customers", {"id": n})


def loyalty_key(n: int) -> RecordKey:
    return RecordKey.of("loyalty", "public.members", {"member_id": f"M{n}"})


def activity_key(n: int) -> RecordKey:
    return RecordKey.of("loyalty", "public.points_ledger", {"entry_id": n})


def image(
    key: RecordKey,
    position: int,
    identifiers: Sequence[tuple[str, str | None]] = (),
    fields: dict[str, Any] | None = None,
    *,
    deleted: bool = False,
) -> SourceRecord:
    return SourceRecord(
        key=key,
        fields={} if deleted else dict(fields or {}),
        identifiers=(
            frozenset()
            if deleted
            else frozenset(Identifier(typ, value) for typ, value in identifiers if value)
        ),
        version=position * 1_000,
        commit_time_us=position * 1_000,
        position=position,
        deleted=deleted,
    )


@st.composite
def crm_image(draw: st.DrawFn, key: RecordKey, position: int) -> SourceRecord:
    if draw(st.integers(0, 6)) == 0:
        return image(key, position, deleted=True)
    email = draw(st.none() | st.sampled_from(EMAILS))
    return image(
        key,
        position,
        [("crm_id", draw(st.sampled_from(CRM_IDS))), ("email", email)],
        {"person.given_name": draw(st.sampled_from(NAMES)), "contact.email": email},
    )


@st.composite
def loyalty_image(draw: st.DrawFn, key: RecordKey, position: int) -> SourceRecord:
    if draw(st.integers(0, 6)) == 0:
        return image(key, position, deleted=True)
    email = draw(st.none() | st.sampled_from(EMAILS))
    # None: the member's link to a CRM customer is absent (or was removed since the last image).
    crm_link = draw(st.none() | st.sampled_from(CRM_IDS))
    fields: dict[str, Any] = {
        "loyalty.tier": draw(st.sampled_from(TIERS)),
        "loyalty.points_balance": draw(st.integers(0, 500)),
        "contact.email": email,
    }
    if draw(st.booleans()):
        fields["person.given_name"] = draw(st.sampled_from(NAMES))
    return image(
        key,
        position,
        [
            ("loyalty_id", draw(st.sampled_from(LOYALTY_IDS))),
            ("crm_id", crm_link),
            ("email", email),
        ],
        fields,
    )


@st.composite
def activity_image(draw: st.DrawFn, key: RecordKey, position: int) -> SourceRecord:
    """An activity row (a points-ledger entry): one identifier, the member's or a CRM id."""
    if draw(st.integers(0, 6)) == 0:
        return image(key, position, deleted=True)
    identifier = draw(
        st.tuples(st.just("loyalty_id"), st.sampled_from(LOYALTY_IDS))
        | st.tuples(st.just("crm_id"), st.sampled_from(CRM_IDS))
    )
    return image(key, position, [identifier], {"loyalty.last_activity_at": position})


_IMAGES = {
    "public.customers": crm_image,
    "public.members": loyalty_image,
    "public.points_ledger": activity_image,
}


@st.composite
def history(draw: st.DrawFn, key: RecordKey) -> tuple[SourceRecord, ...]:
    """1 to 4 images of one record at increasing positions."""
    position = draw(st.integers(1, 30))
    images = []
    for _ in range(draw(st.integers(1, 4))):
        position += draw(st.integers(1, 10))
        images.append(draw(_IMAGES[key.table](key, position)))
    return tuple(images)


@dataclass(frozen=True)
class Scenario:
    """A population's histories and one way of delivering them in batches.

    Attributes:
        histories: Per record, its images in increasing position.
        order: The delivery order as record indices: the k-th occurrence of ``i`` delivers the k-th
            image of ``histories[i]`` (so each record's images stay in order).
        cuts: Where ``order`` is cut into batches.
        stale: ``(batch, record, pick)``: before/with fresh batch ``batch``, redeliver an image of
            ``record`` already delivered (an exact duplicate or an older one), chosen by ``pick``.
    """

    histories: tuple[tuple[SourceRecord, ...], ...]
    order: tuple[int, ...]
    cuts: tuple[int, ...]
    stale: tuple[tuple[int, int, int], ...]

    def all_images(self) -> list[SourceRecord]:
        return [r for h in self.histories for r in h]

    def fresh_batches(self) -> list[list[SourceRecord]]:
        cursors = [0] * len(self.histories)
        delivered: list[SourceRecord] = []
        for i in self.order:
            delivered.append(self.histories[i][cursors[i]])
            cursors[i] += 1
        bounds = [0, *self.cuts, len(delivered)]
        return [delivered[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def batches(self, *, mixed: bool) -> list[list[SourceRecord]]:
        """The fresh batches with the stale redeliveries added.

        A stale image of a record that has a fresh image in the same batch always rides along
        in that batch. Otherwise it gets a batch of its own just before (``mixed=False``), or is
        mixed into the fresh batch (``mixed=True``).
        """
        fresh = self.fresh_batches()
        result: list[list[SourceRecord]] = []
        delivered: dict[RecordKey, list[SourceRecord]] = {}
        for number, batch in enumerate(fresh):
            for record in batch:
                delivered.setdefault(record.key, []).append(record)
            in_batch = {r.key for r in batch}
            along: list[SourceRecord] = []
            alone: list[SourceRecord] = []
            for slot, index, pick in self.stale:
                key = self.histories[index % len(self.histories)][0].key
                if slot % len(fresh) != number or key not in delivered:
                    continue
                # Images of this record delivered so far (this batch's included).
                candidates = delivered[key]
                redelivered = candidates[pick % len(candidates)]
                (along if mixed or key in in_batch else alone).append(redelivered)
            if alone:
                result.append(alone)
            result.append(along[: len(along) // 2] + batch + along[len(along) // 2 :])
        return result


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n_crm = draw(st.integers(3, 8))
    n_loyalty = draw(st.integers(3, 8))
    n_activity = draw(st.integers(0, 6))
    keys = [crm_key(n) for n in range(1, n_crm + 1)]
    keys += [loyalty_key(n) for n in range(1, n_loyalty + 1)]
    keys += [activity_key(n) for n in range(1, n_activity + 1)]
    histories = tuple(draw(history(key)) for key in keys)
    slots = [i for i, h in enumerate(histories) for _ in h]
    order = tuple(draw(st.permutations(slots)))
    cuts = tuple(
        sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), min_size=1, max_size=6)))
    )
    stale = tuple(
        draw(
            st.lists(
                st.tuples(st.integers(0, 7), st.integers(0, 15), st.integers(0, 3)), max_size=8
            )
        )
    )
    return Scenario(histories, order, cuts, stale)


# --- applying and observing -------------------------------------------------------------------


def apply(store: ProfileStore, records: Sequence[SourceRecord]) -> int:
    """Apply one batch; returns how many change-log rows it appended."""
    with store.batch() as batch:
        rows = APPLIER.apply(
            batch,
            [
                IncomingRecord(r, {"source": r.key.source, "key": r.key.key, "lsn": r.position})
                for r in records
            ],
        )
    return len(rows)


def apply_all(store: ProfileStore, batches: Sequence[Sequence[SourceRecord]]) -> int:
    return sum(apply(store, batch) for batch in batches)


@dataclass(frozen=True)
class Observed:
    """The stored state, with profile ids replaced by the records they hold."""

    records: dict[RecordKey, tuple[Any, ...]]
    profiles: dict[frozenset[RecordKey], tuple[str, str, int, str]]


def _key(row: Any) -> RecordKey:
    return RecordKey(row.source, row.table_name, row.record_key)


def observe(store: ProfileStore) -> Observed:
    """Read the stored state and check its internal consistency (property 3, property 2's log)."""
    with store.engine.connect() as c:
        records = c.execute(select(t.source_records)).all()
        identifier_rows = c.execute(select(t.record_identifiers)).all()
        profiles = {r.profile_id: r for r in c.execute(select(t.profiles)).all()}
        aliases = c.execute(select(t.profile_aliases)).all()
        log = c.execute(
            select(
                t.change_log.c.sequence, t.change_log.c.profile_id, t.change_log.c.kind
            ).order_by(t.change_log.c.sequence)
        ).all()
    sequences = [row.sequence for row in log]
    last_kind = {row.profile_id: row.kind for row in log}
    head = store.head_sequence()

    # Property 2: gap-free change log.
    assert list(sequences) == list(range(1, head + 1)), f"change log {sequences}, head {head}"

    # Property 3: records, profiles and aliases hang together.
    members: dict[str, set[RecordKey]] = {}
    for row in records:
        if row.deleted:
            assert row.profile_id is None, f"deleted {_key(row)} still in {row.profile_id}"
        else:
            assert row.profile_id in profiles, f"{_key(row)} points at missing {row.profile_id}"
            members.setdefault(row.profile_id, set()).add(_key(row))
    for profile_id, profile in profiles.items():
        held = members.get(profile_id, set())
        assert held, f"profile {profile_id} holds no live record"
        assert profile.record_count == len(held), (
            f"profile {profile_id}: record_count {profile.record_count}, holds {sorted(held)}"
        )
    for alias in aliases:
        found = store.get_profile(alias.alias_id)
        if found is None:
            # Its survivor was deleted later (all its records are gone): then the alias resolves
            # to nothing, like the survivor's own id.
            survivor_deleted = last_kind.get(alias.profile_id) == "DELETED"
            assert survivor_deleted and alias.profile_id not in profiles, (
                f"alias {alias.alias_id} → {alias.profile_id} resolves to nothing"
            )
            event("an alias of a deleted profile")
        else:
            profile, was_alias = found
            assert was_alias and profile.profile_id == alias.profile_id
            assert profile.profile_id in profiles
    live_identifiers = {
        (typ, value, str(_key(row)))
        for row in records
        if not row.deleted
        for typ, value in row.identifiers
    }
    stored_identifiers = {(r.type, r.value, str(_key(r))) for r in identifier_rows}
    assert stored_identifiers == live_identifiers

    return Observed(
        records={
            _key(r): (
                canonical_json(r.fields),
                canonical_json(r.identifiers),
                r.version,
                r.commit_time_us,
                r.position,
                r.deleted,
            )
            for r in records
        },
        profiles={
            frozenset(members[p]): (
                # Each field with its provenance, compared against the recompute's own
                # rendering; then the stored document itself, which must not depend on history.
                canonical_json(profile_document.expand(profiles[p].fields)),
                canonical_json(profiles[p].identifiers),
                profiles[p].record_count,
                canonical_json(profiles[p].fields),
            )
            for p in profiles
        },
    )


def _field_json(value: FieldValue) -> dict[str, Any]:
    return {
        "value": value.value,
        "provenance": [
            {
                "source": p.source,
                "table": p.table,
                "record_key": p.record_key,
                "version": p.version,
                "commit_time_us": p.commit_time_us,
                "rule": p.rule,
            }
            for p in value.provenance
        ],
    }


def recompute(images: Sequence[SourceRecord]) -> Observed:
    """What the store should hold: the pure engine over the latest image of every record."""
    latest = latest_images(images)
    resolution = resolve_identities(latest, TYPES)
    by_key = {r.key: r for r in latest}
    profiles = {}
    for cluster in resolution.clusters:
        merged = merge_fields([by_key[k] for k in cluster], RULES)
        fields = {path: _field_json(value) for path, value in merged.items()}
        identifiers = sorted({(i.type, i.value) for k in cluster for i in by_key[k].identifiers})
        profiles[cluster] = (
            canonical_json(fields),
            canonical_json([list(i) for i in identifiers]),
            len(cluster),
            canonical_json(profile_document.encode(merged)),
        )
    records = {
        r.key: (
            canonical_json(dict(r.fields)),
            canonical_json(sorted([i.type, i.value] for i in r.identifiers)),
            r.version,
            r.commit_time_us,
            r.position,
            r.deleted,
        )
        for r in latest
    }
    return Observed(records, profiles)


def assert_same(actual: Observed, expected: Observed, what: str) -> None:
    assert actual.records == expected.records, f"{what}: stored record images differ"
    assert set(actual.profiles) == set(expected.profiles), (
        f"{what}: partition of records into profiles differs:\n"
        f"  actual   {sorted(sorted(map(str, c)) for c in actual.profiles)}\n"
        f"  expected {sorted(sorted(map(str, c)) for c in expected.profiles)}"
    )
    for cluster, profile in expected.profiles.items():
        assert actual.profiles[cluster] == profile, (
            f"{what}: profile of {sorted(map(str, cluster))} differs:\n"
            f"  actual   {actual.profiles[cluster]}\n  expected {profile}"
        )


def run(store: ProfileStore, scenario: Scenario, batches: list[list[SourceRecord]]) -> Observed:
    """Apply ``batches`` to an empty store; check properties 2 to 4; return the observed state."""
    reset(store)
    apply_all(store, batches)
    observed = observe(store)
    kinds = {c.kind for c in store.read_changes_after(0, limit=10_000)}
    event(f"{len(batches)} batches" if len(batches) < 4 else "4+ batches")
    for kind in sorted(kinds):
        event(f"change log has {kind}")
    if any(len(cluster) > 1 for cluster in observed.profiles):
        event("a profile holds several records")
    assert_same(observed, recompute(scenario.all_images()), "store vs pure recompute")
    head = store.head_sequence()
    # Redelivering the whole history (as it was batched, then at once) changes nothing.
    assert apply_all(store, batches) == 0
    assert apply(store, scenario.all_images()[::-1]) == 0
    assert store.head_sequence() == head
    assert observe(store) == observed
    return observed


# --- the properties ---------------------------------------------------------------------------


@HYPOTHESIS
@given(scenario=scenarios())
def test_any_batching_converges_to_the_recomputed_profiles(store, scenario):
    in_one = run(store, scenario, [scenario.all_images()])
    split = run(store, scenario, scenario.fresh_batches())
    assert_same(split, in_one, "split batches vs one batch")
    # Redeliveries and older images, alone in their batch or alongside newer images of the same
    # record, are ignored.
    with_stale = run(store, scenario, scenario.batches(mixed=False))
    assert_same(with_stale, in_one, "split batches with stale images vs one batch")


# The smallest history that shows the bug below: loyalty M1 joins CRM customer 1 through the crm
# link (one profile of two records); then a batch holds a new image of an unrelated CRM customer 2
# together with a redelivery of M1's image.
_M1 = image(
    loyalty_key(1),
    20,
    [("loyalty_id", "L1"), ("crm_id", "1")],
    {"loyalty.tier": "gold", "loyalty.points_balance": 10},
)
_STALE_WITH_FRESH = Scenario(
    histories=(
        (image(crm_key(1), 10, [("crm_id", "1")], {"person.given_name": "Anne"}),),
        (image(crm_key(2), 30, [("crm_id", "2")], {"person.given_name": "Bob"}),),
        (_M1,),
    ),
    order=(0, 2, 1),
    cuts=(2,),
    stale=((1, 2, 0),),
)



@HYPOTHESIS
@given(scenario=scenarios())
@example(scenario=_STALE_WITH_FRESH)
def test_stale_images_mixed_into_batches_of_other_records_are_ignored(store, scenario):
    in_one = run(store, scenario, [scenario.all_images()])
    mixed = run(store, scenario, scenario.batches(mixed=True))
    assert_same(mixed, in_one, "split batches with mixed-in stale images vs one batch")


def test_a_redelivery_next_to_an_unrelated_change_keeps_its_profile_whole(store):
    crm1 = image(crm_key(1), 10, [("crm_id", "1")], {"person.given_name": "Anne"})
    crm2 = image(crm_key(2), 30, [("crm_id", "2")], {"person.given_name": "Bob"})
    apply(store, [crm1, _M1])
    [(profile_id, before)] = [(p.profile_id, p) for p in store.all_profiles().values()]
    assert before.record_count == 2
    head = store.head_sequence()
    appended = apply(store, [crm2, _M1])  # _M1 is a redelivery: it must change nothing
    after, _ = store.get_profile(profile_id)
    assert after.record_count == 2  # actual: 1, while crm/1 and M1 both point at it
    assert after.fields == before.fields  # actual: person.given_name "Anne" (crm/1) is gone
    assert appended == 1  # only crm/2's CREATED; actual: also an UPDATED of the profile
    assert [c.kind for c in store.read_changes_after(head)] == ["CREATED"]


def test_an_activity_row_of_an_identifier_two_profiles_hold_joins_neither(store):
    # Two members share loyalty id L1 but carry different CRM ids (at most one per profile):
    # L1 links neither, so each is a profile of its own. A ledger entry of L1 arriving later
    # cannot tell whose it is: like a from-scratch resolution, it stays apart.
    m1 = image(loyalty_key(1), 10, [("loyalty_id", "L1"), ("crm_id", "1")], {"loyalty.tier": "gold"})
    m2 = image(loyalty_key(2), 11, [("loyalty_id", "L1"), ("crm_id", "2")], {"loyalty.tier": "silver"})
    entry = image(activity_key(1), 12, [("loyalty_id", "L1")], {"loyalty.last_activity_at": 12})
    observed = apply_and_compare(store, [[m1, m2], [entry]])
    assert frozenset({entry.key}) in observed.profiles


def test_an_activity_row_joins_its_members_profile_next_to_a_relinking_change(store):
    # The entry's member M1 is relinked in the same batch (its CRM link changes), which moves it
    # to customer 2's profile: the entry follows its member, as a from-scratch resolution says.
    crm1 = image(crm_key(1), 10, [("crm_id", "1")], {"person.given_name": "Anne"})
    crm2 = image(crm_key(2), 11, [("crm_id", "2")], {"person.given_name": "Bob"})
    m1 = image(loyalty_key(1), 12, [("loyalty_id", "L1"), ("crm_id", "1")], {"loyalty.tier": "gold"})
    m1_moved = image(
        loyalty_key(1), 20, [("loyalty_id", "L1"), ("crm_id", "2")], {"loyalty.tier": "gold"}
    )
    entry = image(activity_key(1), 21, [("loyalty_id", "L1")], {"loyalty.last_activity_at": 21})
    observed = apply_and_compare(store, [[crm1, crm2, m1], [m1_moved, entry]])
    assert frozenset({crm2.key, m1.key, entry.key}) in observed.profiles


def apply_and_compare(store: ProfileStore, batches: list[list[SourceRecord]]) -> Observed:
    """Apply ``batches`` to an empty store; it must equal the pure recompute (properties 2 to 4)."""
    reset(store)
    apply_all(store, batches)
    observed = observe(store)
    assert_same(observed, recompute([r for b in batches for r in b]), "store vs pure recompute")
    return observed
