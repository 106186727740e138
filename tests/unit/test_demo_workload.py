"""The demo's people and traffic: reproducible from their seeds, with every kind of person."""

from __future__ import annotations

from collections import Counter
from itertools import islice

from unified_profile.server.demo import ActivityKind, Match, TrafficModel, generate_population


def test_the_same_seed_gives_the_same_people_and_another_seed_others():
    first, again = generate_population(500, 3), generate_population(500, 3)
    assert first.crm_customers == again.crm_customers
    assert first.members == again.members
    assert generate_population(500, 4).crm_customers != first.crm_customers


def test_every_kind_of_person_occurs_and_their_records_say_how_they_relate():
    population = generate_population(1000, 11)
    kinds = Counter(p.match for p in population.people)
    assert set(kinds) == set(Match)
    members = {row[0]: row for row in population.members}
    for person in population.with_match(Match.LINKED):
        assert members[person.member_id][1] == person.crm_id
    for person in population.with_match(Match.EMAIL):
        member_email = members[person.member_id][2]
        assert member_email != person.email
        assert member_email.strip().lower() == person.email.strip().lower()
    for person in population.with_match(Match.PHONE) + population.with_match(Match.UNMATCHED):
        assert members[person.member_id][1] is None
        assert members[person.member_id][2].lower() != (person.email or "").lower()
    households = population.households()
    assert households
    for pair in households.values():
        assert len(pair) == 2
        assert len({p.email.strip().lower() for p in pair}) == 1
        assert len({p.crm_id for p in pair}) == 2
    assert len({row[0] for row in population.crm_customers}) == len(population.crm_customers)


def test_traffic_is_reproducible_and_covers_every_kind():
    population = generate_population(300, 5)
    first = [(a.kind, a.transactions) for a in islice(TrafficModel(population, seed=9), 2000)]
    again = [(a.kind, a.transactions) for a in islice(TrafficModel(population, seed=9), 2000)]
    assert first == again
    assert {kind for kind, _ in first} == set(ActivityKind)
    # A purchase writes the ledger entry and the balance in one transaction.
    purchase = next(t for kind, t in first if kind is ActivityKind.PURCHASE)
    assert len(purchase) == 1
    statements = [sql for sql, _ in purchase[0].statements]
    assert statements[0].startswith("INSERT INTO loyalty.points_ledger")
    assert statements[1].startswith("UPDATE loyalty.members SET points_balance")
