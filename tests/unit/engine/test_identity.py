"""Unit tests for server/engine/identity.py: which source records are the same person."""

from __future__ import annotations

import pytest

from tests.unit.engine import key, record
from unified_profile.server.engine.identity import (
    IdentifierType,
    IdentityConflict,
    Link,
    LinkOverride,
    cluster_of,
    latest_images,
    normalize_identifier,
    resolve_identities,
)
from unified_profile.server.engine.records import Identifier, SourceRecord

TYPES = {
    "crm_id": IdentifierType("crm_id", max_per_profile=1),
    "loyalty_id": IdentifierType("loyalty_id", max_per_profile=1),
    "email": IdentifierType("email", normalize=("trim", "lower"), max_per_profile=5),
    "phone": IdentifierType("phone", normalize=("digits",)),
}


def clusters_of(
    *records: SourceRecord, overrides: tuple[LinkOverride, ...] = ()
) -> set[frozenset[str]]:
    """Clusters as sets of ``source:id`` labels, easy to read in an assertion."""
    resolution = resolve_identities(records, TYPES, overrides)
    return {frozenset(f"{k.source}:{k.key[6:-1]}" for k in c) for c in resolution.clusters}


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "raw", "expected"),
    [
        (TYPES["email"], "  Ada@Example.COM ", "ada@example.com"),
        (TYPES["phone"], "+1 (555) 010-9999", "15550109999"),
        (
            IdentifierType("name", normalize=("collapse_spaces",)),
            " Ada   Lovelace ",
            "Ada Lovelace",
        ),
        (TYPES["crm_id"], 42, "42"),
        (TYPES["crm_id"], 42.0, "42"),
        (TYPES["crm_id"], " C-17 ", "C-17"),
        (TYPES["crm_id"], None, None),
        (TYPES["crm_id"], float("nan"), None),
    ],
)
def test_normalize(type_: IdentifierType, raw: object, expected: str | None) -> None:
    assert normalize_identifier(type_, raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "null", "NULL", "None", "-1", "0", "000", "0-0-0", "Anonymous", "N/A", "unknown"],
)
def test_default_blocked_values_identify_nobody(raw: str) -> None:
    assert normalize_identifier(TYPES["email"], raw) is None
    assert normalize_identifier(TYPES["crm_id"], raw) is None


def test_blocked_after_normalisation_and_by_regex() -> None:
    phone = IdentifierType("phone", normalize=("digits",), blocked=("^(5)\\1+$", "123"))
    assert normalize_identifier(phone, "(555) 555") is None  # regex on the digits
    assert normalize_identifier(phone, "1-2-3") is None  # exact value after normalisation
    assert normalize_identifier(phone, "1234") == "1234"  # a regex must match the whole value
    assert normalize_identifier(phone, "0") == "0"  # a custom list replaces the defaults
    assert normalize_identifier(phone, "n/a") is None  # but empty is never an identifier


@pytest.mark.parametrize("raw", [True, ["a@x"], {"a": 1}])
def test_non_scalar_values_are_refused(raw: object) -> None:
    with pytest.raises(TypeError):
        normalize_identifier(TYPES["email"], raw)


def test_identifier_type_validation() -> None:
    with pytest.raises(ValueError, match="unknown normalize"):
        IdentifierType("x", normalize=("upper",))
    with pytest.raises(ValueError, match="max_per_profile"):
        IdentifierType("x", max_per_profile=0)
    with pytest.raises(ValueError, match="blocked regex"):
        IdentifierType("x", blocked=("^(",))


# --- linking ---------------------------------------------------------------------------------


def test_crm_customer_and_loyalty_member_merge_via_link_column() -> None:
    customer = record("crm", 1, ids={"crm_id": "1", "email": "ada@x.org"})
    member = record("loyalty", 10, ids={"loyalty_id": "10", "crm_id": "1", "email": "ada@y.org"})
    other = record("loyalty", 11, ids={"loyalty_id": "11", "crm_id": "2"})
    resolution = resolve_identities([customer, member, other], TYPES)
    assert resolution.clusters == (frozenset({customer.key, member.key}), frozenset({other.key}))
    assert resolution.links == (Link(customer.key, member.key, Identifier("crm_id", "1")),)
    assert resolution.conflicts == ()
    assert cluster_of(resolution, member.key) == {customer.key, member.key}


def test_household_email_does_not_merge_two_crm_customers() -> None:
    a = record("crm", 1, ids={"crm_id": "1", "email": "home@x.org"})
    b = record("crm", 2, ids={"crm_id": "2", "email": "home@x.org"})
    resolution = resolve_identities([a, b], TYPES)
    assert resolution.clusters == (frozenset({a.key}), frozenset({b.key}))
    assert resolution.links == ()
    (conflict,) = resolution.conflicts
    assert conflict.identifier == Identifier("email", "home@x.org")
    assert conflict.records == (a.key, b.key)
    assert "crm_id max_per_profile 1" in conflict.reason


