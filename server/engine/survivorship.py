"""Survivorship: which value of each profile field path wins, and where it came from.

Given the live records of one profile, every field path that at least one of them holds with a
non-null value gets a :class:`FieldValue` computed by the path's :class:`Rule`:

- ``source_priority``: the first source in ``order`` holding a value (sources not listed come
  after, by name), falling back to the next when null or absent. Several records of that source
  (two CRM rows in one profile): the newest by version (else commit time), then commit time, then
  the smallest record key.
- ``last_writer_wins``: the highest *recency*, the record's ``version`` or, when it has none, its
  commit time. Versions are µs timestamps (the mapping converts version columns so), which is why
  they compare with commit times. Ties go to source priority (``order``, as above), then the
  smallest record key. Source positions (LSNs) are never compared: they belong to different
  databases.
- ``most_restrictive``: booleans; ``False`` (revoked) beats ``True`` (granted).
- ``max`` / ``min``: numbers, or strings (ISO-8601 timestamps in one format compare as text);
  ties go to the last writer.
- ``sum``: numbers; integers stay exact, floats are summed with :func:`math.fsum` so the result
  does not depend on the order.
- ``union``: lists (each element) and scalars (the value itself) → a sorted list without
  duplicates.

Chosen-value rules give one :class:`Provenance` (the winning record); ``sum`` and ``union`` give one
per contributing record, sorted by record key. Everything depends only on the set of records, never
on their order. A value of the wrong type for its rule (a string under ``sum``) raises
:class:`TypeError`: the mapping decides types, and silently skipping a value would hide its bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from unified_profile.server.engine.identity import latest_images
from unified_profile.server.engine.records import RecordKey, SourceRecord, canonical_json

RuleKind = Literal[
    "source_priority", "last_writer_wins", "most_restrictive", "max", "min", "sum", "union"
]
RULE_KINDS: tuple[str, ...] = get_args(RuleKind)
"""Every rule kind, for config validation."""


@dataclass(frozen=True, slots=True)
class Rule:
    """How one field path's value is chosen or aggregated (see the module docstring).

    Attributes:
        kind: One of :data:`RULE_KINDS`.
        order: Source names, highest priority first: what ``source_priority`` follows and what
            breaks ``last_writer_wins`` (and ``max``/``min``/``most_restrictive``) ties.

    Raises:
        ValueError: An unknown kind, or a source listed twice.
    """

    kind: RuleKind
    order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"unknown rule {self.kind!r}; expected one of {', '.join(RULE_KINDS)}")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"rule {self.kind}: a source is listed twice in {list(self.order)}")

    def source_rank(self, source: str) -> tuple[int, str]:
        """Sort key of a source: listed sources by position, then the others by name."""
        try:
            return (self.order.index(source), "")
        except ValueError:
            return (len(self.order), source)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rule of every field path.

    Attributes:
        default: The rule of paths no pattern matches.
        patterns: ``(pattern, rule)`` pairs. A pattern is an exact path (``loyalty.tier``), a
            prefix ending in ``.*`` (``consent.*`` matches ``consent.sms.granted`` but not
            ``consent``), or ``*`` (every path). The most specific pattern wins: an exact path,
            then the longest prefix.

    Raises:
        ValueError: A pattern given twice, empty, or with a ``*`` anywhere but at its end.
    """

    default: Rule
    patterns: tuple[tuple[str, Rule], ...] = ()
    _exact: Mapping[str, Rule] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[tuple[str, Rule], ...] = field(init=False, repr=False, compare=False)
    # Paths are few and every merge asks for each of them: remember the answers.
    _resolved: dict[str, Rule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, Rule] = {}
        prefixes: dict[str, Rule] = {}
        for pattern, rule in self.patterns:
            if pattern == "*":
                target, key = prefixes, ""
            elif pattern.endswith(".*") and "*" not in pattern[:-2] and len(pattern) > 2:
                target, key = prefixes, pattern[:-1]  # keep the dot: person.* ≠ personal.x
            elif pattern and "*" not in pattern:
                target, key = exact, pattern
            else:
                raise ValueError(f"rule pattern {pattern!r}: use a path, 'prefix.*' or '*'")
            if key in target:
                raise ValueError(f"rule pattern {pattern!r} is given twice")
            target[key] = rule
        object.__setattr__(self, "_exact", exact)
        longest_first = sorted(prefixes.items(), key=lambda item: -len(item[0]))
        object.__setattr__(self, "_prefixes", tuple(longest_first))
        object.__setattr__(self, "_resolved", {})

    def rule_for(self, path: str) -> Rule:
        """The rule of ``path``: exact pattern, else the longest matching prefix, else default."""
        rule = self._resolved.get(path)
        if rule is None:
            rule = self._resolved[path] = self._match(path)
        return rule

    def _match(self, path: str) -> Rule:
        rule = self._exact.get(path)
        if rule is not None:
            return rule
        for prefix, prefix_rule in self._prefixes:
            if path.startswith(prefix):
                return prefix_rule
        return self.default


