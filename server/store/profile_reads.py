"""Reads for the gRPC service: batch gets, history, explain and steward inputs, status.

Beside :mod:`.profile_store` (which the engine writes through), these are the queries the service
needs. Every read takes the caller's remaining deadline and sets it as the transaction's
``statement_timeout``, so a call whose client has given up does not keep a connection busy.

Erasure (ForgetProfile) is in :mod:`.erasure`, which shares this module's helpers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.exc import DBAPIError

from ..engine.records import Identifier, RecordKey, SourceRecord
from . import schema as t
from .profile_store import ProfileStore, StoreBatch, StoredProfile, StoreError
from .rows import LoggedChange, change_entry, key_text, parse_key_text, stored_record

_QUERY_CANCELED = "57014"
_MAX_NEIGHBOURS = 5_000


class ProfileNotFound(LookupError):
    """No profile has this id (never had, was deleted, or was forgotten)."""


class QueryTimedOut(StoreError):
    """The store cancelled a statement at the caller's deadline."""


@dataclass(frozen=True, slots=True)
class ResolvedProfile:
    """A profile found by id: ``via_alias`` when the id asked for was merged into it."""

    profile: StoredProfile
    via_alias: bool


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Change-log entries of a profile and the profiles merged into it, oldest first."""

    profile_id: str
    entries: list[LoggedChange]
    more: bool


@dataclass(frozen=True, slots=True)
class ExplainInputs:
    """What ExplainProfile recomputes from: stored images, never the profile row alone.

    Attributes:
        resolved: The profile.
        records: The live records linked to it.
        neighbours: Live records of other profiles that share an identifier with it, with the
            rest of those profiles' records (what a refused link would have joined).
        overrides: Steward overrides touching any of these records: ``(kind, a, b)``.
    """

    resolved: ResolvedProfile
    records: list[SourceRecord]
    neighbours: list[SourceRecord]
    overrides: list[tuple[str, RecordKey, RecordKey]]


@dataclass(frozen=True, slots=True)
class PipelineCounts:
    """Positions, change-log bounds and counts for GetPipelineStatus."""

    positions: dict[str, dict[str, int]]
    head: int
    oldest: int
    profiles: int
    dead_letters: int


class SequenceRecordingStore(ProfileStore):
    """A :class:`ProfileStore` that remembers the change-log head each batch started from.

    The steward functions return the change rows they appended but not their sequences; the
    head at the start of their (head-locked) batch gives them exactly: ``head + 1`` onwards.
    """

    def __init__(self, store: ProfileStore) -> None:
        super().__init__(store.engine, store.dsn)
        self.batch_heads: list[int] = []

    @contextmanager
    def batch(self) -> Iterator[StoreBatch]:
        """:meth:`ProfileStore.batch`, recording the head it locked."""
        with super().batch() as batch:
            self.batch_heads.append(batch.head)
            yield batch


_GET_PROFILES = text(
    """
    SELECT r.requested, a.alias_id IS NOT NULL AS via_alias, p.profile_id, p.fields,
           p.identifiers, p.record_count, p.created_sequence, p.updated_sequence
    FROM unnest(CAST(:ids AS text[])) AS r(requested)
    LEFT JOIN up_profile_aliases a ON a.alias_id = r.requested
    JOIN up_profiles p ON p.profile_id = COALESCE(a.profile_id, r.requested)
    """
).columns(fields=JSON, identifiers=JSONB)


# One id (GetProfile, the hot path): an index lookup after the alias lookup, measured ~2.5x
# faster than the unnest form. An alias never names a profile, so a different id means an alias.
_GET_PROFILE = text(
    """
    SELECT CAST(:id AS text) AS requested, p.profile_id <> :id AS via_alias, p.profile_id,
           p.fields, p.identifiers, p.record_count, p.created_sequence, p.updated_sequence
    FROM up_profiles p
    WHERE p.profile_id = COALESCE(
        (SELECT a.profile_id FROM up_profile_aliases a WHERE a.alias_id = :id), :id)
    """
).columns(fields=JSON, identifiers=JSONB)


class ProfileReads:
    """The service's queries on the profile store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def of(cls, store: ProfileStore) -> ProfileReads:
        """Reads sharing ``store``'s connection pool."""
        return cls(store.engine)

    @contextmanager
    def _read(
        self, timeout_s: float | None, *, snapshot: bool = False
    ) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection:
                if snapshot:
                    # Several statements that must agree (records, overrides, profile).
                    connection = connection.execution_options(isolation_level="REPEATABLE READ")
                set_statement_timeout(connection, timeout_s)
                yield connection
        except DBAPIError as exc:
            raise store_error(exc) from exc

    # --- profiles -----------------------------------------------------------------------------

    def get_profiles(
        self, profile_ids: Collection[str], timeout_s: float | None = None
    ) -> dict[str, ResolvedProfile]:
        """Profiles by id or alias; ids not found are absent. One statement."""
        if not profile_ids:
            return {}
        with self._read(timeout_s) as c:
            if len(profile_ids) == 1:
                [only] = profile_ids
                rows = c.execute(_GET_PROFILE, {"id": only}).all()
            else:
                rows = c.execute(_GET_PROFILES, {"ids": list(profile_ids)}).all()
        return {r.requested: ResolvedProfile(_profile(r), bool(r.via_alias)) for r in rows}

    # --- history ------------------------------------------------------------------------------

    def history(
        self, profile_id: str, after: int, limit: int, timeout_s: float | None = None
    ) -> HistoryPage:
        """The changes of a profile and of every profile merged into it, after ``after``.

        An alias resolves to its survivor. A deleted or forgotten profile still has its (for a
        forgotten one, scrubbed) history.

        Raises:
            ProfileNotFound: Nothing in the store or the change log has this id.
        """
        log = t.change_log.c
        with self._read(timeout_s, snapshot=True) as c:
            target = c.execute(
                select(t.profile_aliases.c.profile_id).where(
                    t.profile_aliases.c.alias_id == profile_id
                )
            ).scalar_one_or_none() or profile_id
            ids = [target, *c.execute(
                select(t.profile_aliases.c.alias_id).where(
                    t.profile_aliases.c.profile_id == target
                )
            ).scalars()]
            rows = c.execute(
                select(t.change_log)
                .where(log.profile_id.in_(ids), log.sequence > after)
                .order_by(log.sequence)
                .limit(limit + 1)
            ).all()
            if not rows and not _profile_known(c, target, ids):
                raise ProfileNotFound(f"profile {profile_id!r} not found")
        entries = [change_entry(r) for r in rows[:limit]]
        return HistoryPage(target, entries, more=len(rows) > limit)

    def changes_between(
        self, first: int, last: int, timeout_s: float | None = None
    ) -> list[LoggedChange]:
        """The change-log entries ``first..last`` (inclusive), in order."""
        if last < first:
            return []
        log = t.change_log.c
        with self._read(timeout_s) as c:
            rows = c.execute(
                select(t.change_log)
                .where(log.sequence >= first, log.sequence <= last)
                .order_by(log.sequence)
            ).all()
        return [change_entry(r) for r in rows]

    # --- explain and steward inputs -----------------------------------------------------------

    def explain_inputs(self, profile_id: str, timeout_s: float | None = None) -> ExplainInputs:
        """The stored images ExplainProfile recomputes from (one consistent snapshot).

        Raises:
            ProfileNotFound: No profile has this id or alias.
        """
        with self._read(timeout_s, snapshot=True) as c:
            resolved = resolve_profile(c, profile_id)
            records = live_records(c, t.source_records.c.profile_id == resolved.profile.profile_id)
            own = {r.key for r in records}
            identifiers = {i for r in records for i in r.identifiers}
            neighbours = _neighbours(c, own, identifiers)
            keys = own | {r.key for r in neighbours}
            overrides = _overrides(c, keys)
        return ExplainInputs(resolved, records, neighbours, overrides)

    def profile_records(
        self, profile_ids: Collection[str], timeout_s: float | None = None
    ) -> tuple[dict[str, ResolvedProfile], dict[str, list[RecordKey]], list[tuple[str, RecordKey, RecordKey]]]:
        """For steward operations: the profiles (by requested id), their live records, overrides.

        Returns:
            ``(profiles by requested id, record keys by resolved profile id (sorted),
            overrides touching those records)``; ids not found are absent.
        """
        with self._read(timeout_s, snapshot=True) as c:
            rows = c.execute(_GET_PROFILES, {"ids": list(profile_ids)}).all()
            resolved = {r.requested: ResolvedProfile(_profile(r), bool(r.via_alias)) for r in rows}
            targets = sorted({p.profile.profile_id for p in resolved.values()})
            sr = t.source_records.c
            keys: dict[str, list[RecordKey]] = {p: [] for p in targets}
            for source, table, key, owner in c.execute(
                select(sr.source, sr.table_name, sr.record_key, sr.profile_id)
                .where(sr.profile_id.in_(targets))
                .order_by(sr.source, sr.table_name, sr.record_key)
            ):
                keys[owner].append(RecordKey(source, table, key))
            overrides = _overrides(c, {k for ks in keys.values() for k in ks})
        return resolved, keys, overrides

    # --- status -------------------------------------------------------------------------------

    def pipeline_counts(self, timeout_s: float | None = None) -> PipelineCounts:
        """Positions per consumer and stream, change-log head and oldest entry, row counts."""
        with self._read(timeout_s) as c:
            positions: dict[str, dict[str, int]] = {}
            for consumer, stream, position in c.execute(
                select(t.positions.c.consumer, t.positions.c.stream, t.positions.c.position)
            ):
                positions.setdefault(consumer, {})[stream] = int(position)
            head = int(c.execute(select(t.change_log_head.c.sequence)).scalar_one())
            oldest = c.execute(select(func.min(t.change_log.c.sequence))).scalar_one()
            profiles = _row_count(c, t.profiles)
            dead = int(c.execute(select(func.count()).select_from(t.dead_letters)).scalar_one())
        return PipelineCounts(positions, head, int(oldest or 0), profiles, dead)


