"""The demo's people: a seeded, reproducible population of a CRM and a loyalty platform.

:func:`generate_population` makes ``count`` people and the rows each system holds about them.
The same ``(count, seed)`` always gives the same rows, so a test, the demo and a benchmark can
share a workload. The population is what makes identity resolution interesting:

* people in both systems whose loyalty member record links the CRM customer
  (``crm_customer_id``), with the member's name sometimes misspelt or shortened;
* people in both systems without that link, matching on an email that differs only in case or
  surrounding spaces (:attr:`Match.EMAIL`), on a mobile number under an entirely different email
  (:attr:`Match.PHONE`), or on nothing at all (:attr:`Match.UNMATCHED`: two profiles, as in life);
* households: two CRM customers sharing one email, who must stay two people;
* people only in the CRM (a few with a placeholder or no email, a few in the CRM's trash) and
  people only in the loyalty platform.

Rows carry fixed timestamps (before :data:`EPOCH`), so a seeded database maps to the same profiles
on every run. Ids start above those of the hand-written ``examples/demo/seed.sql`` people.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

#: Seeded timestamps lie before this instant; live traffic happens after it.
EPOCH = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)

#: The first generated CRM customer id, member number, ledger entry, case and redemption id.
FIRST_ID = 1001

#: Loyalty tiers by the lifetime points they need (as in ``loyalty.tiers``).
TIERS: tuple[tuple[str, int], ...] = (("BRZ", 0), ("SLV", 1000), ("GLD", 5000), ("PLT", 20000))

GIVEN_NAMES = (
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy", "Leo",
    "Freya", "Arthur", "Lily", "Muhammad", "Florence", "Oscar", "Grace", "Charlie", "Sophia",
    "William", "Elizabeth", "Robert", "Katherine", "Thomas", "Margaret", "James", "Alexander",
    "Aisha", "Rohan", "Zofia", "Mateusz", "Chloe", "Siobhan", "Ewan", "Fatima", "Hannah", "Kwame",
    "Yusuf", "Ingrid", "Luca", "Giulia", "Nadia", "Samuel", "Rebecca", "Daniel", "Emily", "Ethan",
    "Ruth", "Imran", "Priyanka", "Connor", "Megan", "Owen", "Layla", "Finn", "Eleanor", "Arjun",
)  # fmt: skip

FAMILY_NAMES = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Robinson", "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall",
    "Wood", "Jackson", "Clarke", "Khan", "Lewis", "Harris", "Martin", "Cooper", "Hughes",
    "Edwards", "Turner", "Hill", "Kowalski", "Nowak", "O'Brien", "McDonald", "Murphy", "Ahmed",
    "Singh", "Okafor", "Mensah", "Rossi", "Moreau", "Schmidt", "Fernandes", "Campbell", "Stewart",
    "Baker", "Morgan", "Bennett", "Chapman", "Fletcher", "Lloyd", "Shaw", "Webb", "Gallagher",
)  # fmt: skip

#: What people shorten their names to when a form lets them.
NICKNAMES = {
    "William": "Bill", "Elizabeth": "Liz", "Robert": "Bob", "Katherine": "Kate",
    "Thomas": "Tom", "Margaret": "Maggie", "James": "Jim", "Alexander": "Alex",
    "Samuel": "Sam", "Daniel": "Dan", "Rebecca": "Becky", "Eleanor": "Ellie",
}  # fmt: skip

STREETS = (
    "High Street", "Station Road", "Church Lane", "Park Avenue", "Victoria Road", "Mill Lane",
    "Green Lane", "Manor Road", "Kings Road", "Queen Street", "The Crescent", "Market Place",
)  # fmt: skip

#: (city, region, postal code prefix, landline prefix reserved for drama by Ofcom).
CITIES = (
    ("Leeds", "West Yorkshire", "LS", "0113 496 0"),
    ("Sheffield", "South Yorkshire", "S", "0114 496 0"),
    ("Nottingham", "Nottinghamshire", "NG", "0115 496 0"),
    ("Leicester", "Leicestershire", "LE", "0116 496 0"),
    ("Bristol", None, "BS", "0117 496 0"),
    ("Reading", "Berkshire", "RG", "0118 496 0"),
    ("Birmingham", "West Midlands", "B", "0121 496 0"),
    ("Edinburgh", None, "EH", "0131 496 0"),
    ("Glasgow", None, "G", "0141 496 0"),
    ("Liverpool", "Merseyside", "L", "0151 496 0"),
    ("Manchester", "Greater Manchester", "M", "0161 496 0"),
    ("London", None, "SW", "020 7946 0"),
    ("Newcastle", "Tyne and Wear", "NE", "0191 498 0"),
    ("Cardiff", None, "CF", "029 2018 0"),
)

EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")

# Emails and numbers the hand-written seed.sql people use: generated people never take them.
_SEED_EMAILS = {
    "sally.smith@example.com", "tom.brown@example.com", "priya.patel@example.org",
    "the.joneses@example.net", "dan@example.com", "ola.nowak@example.pl", "ben.closed@example.com",
}  # fmt: skip
_SEED_PHONES = {"07700 900101", "07700 900102", "07700 900103", "07700 900107",
                "0113 496 0003", "0113 496 0004"}  # fmt: skip

CRM_CUSTOMER_COLUMNS = (
    "id", "first_name", "last_name", "email", "birth_date", "owner_email", "lifecycle_stage",
    "last_contacted_at", "notes", "created_at", "updated_at", "deleted_at",
)  # fmt: skip
CONTACT_COLUMNS = (
    "customer_id", "phone", "address_line1", "address_line2", "city", "region", "postal_code",
    "country_code", "updated_at",
)  # fmt: skip
CONSENT_COLUMNS = (
    "customer_id", "email_opt_in", "email_opt_in_at", "sms_opt_in", "sms_opt_in_at", "updated_at",
)  # fmt: skip
CASE_COLUMNS = (
    "case_id", "customer_id", "category", "subject", "status", "opened_at", "updated_at",
)  # fmt: skip
MEMBER_COLUMNS = (
    "member_id", "crm_customer_id", "email", "mobile", "given_name", "family_name", "tier_code",
    "points_balance", "lifetime_points", "lifetime_spend", "status", "marketing_opt_in",
    "push_opt_in", "consent_at", "enrolled_at", "updated_at",
)  # fmt: skip
LEDGER_COLUMNS = ("entry_id", "member_id", "points", "reason", "created_at")
REDEMPTION_COLUMNS = (
    "redemption_id", "member_id", "reward_code", "reward_name", "points", "status", "redeemed_at",
)  # fmt: skip

#: Rewards a member can redeem: (code, name, points).
REWARDS: tuple[tuple[str, str, int], ...] = (
    ("COFFEE", "Free coffee", 150),
    ("TENOFF", "£10 off your next shop", 1000),
    ("CINEMA", "Two cinema tickets", 2500),
    ("SPA", "Spa day", 8000),
)

CASE_SUBJECTS = {
    "complaint": ("Late delivery", "Item arrived damaged", "Charged twice", "Rude staff in store",
                  "Points not credited"),
    "question": ("How do I link my loyalty card?", "Opening hours", "Change my address"),
    "return": ("Wrong size", "Changed my mind"),
}  # fmt: skip

Row = tuple[object, ...]


class Match(StrEnum):
    """How a person's records in the two systems relate."""

    LINKED = "linked"  # the loyalty member names the CRM customer (crm_customer_id)
    EMAIL = "email"  # no link; the same email up to case and surrounding spaces
    PHONE = "phone"  # no link, different emails; the CRM phone is the loyalty mobile
    UNMATCHED = "unmatched"  # no link, nothing shared: stays two profiles
    CRM_ONLY = "crm_only"
    LOYALTY_ONLY = "loyalty_only"


