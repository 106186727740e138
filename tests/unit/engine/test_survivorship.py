"""Unit tests for server/engine/survivorship.py: which value of each field path wins."""

from __future__ import annotations

import pytest

from tests.unit.engine import record
from unified_profile.server.engine.records import SourceRecord
from unified_profile.server.engine.survivorship import (
    Candidate,
    Provenance,
    Rule,
    RuleSet,
    default_rules,
    explain_field,
    merge_fields,
)

LWW = Rule("last_writer_wins", ("crm", "loyalty"))
RULES = RuleSet(
    default=LWW,
    patterns=(
        ("person.*", Rule("source_priority", ("crm", "loyalty"))),
        ("loyalty.*", Rule("source_priority", ("loyalty",))),
        ("loyalty.lifetime_points", Rule("max")),
        ("consent.*", Rule("most_restrictive")),
        ("traits.visits", Rule("sum")),
        ("traits.emails", Rule("union")),
        ("traits.first_seen", Rule("min")),
    ),
)


def values(records: list[SourceRecord], rules: RuleSet = RULES) -> dict[str, object]:
    return {path: fv.value for path, fv in merge_fields(records, rules).items()}


def winner(records: list[SourceRecord], path: str, rules: RuleSet = RULES) -> str:
    """``source:id`` of the record whose value won ``path``."""
    (provenance,) = merge_fields(records, rules)[path].provenance
    return f"{provenance.source}:{provenance.record_key[6:-1]}"


# --- rule lookup -----------------------------------------------------------------------------


def test_most_specific_pattern_wins() -> None:
    a, b, c, d, e = (Rule("last_writer_wins", (s,)) for s in "abcde")
    rules = RuleSet(
        default=a,
        patterns=(("*", b), ("person.*", c), ("person.address.*", d), ("person.name", e)),
    )
    assert rules.rule_for("person.name") is e
    assert rules.rule_for("person.address.city") is d
    assert rules.rule_for("person.birth_date") is c
    assert rules.rule_for("personal.x") is b  # person.* means the person group, not a text prefix
    assert rules.rule_for("person") is b
    assert RuleSet(default=a, patterns=(("person.*", c),)).rule_for("loyalty.tier") is a