# --- helpers ----------------------------------------------------------------------------------


def set_statement_timeout(connection: Connection, timeout_s: float | None) -> None:
    """Make the caller's remaining time the current transaction's ``statement_timeout``."""
    if timeout_s is None:
        return
    # Local to this transaction: the pooled connection goes back with its default.
    millis = max(1, int(timeout_s * 1000))
    connection.execute(
        select(func.set_config("statement_timeout", str(millis), True))
    )


def store_error(exc: DBAPIError) -> StoreError:
    """The store error for a database error (:class:`QueryTimedOut` for a cancelled statement)."""
    if getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED:
        return QueryTimedOut("the store cancelled the query at the deadline")
    return StoreError(f"store query failed: {exc.orig or exc}")


def _profile(row: Any) -> StoredProfile:
    return StoredProfile(
        row.profile_id,
        row.fields,
        row.identifiers,
        row.record_count,
        row.created_sequence,
        row.updated_sequence,
    )


def resolve_profile(c: Connection, profile_id: str) -> ResolvedProfile:
    """The profile named by an id or alias.

    Raises:
        ProfileNotFound: Neither.
    """
    row = c.execute(_GET_PROFILES, {"ids": [profile_id]}).one_or_none()
    if row is None:
        raise ProfileNotFound(f"profile {profile_id!r} not found")
    return ResolvedProfile(_profile(row), bool(row.via_alias))