@dataclass(frozen=True)
class Person:
    """One generated person and the keys of their records.

    Attributes:
        key: 0-based position in the population.
        crm_id: Their CRM customer id, if the CRM knows them.
        member_id: Their loyalty member id, if they are a member.
        match: How their two records relate.
        household: A household number shared by CRM customers who share one email.
        email: The email the CRM holds (or the member's, for loyalty-only people).
        phone: Their phone number as typed in the CRM (national format).
        deleted: The CRM customer is in the trash (soft-deleted).
    """

    key: int
    given_name: str
    family_name: str
    email: str | None
    phone: str | None
    crm_id: int | None
    member_id: str | None
    match: Match
    household: int | None = None
    deleted: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}"


@dataclass
class Population:
    """People and the rows of each system's tables, in the column order of ``*_COLUMNS``."""

    seed: int
    people: list[Person] = field(default_factory=list)
    crm_customers: list[Row] = field(default_factory=list)
    contact_details: list[Row] = field(default_factory=list)
    consents: list[Row] = field(default_factory=list)
    service_cases: list[Row] = field(default_factory=list)
    members: list[Row] = field(default_factory=list)
    points_ledger: list[Row] = field(default_factory=list)
    redemptions: list[Row] = field(default_factory=list)

    def with_match(self, match: Match) -> list[Person]:
        """The people whose records relate as ``match`` says."""
        return [p for p in self.people if p.match is match]

    def households(self) -> dict[int, list[Person]]:
        """Household number → the CRM customers sharing its email."""
        found: dict[int, list[Person]] = {}
        for person in self.people:
            if person.household is not None:
                found.setdefault(person.household, []).append(person)
        return found