def default_rules() -> RuleSet:
    """The rules used when the config names none.

    - every path: ``last_writer_wins`` (no source order, so exact ties go to the smallest record
      key);
    - ``consent.*``: ``last_writer_wins`` as well, on purpose: a person who revokes and later
      grants again must be able to win with the grant, which ``most_restrictive`` would forbid
      forever. Configure ``most_restrictive`` instead for consent fields whose sources have no
      version column, where commit time says when a batch job ran rather than when the person
      chose; there a revocation anywhere wins.

    Systems of record (``person.*`` from the CRM, ``loyalty.*`` from the loyalty platform) name
    sources, so they come from the config as ``source_priority`` rules.
    """
    lww = Rule("last_writer_wins")
    return RuleSet(default=lww, patterns=(("consent.*", lww),))


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a field's value came from.

    Attributes:
        source: The source's logical name.
        table: ``schema.table``.
        record_key: The record's primary key as canonical JSON.
        version: The record's version, if it has one.
        commit_time_us: When the record's latest change committed in its source.
        rule: The rule kind that chose or aggregated the value.
    """

    source: str
    table: str
    record_key: str
    version: int | None
    commit_time_us: int
    rule: str


@dataclass(frozen=True, slots=True)
class FieldValue:
    """A field's surviving value with its provenance (one record, or each contributor)."""

    value: Any
    provenance: tuple[Provenance, ...]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One record's value for a field, as ExplainProfile lists it."""

    value: Any
    record: RecordKey
    version: int | None
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class FieldExplanation:
    """Every candidate value of one field path and the result.

    Attributes:
        path: The field path.
        rule: The rule that applied.
        candidates: Every live record's non-null value, best first for chosen-value rules (the
            first one won), by record key for ``sum`` and ``union``.
        result: The surviving value, or ``None`` when no live record holds the path.
    """

    path: str
    rule: Rule
    candidates: tuple[Candidate, ...]
    result: FieldValue | None


def merge_fields(records: Iterable[SourceRecord], rules: RuleSet) -> dict[str, FieldValue]:
    """The surviving value of every field path of one profile.

    Args:
        records: The profile's records; duplicates collapse, deleted records contribute nothing.
        rules: The rule of each path.

    Returns:
        Field path → value with provenance, for every path some live record holds non-null, in
        path order.

    Raises:
        TypeError: A value's type does not suit its path's rule.
    """
    by_path = _holders_by_path(_live(records))
    provenance = _ProvenanceCache()
    merged: dict[str, FieldValue] = {}
    for path in sorted(by_path):
        rule = rules.rule_for(path)
        holders = by_path[path]
        if len(holders) == 1 and rule.kind in _CHOSEN_UNCHECKED:
            # One holder (most paths: few people are in both systems) wins without ranking.
            winner = holders[0]
            merged[path] = FieldValue(winner.fields[path], provenance.sole(winner, rule))
            continue
        # A single holder under ``union`` has nothing to rank, but its value is still normalised;
        # other rules rank (and type-check) even one holder.
        ranked = holders if len(holders) == 1 and rule.kind == "union" else None
        merged[path] = _merge(path, ranked or _ranked(path, holders, rule), rule, provenance)
    return merged


def _holders_by_path(live: Sequence[SourceRecord]) -> Mapping[str, Sequence[SourceRecord]]:
    """Field path → the live records holding a non-null value there, in key order."""
    if len(live) == 1:
        # Most profiles have one record: every path shares one read-only holder list.
        only = live
        return {path: only for path, value in live[0].fields.items() if value is not None}
    by_path: dict[str, list[SourceRecord]] = {}
    for record in live:
        for path, value in record.fields.items():
            if value is not None:
                by_path.setdefault(path, []).append(record)
    return by_path


class _ProvenanceCache:
    """One :class:`Provenance` per (record, rule kind) within one merge.

    A record wins most of its paths under a handful of rules; building (and later hashing) a new
    equal object per field was a large share of a merge's cost.
    """

    __slots__ = ("_built",)

    def __init__(self) -> None:
        # Keyed by id(record): the records outlive the merge, so ids are not reused meanwhile.
        self._built: dict[tuple[int, str], tuple[Provenance]] = {}

    def __call__(self, record: SourceRecord, rule: Rule) -> Provenance:
        return self.sole(record, rule)[0]

    def sole(self, record: SourceRecord, rule: Rule) -> tuple[Provenance]:
        """The provenance as a chosen value's one-element tuple (shared: tuples are immutable)."""
        key = (id(record), rule.kind)
        found = self._built.get(key)
        if found is None:
            found = self._built[key] = (_provenance(record, rule),)
        return found


