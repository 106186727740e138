"""Record images applied to the real profile store: merges, splits, deletes, redeliveries."""

from __future__ import annotations

import pytest

from unified_profile.server.engine.identity import IdentifierType
from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord
from unified_profile.server.engine.survivorship import Rule, RuleSet
from unified_profile.server.ingest.applier import IncomingRecord, ProfileApplier
from unified_profile.server.store.profile_reads import ProfileReads
from unified_profile.server.store.profile_store import ProfileStore, StoreError

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


def crm(key: int, position: int, *, email: str | None = None, name: str = "Anne",
        deleted: bool = False) -> SourceRecord:
    identifiers = {Identifier("crm_id", str(key))}
    if email:
        identifiers.add(Identifier("email", email))
    return SourceRecord(
        key=RecordKey.of("crm", "public.customers", {"id": key}),
        fields={} if deleted else {"person.given_name": name, "contact.email": email},
        identifiers=frozenset() if deleted else frozenset(identifiers),
        version=position * 1_000,
        commit_time_us=position * 1_000,
        position=position,
        deleted=deleted,
    )


def member(key: str, position: int, *, crm_id: int | None, tier: str = "gold",
           points: int = 100) -> SourceRecord:
    identifiers = {Identifier("loyalty_id", key)}
    if crm_id is not None:
        identifiers.add(Identifier("crm_id", str(crm_id)))
    return SourceRecord(
        key=RecordKey.of("loyalty", "public.members", {"member_id": key}),
        fields={"loyalty.tier": tier, "loyalty.points_balance": points,
                "person.given_name": "Annie"},
        identifiers=frozenset(identifiers),
        version=position * 1_000,
        commit_time_us=position * 1_000,
        position=position,
    )


def apply(store: ProfileStore, *records: SourceRecord) -> list[tuple[str, str, dict]]:
    applier = ProfileApplier(TYPES, RULES)
    with store.batch() as batch:
        rows = applier.apply(batch, [
            IncomingRecord(r, {"source": r.key.source, "key": r.key.key, "lsn": r.position})
            for r in records
        ])
    return [(row.profile_id, row.kind, row.related) for row in rows]


def values(store: ProfileStore, profile_id: str) -> dict[str, object]:
    found = store.get_profile(profile_id)
    assert found is not None
    return {path: field["value"] for path, field in found[0].fields.items()}


