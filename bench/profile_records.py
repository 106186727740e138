"""What a change costs as its profile's records pile up (part of the growth scenario).

Every change to a person recomputes their profile from all of their records, and each mapped
activity row (a points-ledger entry) is a record that stays. Here one loyalty member, linked to
a CRM customer, is given a growing number of ledger records; at each size the same change (the
member's points move) is applied one per store transaction, as a quiet live stream applies them,
and timed in this process. The figure is the engine's CPU per change next to the same change to
a profile of 2 records (the customer and the member).

The records are shaped as the demo's mapping builds them (its tables' keys and identifiers, a
few of their fields: ``crm.customers``, ``loyalty.members``, ``loyalty.points_ledger``) and
applied by the real :class:`ProfileApplier` with the demo's identity types and survivorship
rules, on a migrated database of its own.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from unified_profile.server.config import ServiceConfig
from unified_profile.server.engine.records import Identifier, RecordKey, SourceRecord
from unified_profile.server.ingest.applier import IncomingRecord, ProfileApplier
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore

from .apply_data import CUSTOMERS, MEMBERS, SourceNames
from .report import Figure

LEDGER = "loyalty.points_ledger"
_LEDGER_BATCH = 500
_BASE_US = 1_790_000_000_000_000  # 2026-09-21, µs since 1970


def measure(
    dsn: str, config: ServiceConfig, names: SourceNames, sizes: tuple[int, ...], changes: int
) -> dict[str, dict[str, Any]]:
    """Engine CPU and wall time per change to a member whose profile holds each of ``sizes``
    records (the smallest first; each at least 2), keyed by the size as text."""
    migrate.upgrade(dsn)
    store = ProfileStore.connect(dsn)
    try:
        applier = ProfileApplier(config.mapping.identity_types, config.rules)
        position = itertools.count(1).__next__

        def apply(*records: SourceRecord) -> None:
            with store.batch() as batch:
                applier.apply(batch, [
                    IncomingRecord(r, {"source": r.key.source, "key": r.key.key,
                                       "lsn": r.position})
                    for r in records
                ])

        def points_moved(person: int) -> Callable[[int], None]:
            return lambda change: apply(_member(names, person, change, position()))

        out: dict[str, dict[str, Any]] = {}
        for person, size in enumerate(sizes, start=1):
            if size < 2:
                raise ValueError(f"a profile here holds at least 2 records, not {size}")
            apply(_customer(names, person, position()))
            apply(_member(names, person, 0, position()))
            entries = size - 2
            for start in range(0, entries, _LEDGER_BATCH):
                apply(*(
                    _ledger(names, person, entry, position())
                    for entry in range(start, min(entries, start + _LEDGER_BATCH))
                ))
            _check_holds(store, person, size)
            out[str(size)] = _timed(points_moved(person), changes)
        return out
    finally:
        store.close()


def figures(results: dict[str, dict[str, Any]]) -> list[Figure]:
    """One row per size; from the second on, next to the smallest size's figure."""
    if not results:
        return []
    smallest, first = next(iter(results.items()))
    out: list[Figure] = []
    for size, result in results.items():
        base = first["cpu_us_per_change"] if size != smallest else None
        out.append(Figure(
            f"growth: engine CPU per change to a profile of {int(size):,} records "
            "(one change per store transaction)",
            result["cpu_us_per_change"], "µs",
            baseline=base,
            baseline_name=f"the same change to a profile of {int(smallest):,} records"
            if base is not None else None,
        ))
    return out


def _check_holds(store: ProfileStore, person: int, size: int) -> None:
    """The records built for ``person`` are one profile of ``size`` records, or the figure
    would time something else."""
    profile_id = store.find_profile(Identifier("crm_id", str(person)))
    found = store.get_profile(profile_id) if profile_id is not None else None
    held = found[0].record_count if found is not None else 0
    if held != size:
        raise RuntimeError(f"member {person}'s profile holds {held} records, not {size}")


def _timed(change: Callable[[int], None], changes: int) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    for index in range(1, changes + 1):
        change(index)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "changes": changes,
        "cpu_us_per_change": cpu / changes * 1e6,
        "wall_ms_per_change": wall / changes * 1e3,
    }


def _record(
    source: str, table: str, key: dict[str, Any], position: int, fields: dict[str, Any],
    identifiers: set[Identifier], *, versioned: bool = True,
) -> SourceRecord:
    """A record committed at ``position`` seconds after the base time; ``versioned``: its table
    has a version column (``updated_at``), whose value is then that time."""
    moment = _commit_us(position)
    return SourceRecord(
        key=RecordKey.of(source, table, key), fields=fields, identifiers=frozenset(identifiers),
        version=moment if versioned else None, commit_time_us=moment, position=position,
    )


def _commit_us(position: int) -> int:
    return _BASE_US + position * 1_000_000


def _customer(names: SourceNames, person: int, position: int) -> SourceRecord:
    email = f"member{person}@example.com"
    return _record(
        names.crm, CUSTOMERS, {"id": person}, position,
        {"person.given_name": "Ada", "person.family_name": f"Lovelace {person}",
         "contact.email": email, "crm.customer_id": str(person)},
        {Identifier("crm_id", str(person)), Identifier("email", email)},
    )


def _member(names: SourceNames, person: int, change: int, position: int) -> SourceRecord:
    member_id = f"M{person:08d}"
    return _record(
        names.loyalty, MEMBERS, {"member_id": member_id}, position,
        {"loyalty.member_id": member_id, "loyalty.tier": "gold",
         "loyalty.points_balance": 1_000 + change, "loyalty.lifetime_points": 5_000 + change,
         "loyalty.status": "active"},
        {Identifier("loyalty_id", member_id), Identifier("crm_id", str(person))},
    )


def _ledger(names: SourceNames, person: int, entry: int, position: int) -> SourceRecord:
    member_id = f"M{person:08d}"
    seconds = _commit_us(position) // 1_000_000
    return _record(
        names.loyalty, LEDGER, {"entry_id": person * 1_000_000 + entry}, position,
        {"loyalty.last_activity_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))},
        {Identifier("loyalty_id", member_id)}, versioned=False,
    )


__all__ = ["figures", "measure"]