def test_ambiguous_value_links_none_of_its_records() -> None:
    # All or nothing: the loyalty member with only the household email is attached to neither.
    a = record("crm", 1, ids={"crm_id": "1", "email": "home@x.org"})
    b = record("crm", 2, ids={"crm_id": "2", "email": "home@x.org"})
    c = record("loyalty", 10, ids={"loyalty_id": "10", "email": "home@x.org"})
    resolution = resolve_identities([a, b, c], TYPES)
    assert len(resolution.clusters) == 3
    assert resolution.conflicts[0].records == (a.key, b.key, c.key)


def test_email_limit_counts_distinct_values() -> None:
    types = {**TYPES, "email": IdentifierType("email", max_per_profile=2)}
    a = record("crm", 1, ids={"email": ["a@x", "b@x"], "phone": "1"})
    b = record("loyalty", 1, ids={"email": ["a@x", "b@x"], "phone": "1"})
    c = record("pos", 1, ids={"email": "c@x", "phone": "1"})
    resolution = resolve_identities([a, b, c], types)
    # The phone would give one profile three emails, so it links nobody; the emails link a and b.
    assert resolution.clusters == (frozenset({a.key, b.key}), frozenset({c.key}))
    assert [c.identifier for c in resolution.conflicts] == [Identifier("phone", "1")]


def test_email_change_splits_the_profile() -> None:
    customer = record("crm", 1, ids={"crm_id": "1", "email": "ada@x.org"}, position=100)
    member = record("loyalty", 10, ids={"loyalty_id": "10", "email": "ada@x.org"})
    assert clusters_of(customer, member) == {frozenset({"crm:1", "loyalty:10"})}
    changed = record("crm", 1, ids={"crm_id": "1", "email": "ada@new.org"}, position=200)
    expected = {frozenset({"crm:1"}), frozenset({"loyalty:10"})}
    assert clusters_of(changed, member) == expected
    # Old and new image together: the newer position is the record's state.
    assert clusters_of(customer, changed, member) == expected


@pytest.mark.parametrize("how", ["delete", "soft delete"])
def test_deleted_record_forms_no_link_and_no_cluster(how: str) -> None:
    # The mapping turns both a DELETE and a soft-delete marker into deleted=True.
    a = record("crm", 1, ids={"crm_id": "1", "email": "ada@x.org"})
    bridge = record("pos", 5, ids={"email": "ada@x.org", "phone": "555"}, deleted=True)
    b = record("loyalty", 10, ids={"loyalty_id": "10", "phone": "555"})
    resolution = resolve_identities([a, bridge, b], TYPES)
    assert resolution.clusters == (frozenset({a.key}), frozenset({b.key}))
    assert resolution.links == ()
    with pytest.raises(KeyError):
        cluster_of(resolution, bridge.key)
    alive = record("pos", 5, ids={"email": "ada@x.org", "phone": "555"})
    assert clusters_of(a, alive, b) == {frozenset({"crm:1", "pos:5", "loyalty:10"})}


def test_blocked_and_undeclared_identifiers_link_nothing() -> None:
    # Images mapped under an older config may still carry values blocked or types dropped since.
    a = record("crm", 1, ids={"email": "anonymous", "device": "d1"})
    b = record("loyalty", 1, ids={"email": "anonymous", "device": "d1"})
    assert clusters_of(a, b) == {frozenset({"crm:1"}), frozenset({"loyalty:1"})}


def test_transitive_links_are_greedy_in_type_order() -> None:
    # a-b share an email, b-c a phone, c has another crm_id than a. "email" < "phone": the email
    # joins a and b first, then the phone would put two crm_ids in one profile and is refused.
    a = record("crm", 1, ids={"crm_id": "1", "email": "ada@x.org"})
    b = record("loyalty", 10, ids={"email": "ada@x.org", "phone": "555"})
    c = record("crm", 2, ids={"crm_id": "2", "phone": "555"})
    resolution = resolve_identities([c, b, a], TYPES)
    assert resolution.clusters == (frozenset({a.key, b.key}), frozenset({c.key}))
    assert resolution.conflicts == (
        IdentityConflict(
            Identifier("phone", "555"),
            (c.key, b.key),
            "crm_id max_per_profile 1: the profile would hold 2 values (1, 2)",
        ),
    )
    # Rename the phone type so it sorts first: now b joins c instead.
    types = {**TYPES, "a_phone": IdentifierType("a_phone", normalize=("digits",))}
    b2 = record("loyalty", 10, ids={"email": "ada@x.org", "a_phone": "555"})
    c2 = record("crm", 2, ids={"crm_id": "2", "a_phone": "555"})
    resolution = resolve_identities([a, b2, c2], types)
    assert resolution.clusters == (frozenset({a.key}), frozenset({c2.key, b2.key}))