def test_crm_and_loyalty_records_of_one_person_become_one_profile(store):
    [(anne, kind, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    assert kind == "CREATED"
    assert apply(store, member("L1", 20, crm_id=1)) == [(anne, "UPDATED", {})]
    assert values(store, anne) == {
        "person.given_name": "Anne",          # CRM owns master data
        "contact.email": "anne@example.com",
        "loyalty.tier": "gold",               # loyalty owns points and tier
        "loyalty.points_balance": 100,
    }
    assert [c.kind for c in store.read_changes_after(0)] == ["CREATED", "UPDATED"]


def test_two_profiles_linked_later_merge_and_the_older_id_survives(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    [(annie, _, _)] = apply(store, member("L1", 11, crm_id=None))
    assert anne != annie
    changes = apply(store, member("L1", 12, crm_id=1))
    assert changes[0] == (anne, "MERGED", {"merged": annie})
    profile, was_alias = store.get_profile(annie)
    assert was_alias and profile.profile_id == anne
    assert values(store, anne)["loyalty.tier"] == "gold"


def test_several_profiles_are_read_together_following_aliases(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    [(annie, _, _)] = apply(store, member("L1", 11, crm_id=None))
    [(bob, _, _)] = apply(store, crm(2, 12, name="Bob"))
    apply(store, member("L1", 13, crm_id=1))  # annie merges into anne
    # What a subscription with include_profile reads for each message.
    found = ProfileReads.of(store).get_profiles({annie, bob, "p_unknown", anne})
    assert {i: (r.profile.profile_id, r.via_alias) for i, r in found.items()} == {
        annie: (anne, True), anne: (anne, False), bob: (bob, False),
    }
    assert found[annie].profile == store.get_profile(anne)[0]


def test_a_cleared_link_splits_the_profile_and_both_parts_are_right(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    apply(store, member("L1", 20, crm_id=1, tier="silver"))
    changes = apply(store, member("L1", 30, crm_id=None, tier="gold"))
    kinds = [(kind, related) for _, kind, related in changes]
    assert kinds[0][0] == "SPLIT" and changes[0][0] == anne
    new_id = kinds[0][1]["split_into"]
    assert ("CREATED", {"split_from": anne}) in kinds
    assert "loyalty.tier" not in values(store, anne)
    assert values(store, new_id)["loyalty.tier"] == "gold"
    assert values(store, new_id)["person.given_name"] == "Annie"


def test_a_household_email_does_not_merge_two_crm_customers(store):
    apply(store, crm(1, 10, email="family@example.com", name="Anne"))
    apply(store, crm(2, 11, email="family@example.com", name="Bob"))
    profiles = store.all_profiles()
    assert len(profiles) == 2


def test_redelivered_and_older_images_change_nothing(store):
    apply(store, crm(1, 10, email="anne@example.com"))
    head = store.head_sequence()
    assert apply(store, crm(1, 10, email="anne@example.com")) == []
    assert apply(store, crm(1, 5, email="old@example.com", name="Old")) == []
    assert store.head_sequence() == head


def test_deleting_the_last_record_deletes_the_profile(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    assert apply(store, crm(1, 11, deleted=True)) == [(anne, "DELETED", {})]
    assert store.get_profile(anne) is None


def test_change_log_sequences_are_gap_free_across_batches(store):
    apply(store, crm(1, 10, email="a@example.com"))
    apply(store, crm(2, 11, email="b@example.com"), member("L2", 12, crm_id=2))
    apply(store, crm(1, 13, email="a2@example.com"))
    sequences = [c.sequence for c in store.read_changes_after(0)]
    assert sequences == list(range(1, len(sequences) + 1))
    assert store.head_sequence() == sequences[-1]


def test_steward_force_link_merges_and_never_link_splits_for_good(store):
    from unified_profile.server.ingest.steward import clear_link_override, set_link_override

    applier = ProfileApplier(TYPES, RULES)
    apply(store, crm(4, 10, email="family@example.com", name="John"))
    apply(store, crm(5, 11, email="family@example.com", name="Mary"))
    apply(store, crm(1, 12, email="anne@example.com"), member("L1", 13, crm_id=1))
    john, mary = crm(4, 0).key, crm(5, 0).key
    anne, annes_membership = crm(1, 0).key, member("L1", 0, crm_id=1).key

    changes = set_link_override(store, applier, "force", john, mary, "steward@crm", "same person")
    assert changes[0].kind == "MERGED"  # then UPDATED: the fields now merge
    assert len(store.all_profiles()) == 2

    changes = set_link_override(store, applier, "never", anne, annes_membership, "steward@crm",
                                "different Annes")
    kinds = [c.kind for c in changes]
    assert kinds[0] == "SPLIT" and {"CREATED", "UPDATED"} <= set(kinds)
    # A later change to the membership (still naming crm_id 1) does not undo the decision.
    apply(store, member("L1", 30, crm_id=1, tier="platinum"))
    assert len(store.all_profiles()) == 3

    changes = clear_link_override(store, applier, anne, annes_membership, "steward@crm")
    assert "MERGED" in [c.kind for c in changes]
    assert len(store.all_profiles()) == 2


# --- updates that keep their identifiers (links unchanged: fields recomputed only) ------------


def test_an_update_keeping_its_identifiers_recomputes_the_merged_fields_only(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"), member("L1", 11, crm_id=1))
    changes = apply(store, member("L1", 12, crm_id=1, tier="platinum", points=900))
    assert changes == [(anne, "UPDATED", {})]
    assert values(store, anne) == {
        "person.given_name": "Anne",
        "contact.email": "anne@example.com",
        "loyalty.tier": "platinum",
        "loyalty.points_balance": 900,
    }
    [logged] = store.read_changes_after(store.head_sequence() - 1)
    assert logged.changes == {
        "loyalty.points_balance": {"old": 100, "new": 900},
        "loyalty.tier": {"old": "gold", "new": "platinum"},
    }
    # The identifier rows still resolve both records to the profile.
    assert store.find_profile(Identifier("loyalty_id", "L1")) == anne
    assert store.find_profile(Identifier("email", "anne@example.com")) == anne


def test_an_unchanged_link_update_next_to_a_split_of_its_profile_lands_in_the_right_part(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"), member("L1", 11, crm_id=1))
    # One batch: the CRM record changes its name (same identifiers) and the membership drops
    # its link, which splits the profile the CRM record is in.
    changes = apply(store, crm(1, 20, email="anne@example.com", name="Anna"),
                    member("L1", 21, crm_id=None, tier="silver"))
    kinds = [kind for _, kind, _ in changes]
    assert kinds[0] == "SPLIT"
    assert values(store, anne) == {"person.given_name": "Anna", "contact.email": "anne@example.com"}
    [split_off] = [p for p in store.all_profiles() if p != anne]
    assert values(store, split_off)["loyalty.tier"] == "silver"


def test_an_unchanged_link_update_next_to_a_record_joining_its_profile_is_kept(store):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    changes = apply(store, crm(1, 20, email="anne@example.com", name="Anna"),
                    member("L1", 21, crm_id=1, tier="silver"))
    assert {(profile, kind) for profile, kind, _ in changes} == {(anne, "UPDATED")}
    assert values(store, anne) == {
        "person.given_name": "Anna",
        "contact.email": "anne@example.com",
        "loyalty.tier": "silver",
        "loyalty.points_balance": 100,
    }
    [profile] = store.all_profiles().values()
    assert profile.record_count == 2


def test_a_write_failing_among_the_batchs_writes_fails_the_whole_batch(store):
    """The batch's writes are sent together; one failing must still leave nothing behind."""
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    head = store.head_sequence()
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'change log refused for this test'; END $$"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON up_change_log "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    # The change-log insert sits between the record upsert before it and the profile upsert
    # after it.
    with pytest.raises(StoreError, match="change log refused for this test"):
        apply(store, crm(1, 11, email="anne@example.com", name="Anna"), crm(2, 12))
    assert store.head_sequence() == head
    assert values(store, anne)["person.given_name"] == "Anne"
    assert store.find_profile(Identifier("crm_id", "2")) is None

    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER refuse ON up_change_log")
    # The pooled connection that failed is usable again, and the batch applies in full.
    assert [kind for _, kind, _ in apply(store, crm(1, 11, email="anne@example.com",
                                                    name="Anna"), crm(2, 12))] == \
        ["UPDATED", "CREATED"]
    assert values(store, anne)["person.given_name"] == "Anna"


def test_positions_are_committed_with_the_batch_whether_or_not_it_writes_anything_else(store):
    """Positions are sent with the applier's writes; a batch with none (all redeliveries) must
    still store them, and a failed batch must store none."""
    apply(store, crm(1, 10, email="anne@example.com"))
    applier = ProfileApplier(TYPES, RULES)
    with store.batch() as batch:
        batch.save_positions("engine", {"source:crm": 10})
        redelivered = IncomingRecord(crm(1, 10, email="anne@example.com"), {"source": "crm"})
        assert applier.apply(batch, [redelivered]) == []
    assert store.load_positions("engine") == {"source:crm": 10}

    with store.batch() as batch:
        batch.save_positions("engine", {"source:crm": 11})
        applier.apply(batch, [IncomingRecord(crm(2, 11), {"source": "crm"})])
    assert store.load_positions("engine") == {"source:crm": 11}

    with pytest.raises(RuntimeError, match="stop"), store.batch() as batch:
        batch.save_positions("engine", {"source:crm": 12})
        raise RuntimeError("stop")
    assert store.load_positions("engine") == {"source:crm": 11}


def test_record_images_and_profiles_are_stored_exactly_as_sent(store):
    """Images and profile documents travel to the store as one array per column: text full of
    quotes, backslashes and non-ASCII, integers beyond 64 bits, nested values, a missing version
    and a deleted record's missing profile must all come back as they were."""
    awkward = 'Zoë "Z" O\'Brien \\ {a,b} ☃\ttab'
    odd = SourceRecord(
        key=RecordKey.of("crm", "public.customers", {"id": 7, "region": 'eu"1\\'}),
        fields={
            "person.given_name": awkward,
            "traits.big": 2**70,
            "traits.nested": {"a": [1, None, "b"], "c": {"d": 0.5}},
        },
        identifiers=frozenset({Identifier("crm_id", awkward), Identifier("email", "z@example.com")}),
        version=None,
        commit_time_us=5_000,
        position=5,
    )
    gone = crm(8, 6, deleted=True)
    [(profile_id, kind, _)] = apply(store, odd, gone)
    assert kind == "CREATED"

    stored = store.records([odd.key, gone.key])
    assert stored[odd.key].record == odd
    assert stored[odd.key].profile_id == profile_id
    assert stored[gone.key].record == gone
    assert stored[gone.key].profile_id is None
    assert values(store, profile_id) == odd.fields
    found = store.get_profile(profile_id)
    assert found is not None
    assert found[0].identifiers == [["crm_id", awkward], ["email", "z@example.com"]]