def explain_field(records: Iterable[SourceRecord], path: str, rules: RuleSet) -> FieldExplanation:
    """Every candidate for ``path`` and the winner, for ExplainProfile.

    Raises:
        TypeError: A value's type does not suit the path's rule.
    """
    rule = rules.rule_for(path)
    holders = [r for r in _live(records) if r.fields.get(path) is not None]
    if not holders:
        return FieldExplanation(path, rule, (), None)
    ranked = _ranked(path, holders, rule)
    candidates = tuple(
        Candidate(r.fields[path], r.key, r.version, r.commit_time_us) for r in ranked
    )
    return FieldExplanation(path, rule, candidates, _merge(path, ranked, rule, _provenance))


# Chosen-value rules that take any value: a single holder simply wins.
_CHOSEN_UNCHECKED = frozenset({"source_priority", "last_writer_wins"})


def _live(records: Iterable[SourceRecord]) -> list[SourceRecord]:
    return [r for r in latest_images(records) if not r.deleted]


def _recency(record: SourceRecord) -> int:
    return record.version if record.version is not None else record.commit_time_us


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _require(path: str, rule: Rule, holders: Sequence[SourceRecord], allowed: set[str]) -> None:
    kinds = {_kind(r.fields[path]) for r in holders}
    if len(kinds) > 1 or not kinds <= allowed:
        raise TypeError(
            f"field {path!r}: rule {rule.kind} needs values of one kind among"
            f" {', '.join(sorted(allowed))}; got {', '.join(sorted(kinds))}"
        )


def _ranked(path: str, holders: Sequence[SourceRecord], rule: Rule) -> list[SourceRecord]:
    """``holders`` best first for chosen-value rules, by record key for aggregates."""
    # Sorting by record key first makes every later (stable) sort independent of input order.
    ordered = sorted(holders, key=lambda r: r.key)

    def last_writer(r: SourceRecord) -> tuple[int, tuple[int, str], RecordKey]:
        return (-_recency(r), rule.source_rank(r.key.source), r.key)

    kind = rule.kind
    if kind == "source_priority":
        return sorted(
            ordered,
            key=lambda r: (rule.source_rank(r.key.source), -_recency(r), -r.commit_time_us, r.key),
        )
    if kind == "last_writer_wins":
        return sorted(ordered, key=last_writer)
    if kind == "most_restrictive":
        _require(path, rule, ordered, {"boolean"})
        ordered.sort(key=last_writer)
        ordered.sort(key=lambda r: bool(r.fields[path]))  # stable: False first, then newest
        return ordered
    if kind in ("max", "min"):
        _require(path, rule, ordered, {"number", "string"})
        ordered.sort(key=last_writer)
        # Python's sort stays stable with reverse=True, so equal values keep last-writer order.
        ordered.sort(key=lambda r: r.fields[path], reverse=kind == "max")
        return ordered
    if kind == "sum":
        _require(path, rule, ordered, {"number"})
    return ordered


def _provenance(record: SourceRecord, rule: Rule) -> Provenance:
    key = record.key
    return Provenance(
        key.source, key.table, key.key, record.version, record.commit_time_us, rule.kind
    )


def _merge(
    path: str,
    ranked: Sequence[SourceRecord],
    rule: Rule,
    provenance: Callable[[SourceRecord, Rule], Provenance],
) -> FieldValue:
    if rule.kind == "sum":
        values = [r.fields[path] for r in ranked]
        total: int | float = (
            sum(values) if all(isinstance(v, int) for v in values) else math.fsum(values)
        )
        return FieldValue(total, tuple(provenance(r, rule) for r in ranked))
    if rule.kind == "union":
        elements: dict[str, Any] = {}
        for record in ranked:
            value = record.fields[path]
            for element in value if isinstance(value, list) else [value]:
                elements.setdefault(canonical_json(element), element)
        union = [
            elements[k] for k in sorted(elements, key=lambda k: _element_order(elements[k], k))
        ]
        return FieldValue(union, tuple(provenance(r, rule) for r in ranked))
    winner = ranked[0]
    return FieldValue(winner.fields[path], (provenance(winner, rule),))


def _element_order(element: Any, text: str) -> tuple[int, Any, str]:
    # A total order over JSON values of mixed kinds: booleans, numbers, strings, then the rest by
    # their JSON text; the JSON text also separates equal numbers such as 1 and 1.0.
    kind = _kind(element)
    if kind == "boolean":
        return (0, int(element), text)
    if kind == "number":
        return (1, element, text)
    if kind == "string":
        return (2, element, text)
    return (3, text, text)
