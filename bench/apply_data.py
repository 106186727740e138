"""Demo-shaped data for the apply scenario: the engine's config, preloaded profiles, change events.

The engine runs the demo's configuration (``examples/demo/unified-profile.toml``: its identity
types, survivorship rules and the mapping of ``crm.customers`` and ``loyalty.members``), with the
two sources renamed per run (``crm_<run id>``, ``loyalty_<run id>``, rules follow) so that their
topics never collide on a shared broker. Events are built by the connector's own
:class:`~unified_profile.cdc.envelope.TableEventBuilder` from PostgreSQL text output, for table
shapes that mirror ``examples/demo/schema.sql``.

Everything is a pure function of the seed: a customer's row is derived from ``(seed, id)`` alone
(:func:`customer_row`), so a preloaded customer and the ``before`` image of an update to it agree
without any state being kept, and a workload (:class:`WorkloadSpec`) gives the same events in the
parent (which maps them for the baseline, or produces them to Kafka) and in the engine's child.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import tomllib
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from unified_profile.cdc.envelope import ChangeEvent, SourceInfo, TableEventBuilder
from unified_profile.cdc.model import Column, PgType, TableShape
from unified_profile.cdc.type_encoding import EncodingOptions
from unified_profile.server.engine.records import RecordKey, canonical_json
from unified_profile.server.engine.survivorship import FieldValue, Provenance, RuleSet
from unified_profile.server.store import profile_document

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "demo" / "unified-profile.toml"
CUSTOMERS = "crm.customers"
MEMBERS = "loyalty.members"

# The applier derives a new profile's id from its smallest record key (applier._new_id).
PROFILE_ID_NAMESPACE = uuid.UUID("8d6f3a52-4f4e-4c1e-9d7a-2b1f0c6e5a31")

# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceNames:
    """The two sources' logical names (topic prefixes, and ``source`` of every record key)."""

    crm: str
    loyalty: str

    @classmethod
    def for_run(cls, run_id: str) -> SourceNames:
        """Names unique to one run."""
        return cls(crm=f"crm_{run_id}", loyalty=f"loyalty_{run_id}")

    @property
    def customers_topic(self) -> str:
        """``crm.customers``'s change topic."""
        return f"{self.crm}.{CUSTOMERS}"

    @property
    def members_topic(self) -> str:
        """``loyalty.members``'s change topic."""
        return f"{self.loyalty}.{MEMBERS}"