@pytest.mark.parametrize("pattern", ["", "person.*.granted", "*.x", "person*", ".*"])
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="rule pattern"):
        RuleSet(default=LWW, patterns=((pattern, LWW),))


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="given twice"):
        RuleSet(default=LWW, patterns=(("a.*", LWW), ("a.*", LWW)))
    with pytest.raises(ValueError, match="unknown rule"):
        Rule("newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="listed twice"):
        Rule("source_priority", ("crm", "crm"))


def test_default_rules_are_last_writer_wins_for_consent_too() -> None:
    rules = default_rules()
    assert rules.rule_for("person.given_name").kind == "last_writer_wins"
    assert rules.rule_for("consent.email_marketing.granted").kind == "last_writer_wins"


# --- source_priority -------------------------------------------------------------------------


def test_source_priority_falls_back_when_null_or_absent() -> None:
    crm = record("crm", 1, fields={"person.given_name": "Ada", "person.family_name": None})
    loyalty = record(
        "loyalty",
        1,
        fields={
            "person.given_name": "Adah",
            "person.family_name": "King",
            "person.birth_date": "1815-12-10",
        },
        version=10**9,  # much newer: irrelevant to source_priority
    )
    assert values([loyalty, crm]) == {
        "person.given_name": "Ada",
        "person.family_name": "King",
        "person.birth_date": "1815-12-10",
    }


def test_source_priority_unlisted_sources_come_after_by_name() -> None:
    rule = RuleSet(default=Rule("source_priority", ("loyalty",)))
    records = [record("pos", 1, fields={"x": "pos"}), record("crm", 1, fields={"x": "crm"})]
    assert values(records, rule) == {"x": "crm"}
    assert values([*records, record("loyalty", 1, fields={"x": "loyalty"})], rule) == {
        "x": "loyalty"
    }


def test_source_priority_newest_record_of_the_winning_source() -> None:
    old = record("crm", 1, fields={"person.given_name": "Ada"}, version=100, commit=900)
    new = record("crm", 2, fields={"person.given_name": "Augusta"}, version=200, commit=100)
    assert winner([new, old], "person.given_name") == "crm:2"
    # Same version: the later commit (same database, so comparable), then the smaller key.
    tie = record("crm", 3, fields={"person.given_name": "A."}, version=200, commit=150)
    assert winner([new, old, tie], "person.given_name") == "crm:3"
    twin = record("crm", 0, fields={"person.given_name": "Twin"}, version=200, commit=150)
    assert winner([new, old, tie, twin], "person.given_name") == "crm:0"


def test_points_come_only_from_loyalty() -> None:
    crm = record("crm", 1, fields={"loyalty.points_balance": 9999}, version=2_000)
    member = record("loyalty", 1, fields={"loyalty.points_balance": 120}, version=1_000)
    assert values([crm, member]) == {"loyalty.points_balance": 120}
    assert winner([crm, member], "loyalty.points_balance") == "loyalty:1"


# --- last_writer_wins ------------------------------------------------------------------------


def test_last_writer_wins_by_version_then_commit_time() -> None:
    older = record("loyalty", 1, fields={"contact.email": "old@x"}, version=100, commit=999)
    newer = record("crm", 1, fields={"contact.email": "new@x"}, version=200, commit=1)
    assert values([older, newer]) == {"contact.email": "new@x"}
    # No version: the commit time stands in (versions and commit times are both µs timestamps).
    unversioned = record("pos", 1, fields={"contact.email": "pos@x"}, commit=300)
    assert values([older, newer, unversioned]) == {"contact.email": "pos@x"}


def test_last_writer_wins_never_compares_positions() -> None:
    # Positions are LSNs of different databases: a huge one says nothing about recency.
    older = record("crm", 1, fields={"contact.phone": "1"}, version=100, position=10**12)
    newer = record("loyalty", 1, fields={"contact.phone": "2"}, version=200, position=1)
    assert values([older, newer]) == {"contact.phone": "2"}


def test_last_writer_wins_ties_by_source_priority_then_key() -> None:
    loyalty = record("loyalty", 1, fields={"contact.phone": "L"}, version=100)
    crm = record("crm", 2, fields={"contact.phone": "C2"}, commit=100)
    assert winner([loyalty, crm], "contact.phone") == "crm:2"
    crm1 = record("crm", 1, fields={"contact.phone": "C1"}, version=100)
    assert winner([loyalty, crm, crm1], "contact.phone") == "crm:1"


# --- consent ---------------------------------------------------------------------------------

GRANTED = "consent.email_marketing.granted"


def test_consent_revoked_in_loyalty_beats_older_crm_grant_last_writer_wins() -> None:
    crm = record("crm", 1, fields={GRANTED: True}, version=1_000)
    loyalty = record("loyalty", 1, fields={GRANTED: False}, version=2_000)
    assert values([crm, loyalty], default_rules()) == {GRANTED: False}
    # ...and, with timestamps, a later grant wins back: that is why it is the default.
    regrant = record("crm", 1, fields={GRANTED: True}, version=3_000)
    assert values([regrant, loyalty], default_rules()) == {GRANTED: True}


def test_consent_revoked_beats_grant_under_most_restrictive() -> None:
    crm = record("crm", 1, fields={GRANTED: True}, commit=3_000)
    loyalty = record("loyalty", 1, fields={GRANTED: False}, commit=2_000)
    assert values([crm, loyalty]) == {GRANTED: False}
    assert winner([crm, loyalty], GRANTED) == "loyalty:1"
    assert values([crm]) == {GRANTED: True}


# --- aggregates and comparisons --------------------------------------------------------------


def test_max_and_min_with_ties_to_the_last_writer() -> None:
    a = record(
        "loyalty",
        1,
        fields={"loyalty.lifetime_points": 500, "traits.first_seen": "2021-03-01T00:00:00.000000Z"},
        version=1,
    )
    b = record(
        "loyalty",
        2,
        fields={"loyalty.lifetime_points": 700, "traits.first_seen": "2019-07-15T00:00:00.000000Z"},
        version=2,
    )
    c = record("crm", 1, fields={"loyalty.lifetime_points": 700.0}, version=3)
    merged = merge_fields([a, b, c], RULES)
    assert merged["loyalty.lifetime_points"].value == 700.0
    assert merged["loyalty.lifetime_points"].provenance[0].source == "crm"  # newest of the tie
    assert merged["traits.first_seen"].value == "2019-07-15T00:00:00.000000Z"


def test_sum_adds_every_record_and_keeps_each_provenance() -> None:
    records = [record("pos", i, fields={"traits.visits": i}) for i in (1, 2, 3)]
    merged = merge_fields(records, RULES)["traits.visits"]
    assert merged.value == 6
    assert isinstance(merged.value, int)
    assert [p.record_key for p in merged.provenance] == ['{"id":1}', '{"id":2}', '{"id":3}']
    floats = [
        record("pos", i, fields={"traits.visits": v}) for i, v in enumerate((0.1, 1e16, -1e16))
    ]
    assert merge_fields(floats, RULES)["traits.visits"].value == 0.1  # exactly, in any order


def test_union_of_lists_and_strings_is_sorted_and_unique() -> None:
    records = [
        record("crm", 1, fields={"traits.emails": ["b@x", "a@x"]}),
        record("loyalty", 1, fields={"traits.emails": "c@x"}),
        record("pos", 1, fields={"traits.emails": ["a@x"]}),
    ]
    merged = merge_fields(records, RULES)["traits.emails"]
    assert merged.value == ["a@x", "b@x", "c@x"]
    assert len(merged.provenance) == 3
    assert {p.rule for p in merged.provenance} == {"union"}


@pytest.mark.parametrize(
    ("path", "bad"),
    [("traits.visits", "3"), (GRANTED, "yes"), ("loyalty.lifetime_points", "700")],
)
def test_wrong_value_type_for_the_rule_is_an_error(path: str, bad: object) -> None:
    good = {"traits.visits": 1, GRANTED: True, "loyalty.lifetime_points": 1}[path]
    records = [record("crm", 1, fields={path: good}), record("loyalty", 1, fields={path: bad})]
    with pytest.raises(TypeError, match=path):
        merge_fields(records, RULES)


# --- deletes, nulls, provenance, explain -----------------------------------------------------


def test_deleted_records_and_nulls_contribute_nothing() -> None:
    live = record("crm", 1, fields={"contact.email": "a@x", "contact.phone": None}, version=1)
    gone = record(
        "loyalty", 1, fields={"contact.email": "z@x", "crm.owner": "bob"}, version=9, deleted=True
    )
    assert values([live, gone]) == {"contact.email": "a@x"}
    assert merge_fields([gone], RULES) == {}


def test_provenance_names_source_table_key_version_and_rule() -> None:
    crm = record("crm", 7, fields={"person.given_name": "Ada"}, version=123, commit=456)
    assert merge_fields([crm], RULES)["person.given_name"].provenance == (
        Provenance("crm", "public.customers", '{"id":7}', 123, 456, "source_priority"),
    )


def test_explain_lists_candidates_best_first() -> None:
    crm = record("crm", 1, fields={"contact.email": "old@x"}, version=1)
    loyalty = record("loyalty", 1, fields={"contact.email": "new@x"}, version=2)
    silent = record("pos", 1, fields={"contact.email": None}, version=3)
    explanation = explain_field([crm, silent, loyalty], "contact.email", RULES)
    assert explanation.rule == LWW
    assert explanation.candidates == (
        Candidate("new@x", loyalty.key, 2, 0),
        Candidate("old@x", crm.key, 1, 0),
    )
    assert explanation.result == merge_fields([crm, loyalty], RULES)["contact.email"]
    assert explain_field([crm], "crm.owner", RULES).result is None


# --- shared provenance (a speed-up that must not show) -----------------------------------------


def test_fields_a_record_wins_under_one_rule_share_one_equal_provenance() -> None:
    crm = record("crm", 1, fields={"person.given_name": "Ada", "person.family_name": "Lovelace"})
    loyalty = record("loyalty", 2, fields={"loyalty.tier": "gold", "traits.visits": 3}, commit=5)
    merged = merge_fields([crm, loyalty], RULES)
    given, family = merged["person.given_name"], merged["person.family_name"]
    assert given.provenance is family.provenance
    assert merged["loyalty.tier"].provenance[0] == Provenance(
        "loyalty", "public.members", '{"id":2}', None, 5, "source_priority"
    )
    # Built again from scratch, every field's value and provenance compare equal.
    assert merge_fields([loyalty, crm], RULES) == merged
