"""Identity resolution: which source records are the same person.

Records that share a normalised identifier value (an email, a CRM id, a loyalty member's
``crm_customer_id`` link column) are one person, unless joining them would give the profile more
distinct values of some identifier type than that type's ``max_per_profile`` allows, or a steward
said never to link two of them. Those refusals are kept as :class:`IdentityConflict` so a steward
can see them; every join is kept as a :class:`Link` so ExplainProfile can say why records are
together.

The result is a pure function of the *set* of live records and overrides: any permutation or
duplication of the input gives an identical :class:`IdentityResolution`. Limits make the outcome
depend on the order in which candidate joins are tried, so that order is canonical:

1. steward force-links, sorted by record keys (they beat limits, never beats them);
2. identifier values grouped by type: types with ``max_per_profile == 1`` first (the strongest
   evidence: an id), then by type name; within a type, values in sorted order.

All records carrying one identifier value are joined *all or nothing*: if the clusters they are in
cannot all become one profile, the value links none of them and a conflict is recorded. A shared
household email is evidence of a household, not of a person: attaching a third record to whichever
customer sorts first would be a coin toss, and a wrong merge leaks one person's data into another's
profile while a missed merge is visible and fixable with a force-link.

Transitivity is greedy in that order: if A and B share an email and B and C share a phone, and C
carries another ``crm_id`` than A, the email (processed first by name) joins A and B, and the phone
is then refused because B's profile already holds A's ``crm_id``. Had the phone come first, B would
have joined C instead. Each join is final within one resolution; the next resolution starts again
from the records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord, key_order

NORMALIZE_STEPS: tuple[str, ...] = ("trim", "lower", "digits", "collapse_spaces")
"""Normalisation steps an :class:`IdentifierType` may list, applied in the order listed."""

DEFAULT_BLOCKED: tuple[str, ...] = (
    "",
    "null",
    "none",
    "-1",
    "0",
    "anonymous",
    "unknown",
    "n/a",
    "^[0-]*$",
)
"""Placeholder values that identify nobody; ``^…`` entries are full-match regexes."""

STEWARD: Literal["steward"] = "steward"
"""The ``via`` of a link (or the subject of a conflict) that comes from a steward override."""


@dataclass(frozen=True, slots=True)
class IdentifierType:
    """A declared identifier type (``crm_id``, ``email``, …).

    Attributes:
        name: The type's name, as in :class:`~unified_profile.server.engine.records.Identifier`.
        normalize: Steps from :data:`NORMALIZE_STEPS`, applied in order: ``trim`` (strip
            whitespace), ``lower``, ``digits`` (keep digits only), ``collapse_spaces`` (runs of
            whitespace become one space, ends trimmed).
        blocked: Values that identify nobody (the empty string never does, whatever this lists). An entry starting with ``^`` is a regex that must
            match the whole normalised value; any other entry is compared with the normalised
            value ignoring case (placeholders arrive as ``NULL``, ``None``, ``Unknown``…).
        max_per_profile: At most this many distinct values of this type in one profile
            (``crm_id``: 1), or ``None`` for no limit.

    Raises:
        ValueError: An unknown normalisation step, an invalid regex or a limit below 1.
    """

    name: str
    normalize: tuple[str, ...] = ("trim",)
    blocked: tuple[str, ...] = DEFAULT_BLOCKED
    max_per_profile: int | None = None
    _blocked_exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _blocked_patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [step for step in self.normalize if step not in NORMALIZE_STEPS]
        if unknown:
            raise ValueError(f"identifier type {self.name!r}: unknown normalize step(s) {unknown}")
        if self.max_per_profile is not None and self.max_per_profile < 1:
            raise ValueError(f"identifier type {self.name!r}: max_per_profile must be at least 1")
        patterns: list[re.Pattern[str]] = []
        for entry in self.blocked:
            if entry.startswith("^"):
                try:
                    patterns.append(re.compile(entry))
                except re.error as exc:
                    raise ValueError(
                        f"identifier type {self.name!r}: blocked regex {entry!r}: {exc}"
                    ) from exc
        exact = frozenset(e.casefold() for e in self.blocked if not e.startswith("^"))
        # Frozen dataclass: derived lookup tables are set once here, never changed afterwards.
        object.__setattr__(self, "_blocked_exact", exact)
        object.__setattr__(self, "_blocked_patterns", tuple(patterns))

    def is_blocked(self, value: str) -> bool:
        """Whether an already normalised value is empty or a placeholder that identifies nobody."""
        if not value or value.casefold() in self._blocked_exact:
            return True
        # A loop, not any(<generator>): this runs once per identifier of every event.
        for pattern in self._blocked_patterns:  # noqa: SIM110
            if pattern.fullmatch(value):
                return True
        return False


def _apply_step(step: str, text: str) -> str:
    if step == "trim":
        return text.strip()
    if step == "lower":
        return text.lower()
    if step == "digits":
        return "".join(c for c in text if c.isdigit())
    # collapse_spaces (validated by IdentifierType)
    return " ".join(text.split())


def normalize_identifier(identifier_type: IdentifierType, raw: object) -> str | None:
    """Normalise a raw identifier value as its type declares.

    The mapping layer and the LookupProfile RPC both call this, so a value typed into a lookup
    matches the value stored from a source row.

    Args:
        identifier_type: The declared type.
        raw: A column value: ``str``, ``int``, a whole ``float`` (``42.0`` → ``"42"``) or ``None``.

    Returns:
        The normalised value, or ``None`` when it is missing, empty after normalisation or blocked.

    Raises:
        TypeError: ``raw`` is a bool, a container or another type that cannot be an identifier.
    """
    if raw is None:
        return None
    text: str
    if isinstance(raw, bool):
        raise TypeError(f"identifier {identifier_type.name!r}: a boolean cannot identify anyone")
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, int):
        text = str(raw)
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        # JSON decoders and numeric columns turn 42 into 42.0; both must find the same person.
        text = str(int(raw)) if raw.is_integer() else repr(raw)
    else:
        raise TypeError(
            f"identifier {identifier_type.name!r}: cannot use a {type(raw).__name__} value"
        )
    for step in identifier_type.normalize:
        text = _apply_step(step, text)
    if identifier_type.is_blocked(text):
        return None
    return text


@dataclass(frozen=True, slots=True, order=True)
class LinkOverride:
    """A steward's decision about two records, respected by every resolution.

    ``a`` and ``b`` are stored in sorted order, so an override equals its mirror image.

    Raises:
        ValueError: An unknown kind, or ``a`` and ``b`` are the same record.

    Attributes:
        kind: ``force`` joins the two records whatever the limits say; ``never`` keeps them in
            different profiles, and beats a force-link that would join them.
        a: One record.
        b: The other record.
    """

    kind: Literal["force", "never"]
    a: RecordKey
    b: RecordKey

    def __post_init__(self) -> None:
        if self.kind not in ("force", "never"):
            raise ValueError(f"link override kind must be 'force' or 'never', not {self.kind!r}")
        if self.a == self.b:
            raise ValueError(f"a link override needs two different records, not {self.a} twice")
        if self.b < self.a:
            a, b = self.b, self.a
            object.__setattr__(self, "a", a)
            object.__setattr__(self, "b", b)


@dataclass(frozen=True, slots=True)
class Link:
    """Why two records are in the same profile.

    Attributes:
        a: The record that sorts first.
        b: The other record.
        via: The identifier value they share, or ``"steward"`` for a force-link.
    """

    a: RecordKey
    b: RecordKey
    via: Identifier | Literal["steward"]


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """A shared identifier (or a force-link) that was *not* used, and why.

    Attributes:
        identifier: The identifier value shared by ``records``, or ``"steward"`` for a force-link
            overruled by a never-link.
        records: Every live record carrying the identifier (or the two force-linked records),
            sorted.
        reason: Which limits would have been broken, or which never-link separates them.
    """

    identifier: Identifier | Literal["steward"]
    records: tuple[RecordKey, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class IdentityResolution:
    """Which live records are one person, and the evidence for and against.

    Attributes:
        clusters: One frozenset of record keys per person, ordered by each cluster's smallest key.
            Every live record is in exactly one; deleted records are in none.
        links: Every identifier value (and force-link) that joined records, as a star from the
            first record carrying it, in processing order.
        conflicts: Every shared identifier value (and force-link) that was refused, in processing
            order.
        by_record: Record key → its cluster.
    """

    clusters: tuple[frozenset[RecordKey], ...]
    links: tuple[Link, ...]
    conflicts: tuple[IdentityConflict, ...]
    by_record: Mapping[RecordKey, frozenset[RecordKey]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index = {key: cluster for cluster in self.clusters for key in cluster}
        object.__setattr__(self, "by_record", index)


def cluster_of(resolution: IdentityResolution, key: RecordKey) -> frozenset[RecordKey]:
    """The cluster holding ``key``.

    Raises:
        KeyError: ``key`` is deleted or was not part of the resolution.
    """
    return resolution.by_record[key]


def latest_images(records: Iterable[SourceRecord]) -> list[SourceRecord]:
    """One image per record key (the one at the highest position), sorted by key.

    Duplicates are expected (redelivery); they collapse here so that every engine function sees
    the same set whatever the input's order or repetitions.

    Raises:
        ValueError: Two different images of one record share a position.
    """
    latest: dict[RecordKey, SourceRecord] = {}
    for record in records:
        seen = latest.get(record.key)
        if seen is None or record.position > seen.position:
            latest[record.key] = record
        elif record.position == seen.position and record != seen:
            raise ValueError(f"two different images of {record.key} at position {record.position}")
    return [latest[key] for key in sorted(latest, key=key_order)]


class _Clusters:
    """Union-find with, per root, the values of limited types and the never-links it holds.

    Records are numbered by their position in the key-sorted list of live records: ints hash and
    compare far faster than record keys, and comparing them still compares keys.
    """

    def __init__(self, keys: Sequence[RecordKey], limits: Mapping[str, int]) -> None:
        self.keys = keys
        self.limits = limits
        self.parent = list(range(len(keys)))
        self.size = [1] * len(keys)
        self.values: dict[int, dict[str, set[str]]] = {}
        self.never: dict[int, set[tuple[int, int]]] = {}

    def find(self, node: int) -> int:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def forbid(self, a: int, b: int) -> None:
        self.never.setdefault(a, set()).add((a, b))
        self.never.setdefault(b, set()).add((a, b))

    def refusal(self, roots: Sequence[int], *, limits: bool) -> str | None:
        """Why ``roots`` cannot become one cluster, or ``None`` when they can."""
        reasons: list[str] = []
        if limits:
            for name in sorted(self.limits):
                sides = [self.values.get(r, {}).get(name, set()) for r in roots]
                merged = set().union(*sides)
                limit = self.limits[name]
                # A force-link may already have put a cluster over a limit; records that bring
                # no new value may still join it, anything that adds a value may not.
                if len(merged) > limit and not any(len(s) == len(merged) for s in sides):
                    reasons.append(
                        f"{name} max_per_profile {limit}: the profile would hold {len(merged)}"
                        f" values ({', '.join(sorted(merged))})"
                    )
        members = set(roots)
        broken = sorted(
            (a, b)
            for root in roots
            for a, b in self.never.get(root, ())
            if (ra := self.find(a)) in members and (rb := self.find(b)) in members and ra != rb
        )
        if broken:
            a, b = broken[0]
            reasons.append(f"never-link between {self.keys[a]} and {self.keys[b]}")
        return "; ".join(reasons) if reasons else None

    def union(self, roots: Sequence[int]) -> None:
        # Union by size, merging the smaller sides' bookkeeping into the largest one's.
        root = max(roots, key=lambda r: self.size[r])
        for other in roots:
            if other == root:
                continue
            self.parent[other] = root
            self.size[root] += self.size[other]
            if (values := self.values.pop(other, None)) is not None:
                into = self.values.setdefault(root, {})
                for name, vals in values.items():
                    into.setdefault(name, set()).update(vals)
            if (pairs := self.never.pop(other, None)) is not None:
                self.never.setdefault(root, set()).update(pairs)


def _type_order(
    identifier: Identifier, types: Mapping[str, IdentifierType]
) -> tuple[int, str, str]:
    strongest = 0 if types[identifier.type].max_per_profile == 1 else 1
    return (strongest, identifier.type, identifier.value)


def resolve_identities(
    records: Iterable[SourceRecord],
    types: Mapping[str, IdentifierType],
    overrides: Iterable[LinkOverride] = (),
) -> IdentityResolution:
    """Group live records into people (see the module docstring for the rules and their order).

    Args:
        records: Record images; duplicates collapse (:func:`latest_images`), deleted records form
            no links and appear in no cluster.
        types: Declared identifier types by name. Identifiers of undeclared types are ignored (a
            type removed from the config links nothing any more), and so are values the type
            blocks (a blocked list edited after the records were mapped applies at once).
        overrides: Steward force- and never-links. Overrides naming a deleted or absent record
            are ignored.

    Returns:
        The clusters, the links that joined them and the conflicts that kept records apart.
    """
    live = [r for r in latest_images(records) if not r.deleted]
    keys = [r.key for r in live]
    index = {k: i for i, k in enumerate(keys)}
    limits = {t.name: t.max_per_profile for t in types.values() if t.max_per_profile is not None}
    clusters = _Clusters(keys, limits)
    groups: dict[Identifier, list[int]] = {}
    for i, record in enumerate(live):
        values: dict[str, set[str]] = {}
        for identifier in record.identifiers:
            declared = types.get(identifier.type)
            if declared is None or declared.is_blocked(identifier.value):
                continue
            groups.setdefault(identifier, []).append(i)
            if identifier.type in limits:
                values.setdefault(identifier.type, set()).add(identifier.value)
        if values:
            clusters.values[i] = values

    links: list[Link] = []
    conflicts: list[IdentityConflict] = []
    steward = sorted({o for o in overrides if o.a in index and o.b in index})
    for override in steward:
        if override.kind == "never":
            clusters.forbid(index[override.a], index[override.b])
    for override in steward:
        if override.kind != "force":
            continue
        roots = sorted({clusters.find(index[override.a]), clusters.find(index[override.b])})
        reason = clusters.refusal(roots, limits=False)
        if reason is not None:
            conflicts.append(IdentityConflict(STEWARD, (override.a, override.b), reason))
            continue
        clusters.union(roots)
        links.append(Link(override.a, override.b, STEWARD))

    for identifier in sorted(groups, key=lambda i: _type_order(i, types)):
        # Records were numbered in key order, so each group is already sorted.
        members = groups[identifier]
        if len(members) < 2:
            continue
        roots = sorted({clusters.find(m) for m in members})
        if len(roots) > 1:
            reason = clusters.refusal(roots, limits=True)
            if reason is not None:
                conflicts.append(
                    IdentityConflict(identifier, tuple(keys[m] for m in members), reason)
                )
                continue
            clusters.union(roots)
        first = keys[members[0]]
        links.extend(Link(first, keys[other], identifier) for other in members[1:])

    by_root: dict[int, list[RecordKey]] = {}
    for i, record_key in enumerate(keys):
        by_root.setdefault(clusters.find(i), []).append(record_key)
    # Members were appended in key order, so each list's first key is its cluster's smallest.
    ordered = sorted(by_root.values(), key=lambda cluster: cluster[0])
    return IdentityResolution(
        clusters=tuple(frozenset(cluster) for cluster in ordered),
        links=tuple(links),
        conflicts=tuple(conflicts),
    )