def engine_config(
    dsn: str,
    bootstrap_servers: str,
    names: SourceNames,
    group_id: str,
    offsets_topic: str,
    *,
    source_dsns: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The demo config (as parsed TOML) for the bench: the store on ``dsn``, Kafka transport.

    ``[identity]``, ``[rules]`` and ``[engine]`` are the demo's, with the sources renamed in every
    rule's ``order``. Without ``source_dsns`` both sources are on ``dsn`` too and only
    ``crm.customers`` and ``loyalty.members`` are kept (the tables the apply workload changes);
    with it (``crm`` and ``loyalty`` DSNs of databases seeded as the demo's), every table is.
    """
    data = tomllib.loads(DEMO_CONFIG.read_text())
    rename = {"crm": names.crm, "loyalty": names.loyalty}
    sources = []
    for source in data["sources"]:
        tables = [
            t for t in source["tables"] if source_dsns or t["table"] in (CUSTOMERS, MEMBERS)
        ]
        source_dsn = source_dsns[source["name"]] if source_dsns else dsn
        if tables:
            sources.append(
                {**source, "name": rename[source["name"]], "dsn": source_dsn, "tables": tables}
            )
    rules = {pattern: _renamed(spec, rename) for pattern, spec in data.get("rules", {}).items()}
    return {
        "store": {"dsn": dsn},
        "transport": {
            "kind": "kafka",
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "offsets_topic": offsets_topic,
            # A new group member waits about 2 x the session timeout to be assigned partitions
            # on Tansu (23 s at kafka-python's default 10 s, 3 s at 6 s): startup, not apply.
            # Tansu answers a fetch only when fetch_max_wait_ms expires (kafka-python's default
            # 500 ms would add up to half a second to every change end to end; Apache Kafka
            # answers as soon as a record is there).
            "consumer_options": {
                "session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000,
                "fetch_max_wait_ms": 10,
            },
        },
        "sources": sources,
        "identity": data["identity"],
        "rules": rules,
        "engine": data.get("engine", {}),
    }


def _renamed(spec: Any, rename: dict[str, str]) -> Any:
    if isinstance(spec, dict) and "order" in spec:
        return {**spec, "order": [rename.get(s, s) for s in spec["order"]]}
    return spec


# --- table shapes (examples/demo/schema.sql) ------------------------------------------------------

_TYPES = {
    t.oid: t
    for t in (
        PgType(16, "bool", "B"),
        PgType(20, "int8", "N"),
        PgType(23, "int4", "N"),
        PgType(25, "text", "S"),
        PgType(1042, "bpchar", "S"),
        PgType(1082, "date", "D"),
        PgType(1114, "timestamp", "D"),
        PgType(1184, "timestamptz", "D"),
        PgType(1700, "numeric", "N"),
        # Enum OIDs are assigned per database; any will do for encoding (values are their labels).
        PgType(
            70_001, "lifecycle_stage", "E", enum_labels=("lead", "prospect", "customer", "churned")
        ),
        PgType(70_002, "member_status", "E", enum_labels=("active", "suspended", "closed")),
    )
}


def _columns(*specs: tuple[str, int, int, bool, bool]) -> tuple[Column, ...]:
    return tuple(Column(n, oid, typmod, key, optional) for n, oid, typmod, key, optional in specs)


CUSTOMER_SHAPE = TableShape(
    "crm",
    "customers",
    _columns(
        ("id", 20, -1, True, False),
        ("first_name", 25, -1, False, True),
        ("last_name", 25, -1, False, True),
        ("email", 25, -1, False, True),
        ("birth_date", 1082, -1, False, True),
        ("owner_email", 25, -1, False, True),
        ("lifecycle_stage", 70_001, -1, False, False),
        ("last_contacted_at", 1114, -1, False, True),
        ("notes", 25, -1, False, True),
        ("created_at", 1184, -1, False, False),
        ("updated_at", 1184, -1, False, False),
        ("deleted_at", 1184, -1, False, True),
    ),
    _TYPES,
)

MEMBER_SHAPE = TableShape(
    "loyalty",
    "members",
    _columns(
        ("member_id", 25, -1, True, False),
        ("crm_customer_id", 20, -1, False, True),
        ("email", 25, -1, False, True),
        ("mobile", 25, -1, False, True),
        ("given_name", 25, -1, False, True),
        ("family_name", 25, -1, False, True),
        ("tier_code", 25, -1, False, False),
        ("points_balance", 23, -1, False, False),
        ("lifetime_points", 20, -1, False, False),
        ("lifetime_spend", 1700, ((12 << 16) | 2) + 4, False, False),  # numeric(12, 2)
        ("status", 70_002, -1, False, False),
        ("marketing_opt_in", 1042, 1 + 4, False, False),  # char(1)
        ("push_opt_in", 16, -1, False, False),
        ("consent_at", 1184, -1, False, True),
        ("enrolled_at", 1184, -1, False, False),
        ("updated_at", 1184, -1, False, False),
    ),
    _TYPES,
)

Row = tuple[str | None, ...]
"""A row as PostgreSQL's output functions print it (what pgoutput sends), in column order."""

# --- customers -------------------------------------------------------------------------------------

# fmt: off
_FIRST = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farah", "Gus", "Hana", "Ivan", "José",
          "Kai", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Yuki")
_LAST = ("Smith", "García", "Müller", "Nakamura", "Okafor", "Rossi", "Novak", "Silva",
         "Johansson", "Kowalski", "Dubois", "Chen", "Patel", "O'Brien", "Haddad", "Larsen")
_DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "inbox.example.io")
_OWNERS = ("amy.owner@crm.example.com", "bo.owner@crm.example.com", "cy.owner@crm.example.com",
           "di.owner@crm.example.com", "ed.owner@crm.example.com", "flo.owner@crm.example.com")
_STAGES = ("lead", "prospect", "customer", "customer", "customer", "churned")
_NOTES = ("Prefers email contact.", "Asked about the annual plan; call back in Q3.",
          "VIP: handle with care.", "Moved house, address to confirm.",
          "Complained about a late delivery, resolved with a voucher.",
          "Interested in the wholesale programme.")
_TIERS = ("BRZ", "SLV", "GLD", "PLT")
# fmt: on
_EPOCH = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
_EPOCH_US = int(_EPOCH.timestamp()) * 1_000_000
_PRELOAD_SPAN_US = 6 * 365 * 86_400 * 1_000_000  # 2019-2024: preloaded rows' timestamps
_WORKLOAD_START_US = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000
_BIRTH_EPOCH = dt.date(1950, 1, 1)
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: 64 well-mixed bits from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@functools.cache
def _ascii(name: str) -> str:
    """An email local part from a name: accents dropped, apostrophes removed."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().replace("'", "")


def _pg_timestamptz(us: int) -> str:
    moment = _EPOCH + dt.timedelta(microseconds=us - _EPOCH_US)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _pg_timestamp(us: int) -> str:
    moment = _EPOCH + dt.timedelta(microseconds=us - _EPOCH_US)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _iso_timestamp(us: int) -> str:
    """How the engine stores a timestamp field (``profile_paths.format_timestamp``)."""
    moment = _EPOCH + dt.timedelta(microseconds=us - _EPOCH_US)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Customer:
    """One CRM customer as stored before the workload (``customer_row`` prints it)."""

    id: int
    first_name: str
    last_name: str
    email: str
    birth_date: dt.date | None
    owner_email: str
    lifecycle_stage: str
    last_contacted_us: int
    notes: str | None
    created_us: int
    updated_us: int


def customer(seed: int, customer_id: int) -> Customer:
    """Customer ``customer_id`` of the preloaded CRM (a pure function of ``seed`` and the id)."""
    h1 = _mix((seed << 40) ^ customer_id)
    h2 = _mix(h1)
    first, last = _FIRST[h1 % 20], _LAST[(h1 >> 8) % 16]
    local = _ascii(f"{first}.{last}")
    created = _EPOCH_US + (h2 % _PRELOAD_SPAN_US)
    updated = min(created + ((h2 >> 40) % 400) * 86_400_000_000, _EPOCH_US + _PRELOAD_SPAN_US)
    return Customer(
        id=customer_id,
        first_name=first,
        last_name=last,
        email=f"{local}{customer_id}@{_DOMAINS[(h1 >> 16) % 4]}",
        birth_date=(
            None if (h1 >> 20) % 10 == 0 else _BIRTH_EPOCH + dt.timedelta(days=(h1 >> 24) % 20_000)
        ),
        owner_email=_OWNERS[(h1 >> 40) % len(_OWNERS)],
        lifecycle_stage=_STAGES[(h1 >> 44) % len(_STAGES)],
        last_contacted_us=updated - ((h1 >> 48) % 86_400) * 1_000_000,
        notes=_NOTES[(h2 >> 24) % len(_NOTES)] if (h2 >> 20) % 10 < 3 else None,
        created_us=created,
        updated_us=updated,
    )


def customer_row(c: Customer) -> Row:
    """The customer as a ``crm.customers`` row (PostgreSQL text output)."""
    return (
        str(c.id),
        c.first_name,
        c.last_name,
        c.email,
        c.birth_date.isoformat() if c.birth_date else None,
        c.owner_email,
        c.lifecycle_stage,
        _pg_timestamp(c.last_contacted_us),
        c.notes,
        _pg_timestamptz(c.created_us),
        _pg_timestamptz(c.updated_us),
        None,
    )


# --- preloaded store rows --------------------------------------------------------------------------


def profile_id_of(key: RecordKey) -> str:
    """The id the applier gives a new profile whose smallest record key is ``key``."""
    return "p_" + uuid.uuid5(PROFILE_ID_NAMESPACE, str(key)).hex[:24]


def customer_key(source: str, customer_id: int) -> RecordKey:
    """A customer's record key."""
    return RecordKey(source, CUSTOMERS, canonical_json({"id": customer_id}))


@dataclass(frozen=True)
class StoredCustomer:
    """What the engine stores for a customer that is alone in its profile."""

    key: RecordKey
    profile_id: str
    fields: dict[str, Any]
    identifiers: list[list[str]]
    version: int
    commit_time_us: int
    position: int
    profile_fields: dict[str, Any]


class Preloader:
    """Builds the store rows of preloaded customers, as the engine would have written them.

    The record image is the demo mapping of ``crm.customers`` applied by hand (fast); the profile
    is that one record's survivorship result, with each path's rule from the configured rules.
    :func:`bench.apply.check_preload` compares a sample with what the real mapper and
    ``merge_fields`` produce, so the two cannot drift apart silently.
    """

    def __init__(self, seed: int, source: str, rules: RuleSet) -> None:
        self.seed = seed
        self.source = source
        self._rules: dict[str, str] = {}
        self._rule_set = rules

    def stored(self, customer_id: int) -> StoredCustomer:
        """The stored form of customer ``customer_id``."""
        c = customer(self.seed, customer_id)
        key = customer_key(self.source, customer_id)
        email = c.email.strip().lower()
        fields: dict[str, Any] = {
            "person.given_name": c.first_name,
            "person.family_name": c.last_name,
            "person.full_name": f"{c.first_name} {c.last_name}",
            "person.birth_date": c.birth_date.isoformat() if c.birth_date else None,
            "contact.email": email,
            "crm.customer_id": str(c.id),
            "crm.owner": c.owner_email,
            "crm.lifecycle_stage": c.lifecycle_stage,
            "crm.last_interaction_at": _iso_timestamp(c.last_contacted_us),
            "traits.crm_notes": c.notes,
        }
        commit_time_us = c.updated_us + 1_000
        provenance: dict[str, Provenance] = {}
        merged: dict[str, FieldValue] = {}
        for path, value in sorted(fields.items()):
            if value is None:
                continue
            rule = self._rule(path)
            if rule not in provenance:
                provenance[rule] = Provenance(
                    key.source, key.table, key.key, c.updated_us, commit_time_us, rule
                )
            merged[path] = FieldValue(value, (provenance[rule],))
        profile_fields = profile_document.encode(merged)
        return StoredCustomer(
            key=key,
            profile_id=profile_id_of(key),
            fields=fields,
            identifiers=[["crm_id", str(c.id)], ["email", email]],
            version=c.updated_us,
            commit_time_us=commit_time_us,
            position=customer_id,  # below every workload LSN (see WorkloadSpec)
            profile_fields=profile_fields,
        )

    def copy_lines(self, first_id: int, last_id: int) -> tuple[bytes, bytes, bytes]:
        """COPY text for customers ``first_id``..``last_id``: records, identifiers, profiles."""
        records: list[bytes] = []
        identifiers: list[bytes] = []
        profiles: list[bytes] = []
        for customer_id in range(first_id, last_id + 1):
            s = self.stored(customer_id)
            key = f"{s.key.source}\t{s.key.table}\t{_copy_text(s.key.key)}"
            ids = orjson.dumps(s.identifiers)
            records.append(
                f"{key}\t{s.profile_id}\t".encode()
                + _copy_json(orjson.dumps(s.fields))
                + b"\t"
                + _copy_json(ids)
                + f"\t{s.version}\t{s.commit_time_us}\t{s.position}\tf".encode()
            )
            for typ, value in s.identifiers:
                identifiers.append(f"{typ}\t{_copy_text(value)}\t{key}".encode())
            profiles.append(
                f"{s.profile_id}\t".encode()
                + _copy_json(orjson.dumps(s.profile_fields))
                + b"\t"
                + _copy_json(ids)
                + b"\t1\t0\t0"
            )
        return (
            b"\n".join(records) + b"\n",
            b"\n".join(identifiers) + b"\n",
            b"\n".join(profiles) + b"\n",
        )

    def _rule(self, path: str) -> str:
        rule = self._rules.get(path)
        if rule is None:
            rule = self._rules[path] = self._rule_set.rule_for(path).kind
        return rule


# fmt: off
RECORD_COLUMNS = (
    "source", "table_name", "record_key", "profile_id", "fields", "identifiers", "version",
    "commit_time_us", "position", "deleted",
)
IDENTIFIER_COLUMNS = ("type", "value", "source", "table_name", "record_key")
PROFILE_COLUMNS = (
    "profile_id", "fields", "identifiers", "record_count", "created_sequence", "updated_sequence",
)
# fmt: on


def _copy_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _copy_json(data: bytes) -> bytes:
    # orjson escapes control characters, so only backslashes need COPY escaping.
    return data.replace(b"\\", b"\\\\")


# --- the change workload ---------------------------------------------------------------------------

ChangeKind = Literal["update", "new_customer", "new_member"]


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload of change events against a store holding customers ``1..existing``.

    Each event is, at random: an update of an existing customer (``update_share``), a new customer
    (``new_share``), or else a new loyalty member linked to a customer (``crm_customer_id`` set,
    same email). Workload ``index`` uses its own random stream, its own range of new ids, source
    positions above every earlier workload's, and links customers whose id is ``index`` modulo
    :data:`LINK_STRIPES` (so two workloads never link the same customer; when those run out, a
    customer created earlier in the same workload is linked).

    An update's ``before`` image is the customer's preloaded row, or its latest image within the
    workload; an update made by an earlier workload is not reflected (the engine reads ``before``
    only for unchanged-TOAST values, which these events never carry).
    """

    index: int
    changes: int
    existing: int
    seed: int
    update_share: float = 0.7
    new_share: float = 0.2

    @property
    def first_new_id(self) -> int:
        """Where this workload's new customer ids start."""
        return 1_000_000_000 * (self.index + 1) + 1


LINK_STRIPES = 4


@dataclass(frozen=True, slots=True)
class Change:
    """One row change of a workload."""

    kind: ChangeKind
    op: Literal["c", "u"]
    before: Row | None
    after: Row
    lsn: int
    commit_us: int
    tx_id: int


def changes(spec: WorkloadSpec) -> Iterator[Change]:
    """The workload's row changes, in commit order."""
    rng = random.Random(spec.seed * 1_000 + spec.index)
    latest: dict[int, Row] = {}
    linked: set[int] = set()
    created: list[int] = []
    next_customer = spec.first_new_id
    lsn = {"crm": (spec.index + 1) << 40, "loyalty": (spec.index + 1) << 40}
    commit_us = _WORKLOAD_START_US + spec.index * 86_400_000_000
    tx_id = (spec.index + 1) * 10_000_000
    stripe = spec.index % LINK_STRIPES
    stripe_size = (spec.existing - stripe) // LINK_STRIPES
    for _ in range(spec.changes):
        commit_us += rng.randint(50, 250)
        tx_id += 1
        draw = rng.random()
        if draw < spec.update_share:
            customer_id = rng.randint(1, spec.existing)
            before = latest.get(customer_id) or customer_row(customer(spec.seed, customer_id))
            after = _updated(before, commit_us, rng)
            latest[customer_id] = after
            lsn["crm"] += rng.randint(200, 600)
            yield Change("update", "u", before, after, lsn["crm"], commit_us, tx_id)
        elif draw < spec.update_share + spec.new_share:
            customer_id = next_customer
            next_customer += 1
            row = _new_customer(spec.seed, customer_id, commit_us)
            latest[customer_id] = row
            created.append(customer_id)
            lsn["crm"] += rng.randint(200, 600)
            yield Change("new_customer", "c", None, row, lsn["crm"], commit_us, tx_id)
        else:
            customer_id = _link_target(rng, stripe, stripe_size, linked, created)
            linked.add(customer_id)
            current = latest.get(customer_id) or customer_row(customer(spec.seed, customer_id))
            member_id = f"LM-{spec.index}{len(linked):08d}"
            lsn["loyalty"] += rng.randint(200, 600)
            row = _member(member_id, current, commit_us, rng)
            yield Change("new_member", "c", None, row, lsn["loyalty"], commit_us, tx_id)


def _link_target(
    rng: random.Random, stripe: int, stripe_size: int, linked: set[int], created: list[int]
) -> int:
    for _ in range(8):
        if stripe_size <= 0:
            break
        candidate = stripe + LINK_STRIPES * rng.randint(1, stripe_size)
        if candidate not in linked:
            return candidate
    while created:
        candidate = created.pop(rng.randrange(len(created)))
        if candidate not in linked:
            return candidate
    raise ValueError("no customer left to link a loyalty member to")


def _updated(before: Row, commit_us: int, rng: random.Random) -> Row:
    row = list(before)
    row[7] = _pg_timestamp(commit_us - rng.randint(0, 3_600) * 1_000_000)  # last_contacted_at
    if rng.random() < 0.3:
        row[6] = rng.choice(_STAGES)  # lifecycle_stage
    if rng.random() < 0.2:
        row[8] = rng.choice(_NOTES)  # notes
    if rng.random() < 0.1:
        row[5] = rng.choice(_OWNERS)  # owner_email
    row[10] = _pg_timestamptz(commit_us)  # updated_at
    return tuple(row)


def _new_customer(seed: int, customer_id: int, commit_us: int) -> Row:
    c = customer(seed, customer_id)
    row = list(customer_row(c))
    row[6] = "lead"
    row[7] = None
    row[9] = row[10] = _pg_timestamptz(commit_us)
    return tuple(row)


def _member(member_id: str, crm_row: Row, commit_us: int, rng: random.Random) -> Row:
    points = rng.randint(0, 60_000)
    return (
        member_id,
        crm_row[0],
        (crm_row[3] or "").lower(),
        f"07700 9{rng.randint(0, 99_999):05d}",
        crm_row[1],
        crm_row[2],
        rng.choice(_TIERS),
        str(points),
        str(points + rng.randint(0, 200_000)),
        f"{rng.uniform(0, 20_000):.2f}",
        "active",
        rng.choice("YN"),
        rng.choice("tf"),
        _pg_timestamptz(commit_us - rng.randint(0, 86_400) * 1_000_000),
        _pg_timestamptz(commit_us),
        _pg_timestamptz(commit_us),
    )


class EventFactory:
    """Turns workload changes into the connector's change events (as its sinks receive them)."""

    def __init__(self, names: SourceNames) -> None:
        options = EncodingOptions()
        self._builders = {
            "crm": (TableEventBuilder(names.crm, CUSTOMER_SHAPE, options), names.crm, "crm"),
            "loyalty": (
                TableEventBuilder(names.loyalty, MEMBER_SHAPE, options),
                names.loyalty,
                "loyalty",
            ),
        }

    def event(self, change: Change) -> ChangeEvent:
        """The change event of one row change."""
        which = "loyalty" if change.kind == "new_member" else "crm"
        builder, name, db = self._builders[which]
        source = SourceInfo(
            name=name,
            db=db,
            schema=builder.shape.schema,
            table=builder.shape.name,
            ts_us=change.commit_us,
            tx_id=change.tx_id,
            lsn=change.lsn,
            last_commit_lsn=change.lsn - 1,
        )
        before = builder.row(change.before) if change.before is not None else None
        return builder.event(
            change.op, before, builder.row(change.after), source, change.commit_us + 800
        )


def events(spec: WorkloadSpec, names: SourceNames, chunk: int) -> Iterator[list[ChangeEvent]]:
    """The workload's change events, ``chunk`` at a time."""
    factory = EventFactory(names)
    out: list[ChangeEvent] = []
    for change in changes(spec):
        out.append(factory.event(change))
        if len(out) == chunk:
            yield out
            out = []
    if out:
        yield out
