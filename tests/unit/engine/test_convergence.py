"""Property tests: the engine's output depends only on the set of latest record images.

Replays, duplicates and out-of-order delivery must converge (DESIGN.md §4), so any permutation or
duplication of the same record images and overrides must give identical clusters, links,
conflicts, and merged fields with their provenance, and folding batches one at a time must end
where one recomputation from scratch ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.engine import key
from unified_profile.server.engine.identity import (
    IdentifierType,
    IdentityResolution,
    LinkOverride,
    latest_images,
    resolve_identities,
)
from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord
from unified_profile.server.engine.survivorship import FieldValue, Rule, RuleSet, merge_fields

TYPES = {
    "crm_id": IdentifierType("crm_id", max_per_profile=1),
    "loyalty_id": IdentifierType("loyalty_id", max_per_profile=1),
    "email": IdentifierType("email", max_per_profile=2),
    "phone": IdentifierType("phone"),
}
# Few values per type so that records share them often; blocked ones ("0", "null", "", …) too.
POOLS = {
    "crm_id": ["1", "2", "3", "0"],
    "loyalty_id": ["1", "2", "null"],
    "email": ["a@x", "b@x", "c@x", "", "anonymous"],
    "phone": ["555", "556", "-1"],
    "undeclared": ["u"],
}
RULES = RuleSet(
    default=Rule("last_writer_wins", ("crm", "loyalty")),
    patterns=(
        ("person.*", Rule("source_priority", ("crm", "loyalty"))),
        ("loyalty.*", Rule("source_priority", ("loyalty",))),
        ("consent.*", Rule("most_restrictive")),
        ("traits.best", Rule("max")),
        ("traits.first", Rule("min")),
        ("traits.visits", Rule("sum")),
        ("traits.tags", Rule("union")),
    ),
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "person.given_name": st.sampled_from(["Ada", "Grace", "Alan"]),
    "contact.email": st.sampled_from(["a@x", "b@x"]),
    "loyalty.points_balance": st.integers(0, 3),
    "consent.email_marketing.granted": st.booleans(),
    "traits.best": st.integers(0, 3) | st.sampled_from([1.0, 2.5]),
    "traits.first": st.sampled_from(["2020-01-01", "2021-06-30", "2019-12-31"]),
    "traits.visits": st.integers(-5, 5) | st.sampled_from([0.1, 1e16, -1e16]),
    "traits.tags": st.lists(st.sampled_from(["vip", "eu", "new"]), max_size=3)
    | st.sampled_from(["vip", "b2b"]),
}
KINDS: list[Literal["force", "never"]] = ["force", "never"]
KEYS = [key(source, pk) for source in ("crm", "loyalty", "pos") for pk in (1, 2, 3, 4)]

identifiers = st.frozensets(
    st.sampled_from([Identifier(t, v) for t, pool in POOLS.items() for v in pool]), max_size=4
)
field_values = st.fixed_dictionaries({}, optional={p: st.none() | s for p, s in VALUES.items()})


@st.composite
def images(draw: st.DrawFn, record_key: RecordKey, position: int) -> SourceRecord:
    return SourceRecord(
        key=record_key,
        fields=draw(field_values),
        identifiers=draw(identifiers),
        version=draw(st.none() | st.integers(0, 4)),
        commit_time_us=draw(st.integers(0, 4)),  # small ranges: ties are the interesting case
        position=position,
        deleted=draw(st.sampled_from([False, False, False, True])),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[SourceRecord]:
    """Every image ever delivered for a few records: older images must lose to newer ones."""
    record_keys = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=10))
    delivered: list[SourceRecord] = []
    for record_key in record_keys:
        positions = draw(st.lists(st.integers(1, 50), unique=True, min_size=1, max_size=3))
        delivered += [draw(images(record_key, p)) for p in positions]
    return delivered


overrides = st.lists(
    st.builds(
        lambda kind, pair: LinkOverride(kind, *pair),
        st.sampled_from(KINDS),
        st.lists(st.sampled_from(KEYS), min_size=2, max_size=2, unique=True),
    ),
    max_size=3,
)


def outcome(
    records: Iterable[SourceRecord], steward: Iterable[LinkOverride]
) -> tuple[IdentityResolution, list[dict[str, FieldValue]]]:
    """Everything a user could observe: identities, and each profile's fields with provenance."""
    latest = {r.key: r for r in latest_images(records)}
    resolution = resolve_identities(latest.values(), TYPES, steward)
    profiles = [
        merge_fields([latest[k] for k in cluster], RULES) for cluster in resolution.clusters
    ]
    return resolution, profiles


def redelivered(data: st.DataObject, items: list[Any]) -> list[Any]:
    """The same items shuffled, some delivered more than once."""
    shuffled = data.draw(st.permutations(items))
    extra = data.draw(st.lists(st.sampled_from(items), max_size=5)) if items else []
    return data.draw(st.permutations(shuffled + extra))