def test_types_limited_to_one_come_first_whatever_their_name() -> None:
    # "zz_id" sorts after "email" but, limited to one per profile, it is the stronger evidence.
    types = {**TYPES, "zz_id": IdentifierType("zz_id", max_per_profile=1)}
    a = record("crm", 1, ids={"crm_id": "1", "email": "ada@x.org"})
    b = record("loyalty", 10, ids={"email": "ada@x.org", "zz_id": "z"})
    c = record("crm", 2, ids={"crm_id": "2", "zz_id": "z"})
    resolution = resolve_identities([a, b, c], types)
    assert resolution.clusters == (frozenset({a.key}), frozenset({c.key, b.key}))


# --- steward overrides -----------------------------------------------------------------------


def test_never_link_keeps_records_apart() -> None:
    a = record("crm", 1, ids={"email": "ada@x.org"})
    b = record("loyalty", 10, ids={"email": "ada@x.org"})
    never = LinkOverride("never", b.key, a.key)
    resolution = resolve_identities([a, b], TYPES, [never])
    assert len(resolution.clusters) == 2
    (conflict,) = resolution.conflicts
    assert conflict.reason == f"never-link between {a.key} and {b.key}"


def test_never_link_holds_across_a_chain() -> None:
    a = record("crm", 1, ids={"email": "ada@x.org"})
    b = record("pos", 5, ids={"email": "ada@x.org", "phone": "555"})
    c = record("loyalty", 10, ids={"phone": "555"})
    resolution = resolve_identities([a, b, c], TYPES, [LinkOverride("never", a.key, c.key)])
    assert resolution.clusters == (frozenset({a.key, b.key}), frozenset({c.key}))
    assert resolution.conflicts[0].identifier == Identifier("phone", "555")


def test_force_link_joins_records_and_beats_limits() -> None:
    a = record("crm", 1, ids={"crm_id": "1"})
    b = record("crm", 2, ids={"crm_id": "2"})
    linked = record("loyalty", 10, ids={"crm_id": "1"})  # brings no new crm_id: may join
    other = record("loyalty", 11, ids={"crm_id": "1", "phone": "9"})
    third = record("pos", 1, ids={"crm_id": "3", "phone": "9"})  # a third crm_id: may not
    force = LinkOverride("force", b.key, a.key)
    resolution = resolve_identities([a, b, linked, other, third], TYPES, [force])
    assert cluster_of(resolution, a.key) == {a.key, b.key, linked.key, other.key}
    assert cluster_of(resolution, third.key) == {third.key}
    assert resolution.links[0] == Link(a.key, b.key, "steward")


def test_never_link_beats_force_link() -> None:
    a, b = record("crm", 1), record("loyalty", 10)
    overrides = [LinkOverride("force", a.key, b.key), LinkOverride("never", b.key, a.key)]
    resolution = resolve_identities([a, b], TYPES, overrides)
    assert len(resolution.clusters) == 2
    assert resolution.conflicts[0].identifier == "steward"


def test_overrides_are_order_insensitive_and_ignore_absent_records() -> None:
    a, b = key("crm", 1), key("loyalty", 2)
    assert LinkOverride("force", a, b) == LinkOverride("force", b, a)
    stale = LinkOverride("force", key("crm", 1), key("crm", 99))  # crm 99 is gone
    assert clusters_of(record("crm", 1), overrides=(stale,)) == {frozenset({"crm:1"})}


# --- inputs and scale ------------------------------------------------------------------------


def test_latest_images_keep_the_highest_position() -> None:
    old = record("crm", 1, fields={"x": 1}, position=5)
    new = record("crm", 1, fields={"x": 2}, position=9)
    assert latest_images([new, old, new]) == [new]
    with pytest.raises(ValueError, match="two different images"):
        latest_images([old, record("crm", 1, fields={"x": 3}, position=5)])


def test_tens_of_thousands_of_records() -> None:
    # 10,000 people, each a CRM row and a loyalty member linked by crm_id and sharing an email,
    # every pair of people sharing a household phone: 20,000 records, 10,000 profiles.
    records = []
    for i in range(1, 10_001):  # "0" is a blocked placeholder
        household = f"555{(i + 1) // 2}"
        crm_ids = {"crm_id": str(i), "email": f"p{i}@x", "phone": household}
        loyalty_ids = {"loyalty_id": str(i), "crm_id": str(i), "email": f"p{i}@x"}
        records += [record("crm", i, ids=crm_ids), record("loyalty", i, ids=loyalty_ids)]
    resolution = resolve_identities(records, TYPES)
    assert len(resolution.clusters) == 10_000
    assert len(resolution.conflicts) == 5_000  # one refused household phone per pair
    assert all(len(c) == 2 for c in resolution.clusters)


def test_override_of_a_record_with_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="two different records"):
        LinkOverride("never", key("crm", 1), key("crm", 1))