def member_number(n: int) -> str:
    """The loyalty platform's member id for number ``n`` (``LM-001001``)."""
    return f"LM-{n:06d}"


def tier_for(lifetime_points: int) -> str:
    """The tier code lifetime points earn."""
    return next(code for code, floor in reversed(TIERS) if lifetime_points >= floor)


def generate_population(count: int, seed: int = 42) -> Population:
    """``count`` people, deterministic in ``seed``.

    Args:
        count: How many people (at least 10, so that every kind of person occurs).
        seed: The random seed; the same pair always gives the same rows.
    """
    if count < 10:
        raise ValueError("count must be at least 10")
    return _Generator(count, seed).run()


class _Generator:
    # Shares of the population, in order; what is left are loyalty-only people.
    _SHARES: tuple[tuple[Match, float], ...] = (
        (Match.LINKED, 0.22),
        (Match.EMAIL, 0.12),
        (Match.PHONE, 0.06),
        (Match.UNMATCHED, 0.04),
        (Match.CRM_ONLY, 0.36),
    )
    _HOUSEHOLD_SHARE = 0.06  # of the CRM-only people, in pairs

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
        self.population = Population(seed=seed)
        self.emails = set(_SEED_EMAILS)
        mobiles = [f"07700 900{n:03d}" for n in range(1000)]
        landlines = [f"{city[3]}{n:03d}" for city in CITIES for n in range(1000)]
        self.rng.shuffle(mobiles)
        self.rng.shuffle(landlines)
        self.mobiles = [m for m in mobiles if m not in _SEED_PHONES]
        self.landlines = [n for n in landlines if n not in _SEED_PHONES]
        self.next_crm = self.next_member = self.next_entry = FIRST_ID
        self.next_case = self.next_redemption = FIRST_ID

    def run(self) -> Population:
        plan: list[Match] = []
        for match, share in self._SHARES:
            plan += [match] * round(self.count * share)
        plan = plan[: self.count]
        plan += [Match.LOYALTY_ONLY] * (self.count - len(plan))
        self.rng.shuffle(plan)
        households_left = round(self.count * self._HOUSEHOLD_SHARE) // 2
        key = 0
        while key < len(plan):
            match = plan[key]
            if match is Match.CRM_ONLY and households_left and key + 1 < len(plan):
                households_left -= 1
                self._household(key, households_left)
                key += 2  # the partner takes the next slot, whatever it was planned as
                continue
            self._person(key, match)
            key += 1
        return self.population

    # -- people ---------------------------------------------------------------------------

    def _person(self, key: int, match: Match) -> None:
        rng = self.rng
        given, family = rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES)
        in_crm = match is not Match.LOYALTY_ONLY
        in_loyalty = match is not Match.CRM_ONLY
        mobile = (
            self._mobile() if (in_loyalty and rng.random() < 0.5) or match is Match.PHONE else None
        )
        phone = mobile or (self._landline() if in_crm and rng.random() < 0.8 else None)
        email = self._email(given, family)
        deleted = match is Match.CRM_ONLY and rng.random() < 0.02
        crm_email: str | None = email
        if match is Match.CRM_ONLY and rng.random() < 0.04:
            crm_email = rng.choice(("n/a", "", None))  # placeholders: they identify no one
        crm_id = self._crm(given, family, crm_email, phone, deleted) if in_crm else None
        member_id = None
        if in_loyalty:
            member_email, link = email, None
            m_given, m_family = given, family
            if match is Match.LINKED:
                link = crm_id
                member_email = self._case_variant(email) if rng.random() < 0.5 else email
                m_given, m_family = self._misspelt(given, family)
            elif match is Match.EMAIL:
                member_email = self._case_variant(email)
                m_given, m_family = self._misspelt(given, family)
            elif match in (Match.PHONE, Match.UNMATCHED):
                member_email = self._email(given, family, personal=True)
                if match is Match.UNMATCHED:
                    mobile = None
            member_id = self._member(m_given, m_family, member_email, mobile, link)
        self.population.people.append(
            Person(key, given, family, crm_email if in_crm else email, phone, crm_id, member_id,
                   match, deleted=deleted)
        )  # fmt: skip

    def _household(self, key: int, number: int) -> None:
        rng = self.rng
        family = rng.choice(FAMILY_NAMES)
        shared = self._unique(
            f"the.{family.lower().replace(chr(39), '')}s", rng.choice(EMAIL_DOMAINS)
        )
        for offset in range(2):
            given = rng.choice(GIVEN_NAMES)
            # The second partner typed it in with different case or a trailing space.
            email = shared if offset == 0 else self._case_variant(shared)
            phone = self._landline()
            crm_id = self._crm(given, family, email, phone, deleted=False)
            self.population.people.append(
                Person(key + offset, given, family, email, phone, crm_id, None, Match.CRM_ONLY,
                       household=number)
            )  # fmt: skip

    # -- rows -----------------------------------------------------------------------------

    def _crm(
        self, given: str, family: str, email: str | None, phone: str | None, deleted: bool
    ) -> int:
        rng, pop = self.rng, self.population
        crm_id, self.next_crm = self.next_crm, self.next_crm + 1
        created = EPOCH - timedelta(days=rng.randint(60, 2400), minutes=rng.randint(0, 1439))
        updated = created + timedelta(days=rng.randint(0, (EPOCH - created).days - 1))
        stage = "churned" if deleted else rng.choice(("lead", "prospect", "customer", "customer"))
        contacted = (
            (updated - timedelta(hours=rng.randint(0, 48))).replace(tzinfo=None)
            if rng.random() < 0.4
            else None
        )
        birth = date(rng.randint(1945, 2005), rng.randint(1, 12), rng.randint(1, 28))
        pop.crm_customers.append(
            (crm_id, given, family, email, birth if rng.random() < 0.7 else None,
             rng.choice(("alice@crm.example", "bob@crm.example", "carol@crm.example")), stage,
             contacted, None, created, updated, updated if deleted else None)
        )  # fmt: skip
        if deleted:
            return crm_id  # in the trash with nothing else: no record would outlive it
        if phone is not None or rng.random() < 0.5:
            city, region, postcode, _ = rng.choice(CITIES)
            pop.contact_details.append(
                (crm_id, phone, f"{rng.randint(1, 180)} {rng.choice(STREETS)}",
                 f"Flat {rng.randint(1, 30)}" if rng.random() < 0.2 else None, city, region,
                 f"{postcode}{rng.randint(1, 28)} {rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}",
                 "GB", updated)
            )  # fmt: skip
        if rng.random() < 0.8:
            email_in, sms_in = rng.random() < 0.6, rng.random() < 0.3
            pop.consents.append(
                (crm_id, email_in, created if email_in else None, sms_in,
                 created if sms_in else None, created)
            )  # fmt: skip
        if rng.random() < 0.25:
            category = rng.choice(("complaint", "complaint", "question", "return"))
            opened = updated - timedelta(days=rng.randint(0, 30))
            case_id, self.next_case = self.next_case, self.next_case + 1
            pop.service_cases.append(
                (case_id, crm_id, category, rng.choice(CASE_SUBJECTS[category]),
                 rng.choice(("open", "resolved", "resolved")), opened, opened)
            )  # fmt: skip
        return crm_id

    def _member(
        self, given: str, family: str, email: str | None, mobile: str | None, link: int | None
    ) -> str:
        rng, pop = self.rng, self.population
        member_id = member_number(self.next_member)
        self.next_member += 1
        enrolled = EPOCH - timedelta(days=rng.randint(30, 1800), minutes=rng.randint(0, 1439))
        entries = [rng.randint(20, 900) for _ in range(rng.randint(1, 3))]
        lifetime = sum(entries) * rng.randint(1, 12)
        balance = lifetime
        last = enrolled
        for points in entries:
            last = last + timedelta(days=rng.randint(1, max(1, (EPOCH - last).days // 3)))
            entry_id, self.next_entry = self.next_entry, self.next_entry + 1
            pop.points_ledger.append((entry_id, member_id, points, "purchase", last))
        if rng.random() < 0.15:
            code, name, cost = rng.choice([r for r in REWARDS if r[2] <= balance] or [REWARDS[0]])
            if cost <= balance:
                balance -= cost
                last = last + timedelta(hours=rng.randint(1, 72))
                entry_id, self.next_entry = self.next_entry, self.next_entry + 1
                pop.points_ledger.append((entry_id, member_id, -cost, f"reward: {name}", last))
                redemption_id, self.next_redemption = self.next_redemption, self.next_redemption + 1
                pop.redemptions.append(
                    (redemption_id, member_id, code, name, cost, "fulfilled", last)
                )
        opt_in = rng.random() < 0.5
        pop.members.append(
            (member_id, link, email, self._mobile_variant(mobile) if mobile else None, given, family,
             tier_for(lifetime), balance, lifetime, Decimal(lifetime) / 10 + Decimal("0.99"),
             "active" if rng.random() < 0.97 else "suspended", "Y" if opt_in else "N",
             rng.random() < 0.3, enrolled if opt_in else None, enrolled, min(last, EPOCH))
        )  # fmt: skip
        return member_id

    # -- values ---------------------------------------------------------------------------

    def _email(self, given: str, family: str, personal: bool = False) -> str:
        rng = self.rng
        g, f = given.lower(), family.lower().replace("'", "")
        local = (
            rng.choice((f"{g}{rng.randint(1, 99)}", f"{g[0]}{f}.home", f"{g}.{f[0]}"))
            if personal
            else rng.choice((f"{g}.{f}", f"{g[0]}{f}", f"{g}_{f}", f"{f}.{g}"))
        )
        return self._unique(local, rng.choice(EMAIL_DOMAINS))

    def _unique(self, local: str, domain: str) -> str:
        email, n = f"{local}@{domain}", 1
        while email in self.emails:
            n += 1
            email = f"{local}{n}@{domain}"
        self.emails.add(email)
        return email

    def _case_variant(self, email: str) -> str:
        local, _, domain = email.partition("@")
        variant = self.rng.choice((
            f"{local.title()}@{domain}",
            email.upper(),
            f" {email}",
            f"{email} ",
            f"{local.capitalize()}@{domain.capitalize()}",
        ))  # fmt: skip
        return variant if variant != email else email.upper()

    def _misspelt(self, given: str, family: str) -> tuple[str, str]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15 and given in NICKNAMES:
            return NICKNAMES[given], family
        if roll < 0.30:
            return given, _typo(family, rng)
        if roll < 0.40:
            return _typo(given, rng), family
        return given, family

    def _mobile(self) -> str:
        return self.mobiles.pop() if self.mobiles else self._landline()

    def _landline(self) -> str:
        return self.landlines.pop()

    def _mobile_variant(self, phone: str) -> str:
        digits = phone.replace(" ", "")
        return self.rng.choice(
            (phone, digits, f"+44 {digits[1:5]} {digits[5:]}", f"+44{digits[1:]}")
        )


def _typo(word: str, rng: random.Random) -> str:
    """One slip of the keyboard: a letter dropped, doubled or swapped with its neighbour."""
    if len(word) < 4:
        return word
    i = rng.randint(1, len(word) - 2)
    kind = rng.choice(("drop", "double", "swap"))
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


__all__ = [
    "EPOCH",
    "FIRST_ID",
    "REWARDS",
    "TIERS",
    "Match",
    "Person",
    "Population",
    "generate_population",
    "member_number",
    "tier_for",
]