def reordered_fields(record: SourceRecord) -> SourceRecord:
    """An equal image whose field mapping iterates in another order."""
    fields = dict(reversed(list(record.fields.items())))
    return SourceRecord(
        record.key,
        fields,
        record.identifiers,
        record.version,
        record.commit_time_us,
        record.position,
        record.deleted,
    )


@settings(deadline=None, max_examples=300)
@given(histories(), overrides, st.data())
def test_permutations_and_duplicates_converge(
    delivered: list[SourceRecord], steward: list[LinkOverride], data: st.DataObject
) -> None:
    expected = outcome(delivered, steward)
    replay = [reordered_fields(r) for r in redelivered(data, delivered)]
    mirrored = [LinkOverride(o.kind, o.b, o.a) for o in redelivered(data, steward)]
    assert outcome(replay, mirrored) == expected


@settings(deadline=None, max_examples=200)
@given(histories(), overrides, st.data())
def test_batch_by_batch_equals_from_scratch(
    delivered: list[SourceRecord], steward: list[LinkOverride], data: st.DataObject
) -> None:
    # The store keeps the newest image per record and recomputes after each batch; whatever the
    # batching and arrival order, the last recomputation equals one over everything.
    arrival = data.draw(st.permutations(delivered))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arrival)), max_size=4)))
    stored: dict[RecordKey, SourceRecord] = {}
    result = outcome([], steward)
    for start, end in zip([0, *cuts], [*cuts, len(arrival)], strict=True):
        for image in arrival[start:end]:
            if image.key not in stored or image.position > stored[image.key].position:
                stored[image.key] = image
        result = outcome(stored.values(), steward)
    assert result == outcome(delivered, steward)


@settings(deadline=None, max_examples=200)
@given(histories(), overrides)
def test_components_resolve_alone_as_within_everything(
    delivered: list[SourceRecord], steward: list[LinkOverride]
) -> None:
    # The applier resolves only the records a batch can reach (through shared identifier values
    # and overrides); that must agree with resolving every record at once.
    latest = latest_images(delivered)
    component = {r.key: r.key for r in latest}

    def root(k: RecordKey) -> RecordKey:
        while component[k] != k:
            k = component[k]
        return k

    holder: dict[Identifier, RecordKey] = {}
    edges = [(o.a, o.b) for o in steward if o.a in component and o.b in component]
    for r in latest:
        edges += [(holder.setdefault(i, r.key), r.key) for i in r.identifiers]
    for a, b in edges:
        component[root(a)] = root(b)
    parts: dict[RecordKey, list[SourceRecord]] = {}
    for r in latest:
        parts.setdefault(root(r.key), []).append(r)
    whole = resolve_identities(latest, TYPES, steward)
    alone = [resolve_identities(part, TYPES, steward) for part in parts.values()]
    assert {c for res in alone for c in res.clusters} == set(whole.clusters)
    assert {x for res in alone for x in res.links} == set(whole.links)
    assert {x for res in alone for x in res.conflicts} == set(whole.conflicts)


@settings(deadline=None, max_examples=300)
@given(histories(), overrides)
def test_resolution_invariants(delivered: list[SourceRecord], steward: list[LinkOverride]) -> None:
    latest = latest_images(delivered)
    resolution = resolve_identities(delivered, TYPES, steward)
    live = {r.key for r in latest if not r.deleted}
    # Every live record in exactly one cluster, deleted records in none.
    assert sorted(k for c in resolution.clusters for k in c) == sorted(live)
    forced = {(o.a, o.b) for o in steward if o.kind == "force"}
    for cluster in resolution.clusters:
        links = [link for link in resolution.links if link.a in cluster]
        assert all(link.b in cluster for link in links)
        assert _connected(cluster, [(link.a, link.b) for link in links])
        # No never-linked pair shares a profile.
        assert not any(o.kind == "never" and {o.a, o.b} <= cluster for o in steward)
        # A limit can only be exceeded where a steward forced records together, or by the values
        # of one record alone (which then links only to records bringing no other value).
        if not any({a, b} <= cluster for a, b in forced):
            for name, type_ in TYPES.items():
                own = [_values(r, type_) for r in latest if r.key in cluster]
                held = set().union(*own)
                limit = type_.max_per_profile
                assert limit is None or len(held) <= limit or held in own
    # Blocked and undeclared values never link anything.
    for link in resolution.links:
        if link.via != "steward":
            assert link.via.type in TYPES
            assert not TYPES[link.via.type].is_blocked(link.via.value)


def _values(record: SourceRecord, type_: IdentifierType) -> set[str]:
    return {
        i.value
        for i in record.identifiers
        if i.type == type_.name and not type_.is_blocked(i.value)
    }


def _connected(cluster: frozenset[RecordKey], edges: list[tuple[RecordKey, RecordKey]]) -> bool:
    start = min(cluster)
    reached, frontier = {start}, [start]
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            for here, there in ((a, b), (b, a)):
                if here == node and there not in reached:
                    reached.add(there)
                    frontier.append(there)
    return reached == cluster
