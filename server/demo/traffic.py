"""What the demo's customers do: a seeded stream of realistic transactions on both systems.

:class:`TrafficModel` is pure: it holds what it needs to know about the population (who exists,
balances, open cases, which members have not linked their CRM account) and turns a random draw
into an :class:`Activity` — the SQL transactions one real action causes, each against one
database. The same population and seed give the same activities in the same order, whoever runs
them (the demo's :class:`~unified_profile.server.demo.simulator.Simulator`, a test, a benchmark).

Writes use relative updates (``points_balance = points_balance + 120``) and ``now()`` for their
timestamps, so the databases stay consistent even if an activity fails and is skipped, and live
changes are newer than every seeded one (last-writer-wins sees them win).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Literal, LiteralString

from .people import (
    CASE_SUBJECTS,
    CITIES,
    FAMILY_NAMES,
    FIRST_ID,
    GIVEN_NAMES,
    REWARDS,
    STREETS,
    TIERS,
    Match,
    Population,
    member_number,
    tier_for,
)

Database = Literal["crm", "loyalty"]
Statement = tuple[LiteralString, tuple[object, ...]]


class ActivityKind(StrEnum):
    """What a customer did."""

    SIGN_UP = "sign_up"
    ADDRESS_CHANGE = "address_change"
    PURCHASE = "purchase"
    REDEMPTION = "redemption"
    TIER_UPGRADE = "tier_upgrade"
    CONSENT_REVOCATION = "consent_revocation"
    COMPLAINT = "complaint"
    ACCOUNT_LINK = "account_link"


#: How often each kind happens, relative to the others.
DEFAULT_WEIGHTS: dict[ActivityKind, int] = {
    ActivityKind.PURCHASE: 40,
    ActivityKind.REDEMPTION: 10,
    ActivityKind.ADDRESS_CHANGE: 10,
    ActivityKind.SIGN_UP: 8,
    ActivityKind.CONSENT_REVOCATION: 8,
    ActivityKind.COMPLAINT: 8,
    ActivityKind.TIER_UPGRADE: 4,
    ActivityKind.ACCOUNT_LINK: 4,
}


@dataclass(frozen=True)
class Transaction:
    """Statements committed together in one database."""

    database: Database
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Activity:
    """One customer action: its kind and the transactions it causes, in order."""

    kind: ActivityKind
    transactions: tuple[Transaction, ...]
    summary: str


@dataclass
class _Member:
    balance: int
    lifetime: int
    tier: str
    crm_id: int | None
    opted_in: bool


@dataclass
class _State:
    customers: list[int] = field(default_factory=list)
    members: dict[str, _Member] = field(default_factory=dict)
    member_ids: list[str] = field(default_factory=list)
    email_opt_ins: set[int] = field(default_factory=set)
    open_cases: list[int] = field(default_factory=list)
    # (member, CRM customer) pairs of one person whose member record does not name the customer.
    unlinked: list[tuple[str, int]] = field(default_factory=list)
    next_crm: int = FIRST_ID
    next_member: int = FIRST_ID
    next_entry: int = FIRST_ID
    next_case: int = FIRST_ID
    next_redemption: int = FIRST_ID
    next_signup: int = 1


class TrafficModel:
    """An endless, reproducible stream of :class:`Activity` for one population.

    Args:
        population: The seeded people (the databases must hold them).
        seed: The random seed of the traffic.
        weights: Relative frequency of each kind (:data:`DEFAULT_WEIGHTS`).
    """

    def __init__(
        self,
        population: Population,
        seed: int = 1,
        weights: dict[ActivityKind, int] | None = None,
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not secrets
        chosen = weights or DEFAULT_WEIGHTS
        self._kinds = list(chosen)
        self._weights = [chosen[k] for k in self._kinds]
        self._state = _state_of(population)

    def __iter__(self) -> Iterator[Activity]:
        return self

    def __next__(self) -> Activity:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        return self._make(kind) or self._purchase()

    def _make(self, kind: ActivityKind) -> Activity | None:
        if kind is ActivityKind.PURCHASE:
            return self._purchase()
        if kind is ActivityKind.REDEMPTION:
            return self._redemption()
        if kind is ActivityKind.ADDRESS_CHANGE:
            return self._address_change()
        if kind is ActivityKind.SIGN_UP:
            return self._sign_up()
        if kind is ActivityKind.CONSENT_REVOCATION:
            return self._consent_revocation()
        if kind is ActivityKind.COMPLAINT:
            return self._complaint()
        if kind is ActivityKind.TIER_UPGRADE:
            return self._tier_upgrade()
        return self._account_link()

    # -- loyalty --------------------------------------------------------------------------

    def _purchase(self) -> Activity:
        rng, state = self._rng, self._state
        member_id = rng.choice(state.member_ids)
        member = state.members[member_id]
        spend = Decimal(rng.randint(300, 25000)) / 100
        points = int(spend) * rng.choice((1, 1, 2, 3))  # double and triple points days
        member.balance += points
        member.lifetime += points
        new_tier = tier_for(member.lifetime)
        upgraded = _tier_rank(new_tier) > _tier_rank(member.tier)
        if upgraded:
            member.tier = new_tier
        entry = self._next("next_entry")
        statements: list[Statement] = [
            (
                "INSERT INTO loyalty.points_ledger (entry_id, member_id, points, reason)"
                " VALUES (%s, %s, %s, %s)",
                (entry, member_id, points, f"purchase £{spend}"),
            ),
            (
                "UPDATE loyalty.members SET points_balance = points_balance + %s,"
                " lifetime_points = lifetime_points + %s, lifetime_spend = lifetime_spend + %s,"
                " updated_at = now() WHERE member_id = %s",
                (points, points, spend, member_id),
            ),
        ]
        if upgraded:
            statements.append(
                (
                    "UPDATE loyalty.members SET tier_code = %s WHERE member_id = %s",
                    (new_tier, member_id),
                )
            )
        kind = ActivityKind.TIER_UPGRADE if upgraded else ActivityKind.PURCHASE
        note = f" and reached {new_tier}" if upgraded else ""
        return Activity(
            kind,
            (Transaction("loyalty", tuple(statements)),),
            f"{member_id} spent £{spend}, earned {points} points{note}",
        )

    def _redemption(self) -> Activity | None:
        rng, state = self._rng, self._state
        member_id = rng.choice(state.member_ids)
        member = state.members[member_id]
        affordable = [r for r in REWARDS if r[2] <= member.balance]
        if not affordable:
            return None
        code, name, cost = rng.choice(affordable)
        member.balance -= cost
        entry, redemption = self._next("next_entry"), self._next("next_redemption")
        return Activity(
            ActivityKind.REDEMPTION,
            (
                Transaction(
                    "loyalty",
                    (
                        (
                            "INSERT INTO loyalty.redemptions"
                            " (redemption_id, member_id, reward_code, reward_name, points)"
                            " VALUES (%s, %s, %s, %s, %s)",
                            (redemption, member_id, code, name, cost),
                        ),
                        (
                            "INSERT INTO loyalty.points_ledger (entry_id, member_id, points, reason)"
                            " VALUES (%s, %s, %s, %s)",
                            (entry, member_id, -cost, f"reward: {name}"),
                        ),
                        (
                            "UPDATE loyalty.members SET points_balance = points_balance - %s,"
                            " updated_at = now() WHERE member_id = %s",
                            (cost, member_id),
                        ),
                    ),
                ),
            ),
            f"{member_id} redeemed {name} for {cost} points",
        )

    def _tier_upgrade(self) -> Activity | None:
        # A status-match campaign: one tier up without the points.
        state = self._state
        member_id = self._rng.choice(state.member_ids)
        member = state.members[member_id]
        rank = _tier_rank(member.tier)
        if rank + 1 >= len(TIERS):
            return None
        member.tier = TIERS[rank + 1][0]
        return Activity(
            ActivityKind.TIER_UPGRADE,
            (
                Transaction(
                    "loyalty",
                    (
                        (
                            "UPDATE loyalty.members SET tier_code = %s, updated_at = now()"
                            " WHERE member_id = %s",
                            (member.tier, member_id),
                        ),
                    ),
                ),
            ),
            f"{member_id} promoted to {member.tier}",
        )

    def _account_link(self) -> Activity | None:
        state = self._state
        if not state.unlinked:
            return None
        member_id, crm_id = state.unlinked.pop(self._rng.randrange(len(state.unlinked)))
        state.members[member_id].crm_id = crm_id
        return Activity(
            ActivityKind.ACCOUNT_LINK,
            (
                Transaction(
                    "loyalty",
                    (
                        (
                            "UPDATE loyalty.members SET crm_customer_id = %s, updated_at = now()"
                            " WHERE member_id = %s",
                            (crm_id, member_id),
                        ),
                    ),
                ),
            ),
            f"{member_id} linked CRM account {crm_id}",
        )

    # -- CRM ------------------------------------------------------------------------------

    def _address_change(self) -> Activity:
        rng = self._rng
        crm_id = rng.choice(self._state.customers)
        city, region, postcode, _ = rng.choice(CITIES)
        line1 = f"{rng.randint(1, 180)} {rng.choice(STREETS)}"
        postal = f"{postcode}{rng.randint(1, 28)} {rng.randint(1, 9)}{rng.choice('ABDEFGHJ')}{rng.choice('LNPQRSTU')}"
        return Activity(
            ActivityKind.ADDRESS_CHANGE,
            (
                Transaction(
                    "crm",
                    (
                        (
                            "INSERT INTO crm.contact_details (customer_id, address_line1,"
                            " address_line2, city, region, postal_code, country_code)"
                            " VALUES (%s, %s, NULL, %s, %s, %s, 'GB')"
                            " ON CONFLICT (customer_id) DO UPDATE SET"
                            " address_line1 = excluded.address_line1, address_line2 = NULL,"
                            " city = excluded.city, region = excluded.region,"
                            " postal_code = excluded.postal_code,"
                            " country_code = excluded.country_code, updated_at = now()",
                            (crm_id, line1, city, region, postal),
                        ),
                    ),
                ),
            ),
            f"customer {crm_id} moved to {city}",
        )

    def _consent_revocation(self) -> Activity | None:
        rng, state = self._rng, self._state
        if rng.random() < 0.5 and state.email_opt_ins:
            crm_id = rng.choice(sorted(state.email_opt_ins))
            state.email_opt_ins.discard(crm_id)
            return Activity(
                ActivityKind.CONSENT_REVOCATION,
                (
                    Transaction(
                        "crm",
                        (
                            (
                                "UPDATE crm.consents SET email_opt_in = false,"
                                " email_opt_in_at = now(), updated_at = now()"
                                " WHERE customer_id = %s",
                                (crm_id,),
                            ),
                        ),
                    ),
                ),
                f"customer {crm_id} unsubscribed from email",
            )
        opted = [m for m in state.member_ids if state.members[m].opted_in]
        if not opted:
            return None
        member_id = rng.choice(opted)
        state.members[member_id].opted_in = False
        return Activity(
            ActivityKind.CONSENT_REVOCATION,
            (
                Transaction(
                    "loyalty",
                    (
                        (
                            "UPDATE loyalty.members SET marketing_opt_in = 'N', consent_at = now(),"
                            " updated_at = now() WHERE member_id = %s",
                            (member_id,),
                        ),
                    ),
                ),
            ),
            f"{member_id} withdrew marketing consent",
        )

    def _complaint(self) -> Activity:
        rng, state = self._rng, self._state
        if state.open_cases and rng.random() < 0.3:
            case_id = state.open_cases.pop(rng.randrange(len(state.open_cases)))
            return Activity(
                ActivityKind.COMPLAINT,
                (
                    Transaction(
                        "crm",
                        (
                            (
                                "UPDATE crm.service_cases SET status = 'resolved',"
                                " updated_at = now() WHERE case_id = %s",
                                (case_id,),
                            ),
                        ),
                    ),
                ),
                f"case {case_id} resolved",
            )
        crm_id = rng.choice(state.customers)
        subject = rng.choice(CASE_SUBJECTS["complaint"])
        case_id = self._next("next_case")
        state.open_cases.append(case_id)
        return Activity(
            ActivityKind.COMPLAINT,
            (
                Transaction(
                    "crm",
                    (
                        (
                            "INSERT INTO crm.service_cases (case_id, customer_id, category, subject)"
                            " VALUES (%s, %s, 'complaint', %s)",
                            (case_id, crm_id, subject),
                        ),
                        (
                            "UPDATE crm.customers SET last_contacted_at = now() AT TIME ZONE 'UTC',"
                            " updated_at = now() WHERE id = %s",
                            (crm_id,),
                        ),
                    ),
                ),
            ),
            f"customer {crm_id} complained: {subject}",
        )

    # -- both -----------------------------------------------------------------------------

    def _sign_up(self) -> Activity:
        rng, state = self._rng, self._state
        given, family = rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES)
        n = self._next("next_signup")
        email = f"{given.lower()}.{family.lower().replace(chr(39), '')}.{n}@example.com"
        where = rng.choices(("crm", "loyalty", "both"), (2, 1, 1))[0]
        transactions: list[Transaction] = []
        crm_id: int | None = None
        if where in ("crm", "both"):
            crm_id = self._next("next_crm")
            state.customers.append(crm_id)
            opt_in = rng.random() < 0.6
            if opt_in:
                state.email_opt_ins.add(crm_id)
            transactions.append(
                Transaction(
                    "crm",
                    (
                        (
                            "INSERT INTO crm.customers (id, first_name, last_name, email,"
                            " lifecycle_stage) VALUES (%s, %s, %s, %s, 'lead')",
                            (crm_id, given, family, email),
                        ),
                        (
                            "INSERT INTO crm.consents (customer_id, email_opt_in, email_opt_in_at)"
                            " VALUES (%s, %s, CASE WHEN %s THEN now() END)",
                            (crm_id, opt_in, opt_in),
                        ),
                    ),
                )
            )
        if where in ("loyalty", "both"):
            member_id = member_number(self._next("next_member"))
            linked = crm_id if crm_id is not None and rng.random() < 0.7 else None
            # Members who sign up in store type their email as they like.
            member_email = email if linked else email.upper() if crm_id else email
            state.member_ids.append(member_id)
            state.members[member_id] = _Member(100, 100, "BRZ", linked, True)
            entry = self._next("next_entry")
            transactions.append(
                Transaction(
                    "loyalty",
                    (
                        (
                            "INSERT INTO loyalty.members (member_id, crm_customer_id, email,"
                            " given_name, family_name, tier_code, points_balance, lifetime_points,"
                            " marketing_opt_in, consent_at)"
                            " VALUES (%s, %s, %s, %s, %s, 'BRZ', 100, 100, 'Y', now())",
                            (member_id, linked, member_email, given, family),
                        ),
                        (
                            "INSERT INTO loyalty.points_ledger (entry_id, member_id, points, reason)"
                            " VALUES (%s, %s, 100, 'welcome bonus')",
                            (entry, member_id),
                        ),
                    ),
                )
            )
        return Activity(
            ActivityKind.SIGN_UP, tuple(transactions), f"{given} {family} signed up ({where})"
        )

    def _next(self, counter: str) -> int:
        value: int = getattr(self._state, counter)
        setattr(self._state, counter, value + 1)
        return value


def _tier_rank(code: str) -> int:
    return next(i for i, (c, _) in enumerate(TIERS) if c == code)


def _state_of(population: Population) -> _State:
    state = _State()
    deleted = {row[0] for row in population.crm_customers if row[11] is not None}
    state.customers = [
        int(str(row[0])) for row in population.crm_customers if row[0] not in deleted
    ]
    for row in population.members:
        member_id, link, balance, lifetime, tier, opt_in = (
            str(row[0]), row[1], int(str(row[7])), int(str(row[8])), str(row[6]), row[11] == "Y"
        )  # fmt: skip
        state.member_ids.append(member_id)
        state.members[member_id] = _Member(
            balance, lifetime, tier, None if link is None else int(str(link)), opt_in
        )
    state.email_opt_ins = {int(str(row[0])) for row in population.consents if row[1] is True}
    state.open_cases = [int(str(row[0])) for row in population.service_cases if row[4] == "open"]
    state.unlinked = [
        (p.member_id, p.crm_id)
        for p in population.people
        if p.match in (Match.EMAIL, Match.PHONE, Match.UNMATCHED)
        and p.member_id is not None
        and p.crm_id is not None
    ]
    state.next_crm = 1 + max(
        (int(str(r[0])) for r in population.crm_customers), default=FIRST_ID - 1
    )
    state.next_member = 1 + max(
        (int(str(r[0])[3:]) for r in population.members), default=FIRST_ID - 1
    )
    state.next_entry = 1 + max(
        (int(str(r[0])) for r in population.points_ledger), default=FIRST_ID - 1
    )
    state.next_case = 1 + max(
        (int(str(r[0])) for r in population.service_cases), default=FIRST_ID - 1
    )
    state.next_redemption = 1 + max(
        (int(str(r[0])) for r in population.redemptions), default=FIRST_ID - 1
    )
    return state


__all__ = [
    "DEFAULT_WEIGHTS",
    "Activity",
    "ActivityKind",
    "Database",
    "Statement",
    "TrafficModel",
    "Transaction",
]