def _profile_known(c: Connection, target: str, ids: Sequence[str]) -> bool:
    if c.execute(select(t.profiles.c.profile_id).where(t.profiles.c.profile_id == target)).first():
        return True
    return c.execute(
        select(t.change_log.c.sequence).where(t.change_log.c.profile_id.in_(ids)).limit(1)
    ).first() is not None


def live_records(c: Connection, condition: Any, limit: int | None = None) -> list[SourceRecord]:
    """Live record images matching ``condition`` on ``up_source_records``, by key."""
    sr = t.source_records.c
    query = (
        select(t.source_records)
        .where(condition, sr.deleted.is_(False))
        .order_by(sr.source, sr.table_name, sr.record_key)
    )
    if limit is not None:
        query = query.limit(limit)
    return [stored_record(r).record for r in c.execute(query)]


def _neighbours(
    c: Connection, own: set[RecordKey], identifiers: set[Identifier]
) -> list[SourceRecord]:
    """Records of the other profiles holding one of ``identifiers``, whole profiles at a time."""
    if not identifiers:
        return []
    ri, sr = t.record_identifiers.c, t.source_records.c
    sharing = (
        select(sr.profile_id)
        .join_from(
            t.record_identifiers,
            t.source_records,
            and_(
                ri.source == sr.source,
                ri.table_name == sr.table_name,
                ri.record_key == sr.record_key,
            ),
        )
        .where(tuple_(ri.type, ri.value).in_([(i.type, i.value) for i in sorted(identifiers)]))
    )
    # A household value shared by thousands of records would make this unbounded: cap it.
    found = live_records(c, sr.profile_id.in_(sharing.scalar_subquery()), _MAX_NEIGHBOURS)
    return [r for r in found if r.key not in own]


def _overrides(c: Connection, keys: Collection[RecordKey]) -> list[tuple[str, RecordKey, RecordKey]]:
    if not keys:
        return []
    texts = [key_text(k) for k in keys]
    lo = t.link_overrides.c
    rows = c.execute(
        select(lo.kind, lo.record_a, lo.record_b).where(
            or_(lo.record_a.in_(texts), lo.record_b.in_(texts))
        )
    ).all()
    return [
        (kind, parse_key_text(a), parse_key_text(b)) for kind, a, b in rows
    ]


def _row_count(c: Connection, table: Any) -> int:
    # An exact count scans the table; past a few hundred thousand rows the planner's estimate is
    # what a status page needs.
    estimate = c.execute(
        text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"), {"name": table.name}
    ).scalar()
    if estimate is not None and estimate >= 200_000:
        return int(estimate)
    return int(c.execute(select(func.count()).select_from(table)).scalar_one())


__all__ = [
    "ExplainInputs",
    "HistoryPage",
    "PipelineCounts",
    "ProfileNotFound",
    "ProfileReads",
    "QueryTimedOut",
    "ResolvedProfile",
    "SequenceRecordingStore",
]
