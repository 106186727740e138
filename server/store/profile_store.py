"""The profile store: reading and writing profiles, record images, links and the change log.

The only module that talks to the store database. Writes happen inside :meth:`ProfileStore.batch`:
one transaction that first locks the change-log head row. That lock gives the change log its
gap-free sequence and serialises applying transactions of concurrent engine workers, so two
workers never recompute the same people from different snapshots (and never deadlock).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, OperationalError

from unified_profile.cdc.offsets import ConnectorOffset

from ..engine.records import Identifier, RecordKey, SourceRecord
from . import batch_sql as sql
from . import schema as t
from .engine import create_store_engine

CHANGE_CHANNEL = "up_change_log"
"""The LISTEN/NOTIFY channel announcing a new change-log head."""


class StoreError(Exception):
    """The store failed (unreachable, or a statement failed); safe to retry the batch."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record image as stored, with the profile it currently belongs to."""

    record: SourceRecord
    profile_id: str | None


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A profile row: merged fields (with provenance) and identifiers, as JSON documents."""

    profile_id: str
    fields: dict[str, Any]
    identifiers: list[list[str]]
    record_count: int
    created_sequence: int
    updated_sequence: int


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One change-log entry to append (its sequence is given by the batch)."""

    profile_id: str
    kind: str
    changes: dict[str, Any]
    related: dict[str, Any]
    cause: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LoggedChange:
    """One change-log entry as stored."""

    sequence: int
    profile_id: str
    kind: str
    changes: dict[str, Any]
    related: dict[str, Any]
    cause: list[dict[str, Any]]
    committed_at: datetime | None = None


class ProfileStore:
    """Access to the profile store database.

    Attributes:
        engine: The SQLAlchemy engine (its connection pool).
        dsn: The DSN it was opened with, when known: the gRPC service opens its own asyncio
            pool for the read hot path on it (:mod:`.read_pool`).
    """

    def __init__(self, engine: Engine, dsn: str | None = None) -> None:
        self.engine = engine
        self.dsn = dsn

    @classmethod
    def connect(cls, dsn: str) -> ProfileStore:
        """A store on ``dsn`` (the schema must be migrated: ``unified-profile migrate``)."""
        return cls(create_store_engine(dsn, pool_size=4, max_overflow=4), dsn)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    @contextmanager
    def batch(self) -> Iterator[StoreBatch]:
        """One applying transaction, holding the change-log head lock until it commits.

        Raises:
            StoreError: The database failed; nothing of the batch was committed.
        """
        try:
            with self.engine.begin() as connection:
                yield StoreBatch(connection)
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"store transaction failed: {exc.orig or exc}") from exc

    # --- reads outside a batch ----------------------------------------------------------------

    def get_profile(self, profile_id: str) -> tuple[StoredProfile, bool] | None:
        """The profile with this id, following an alias; ``(profile, was_alias)`` or ``None``."""
        with self.engine.connect() as connection:
            alias = connection.execute(
                select(t.profile_aliases.c.profile_id).where(
                    t.profile_aliases.c.alias_id == profile_id
                )
            ).scalar_one_or_none()
            found = _load_profiles(connection, [alias or profile_id])
        profile = found.get(alias or profile_id)
        return (profile, alias is not None) if profile else None

    def find_profile(self, identifier: Identifier) -> str | None:
        """The profile holding a (normalised) identifier, if any."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(t.source_records.c.profile_id)
                .join(
                    t.record_identifiers,
                    and_(
                        t.record_identifiers.c.source == t.source_records.c.source,
                        t.record_identifiers.c.table_name == t.source_records.c.table_name,
                        t.record_identifiers.c.record_key == t.source_records.c.record_key,
                    ),
                )
                .where(
                    t.record_identifiers.c.type == identifier.type,
                    t.record_identifiers.c.value == identifier.value,
                    t.source_records.c.profile_id.is_not(None),
                )
                .order_by(t.source_records.c.profile_id)
                .limit(1)
            ).scalar_one_or_none()

    def read_changes_after(self, sequence: int, limit: int = 1000) -> list[LoggedChange]:
        """Change-log entries with a sequence greater than ``sequence``, in order."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(t.change_log)
                .where(t.change_log.c.sequence > sequence)
                .order_by(t.change_log.c.sequence)
                .limit(limit)
            ).all()
        return [
            LoggedChange(
                r.sequence, r.profile_id, r.kind, r.changes, r.related, r.cause, r.committed_at
            )
            for r in rows
        ]

    def head_sequence(self) -> int:
        """The newest change-log sequence (0 when empty)."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(t.change_log_head.c.sequence)).scalar_one())

    def load_positions(self, consumer: str) -> dict[str, int]:
        """Stream → position applied by ``consumer``."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(t.positions.c.stream, t.positions.c.position).where(
                    t.positions.c.consumer == consumer
                )
            ).all()
        return {stream: int(position) for stream, position in rows}

    def all_profiles(self) -> dict[str, StoredProfile]:
        """Every profile (tests and reconciliation; not for hot paths)."""
        with self.engine.connect() as connection:
            ids = connection.execute(select(t.profiles.c.profile_id)).scalars().all()
            return _load_profiles(connection, list(ids))

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(t.dead_letters).order_by(t.dead_letters.c.id)).all()
        return [dict(r._mapping) for r in rows]


class StoreOffsetStore:
    """Connector offsets in the profile store (the embedded transport's ``OffsetStore``)."""

    def __init__(self, store: ProfileStore) -> None:
        self._engine = store.engine

    def load(self, source: str) -> ConnectorOffset | None:
        """The saved state of ``source``, if any."""
        with self._engine.connect() as connection:
            state = connection.execute(
                select(t.connector_offsets.c.state).where(t.connector_offsets.c.source == source)
            ).scalar_one_or_none()
        return None if state is None else ConnectorOffset.from_json(json.dumps(state).encode())

    def save(self, source: str, offset: ConnectorOffset) -> None:
        """Durably record the state of ``source``."""
        statement = insert(t.connector_offsets).values(
            source=source, state=json.loads(offset.to_json())
        )
        with self._engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["source"], set_={"state": statement.excluded.state}
                )
            )


class StoreBatch:
    """The statements of one applying transaction."""

    def __init__(self, connection: Connection) -> None:
        self._c = connection
        self.head = int(
            connection.execute(
                select(t.change_log_head.c.sequence)
                .where(t.change_log_head.c.id == 1)
                .with_for_update()
            ).scalar_one()
        )

    # --- reads --------------------------------------------------------------------------------

    def load_records(self, keys: Collection[RecordKey]) -> dict[RecordKey, StoredRecord]:
        """The stored images of these records (missing ones are absent)."""
        if not keys:
            return {}
        rows = sql.run(
            self._c,
            sql.LOAD_RECORDS,
            [k.source for k in keys],
            [k.table for k in keys],
            [k.key for k in keys],
        ).all()
        return {_record_key(r): StoredRecord(_record(r), r.profile_id) for r in rows}

    def records_sharing(self, identifiers: Collection[Identifier]) -> set[RecordKey]:
        """Records holding any of these identifiers."""
        if not identifiers:
            return set()
        rows = sql.run(
            self._c,
            sql.RECORDS_SHARING,
            [i.type for i in identifiers],
            [i.value for i in identifiers],
        ).all()
        return {RecordKey(*row) for row in rows}

    def records_of_profiles(self, profile_ids: Collection[str]) -> set[RecordKey]:
        """Records currently linked to these profiles."""
        if not profile_ids:
            return set()
        rows = sql.run(self._c, sql.RECORDS_OF_PROFILES, list(profile_ids)).all()
        return {RecordKey(*row) for row in rows}

    def live_records_of_table(self, source: str, table: str) -> list[RecordKey]:
        """Every record of one source table that is not deleted."""
        c = t.source_records.c
        rows = self._c.execute(
            select(c.source, c.table_name, c.record_key).where(
                c.source == source, c.table_name == table, c.deleted.is_(False)
            )
        ).all()
        return [RecordKey(*row) for row in rows]

    def load_profiles(self, profile_ids: Collection[str]) -> dict[str, StoredProfile]:
        """Profile rows by id (aliases are not followed)."""
        return _load_profiles(self._c, list(profile_ids))

    def profile_ids_taken(self, candidates: Collection[str]) -> set[str]:
        """Which of these ids name a live profile or an alias (those ids are never reused).

        A deleted profile's id may come back when its founding record does: ids follow history.
        """
        if not candidates:
            return set()
        ids = list(candidates)
        return set(sql.run(self._c, sql.PROFILE_IDS_TAKEN, ids, ids).scalars().all())

    def load_overrides(self, keys: Collection[RecordKey]) -> list[tuple[str, RecordKey, RecordKey]]:
        """Steward overrides that involve any of these records: ``(kind, a, b)``."""
        if not keys:
            return []
        texts = [_key_text(k) for k in keys]
        rows = sql.run(self._c, sql.LOAD_OVERRIDES, texts, texts).all()
        return [(kind, _parse_key_text(a), _parse_key_text(b)) for kind, a, b in rows]

    # --- writes -------------------------------------------------------------------------------

    def save_records(self, records: Iterable[tuple[SourceRecord, str | None]]) -> None:
        """Upsert record images (with their profile) and replace their identifier rows."""
        items = list(records)
        if not items:
            return
        keys = [r.key for r, _ in items]
        sources, tables, texts = (
            [k.source for k in keys],
            [k.table for k in keys],
            [k.key for k in keys],
        )
        sql.run(
            self._c,
            sql.UPSERT_RECORDS,
            sources,
            tables,
            texts,
            [profile_id for _, profile_id in items],
            [sql.json_text(dict(r.fields)) for r, _ in items],
            [sql.json_text(sorted([i.type, i.value] for i in r.identifiers)) for r, _ in items],
            [r.version for r, _ in items],
            [r.commit_time_us for r, _ in items],
            [r.position for r, _ in items],
            [r.deleted for r, _ in items],
        )
        sql.run(self._c, sql.DELETE_IDENTIFIERS, sources, tables, texts)
        # Deleted records keep their image (so older redeliveries stay ignored) but link nothing.
        linked = [(i, r.key) for r, _ in items if not r.deleted for i in sorted(r.identifiers)]
        if linked:
            sql.run(
                self._c,
                sql.INSERT_IDENTIFIERS,
                [i.type for i, _ in linked],
                [i.value for i, _ in linked],
                [k.source for _, k in linked],
                [k.table for _, k in linked],
                [k.key for _, k in linked],
            )

    def set_record_profiles(self, assignment: Mapping[RecordKey, str | None]) -> None:
        """Move records to other profiles (records whose image did not change)."""
        if not assignment:
            return
        keys = list(assignment)
        sql.run(
            self._c,
            sql.SET_RECORD_PROFILES,
            [k.source for k in keys],
            [k.table for k in keys],
            [k.key for k in keys],
            [assignment[k] for k in keys],
        )

    def save_profiles(self, profiles: Iterable[StoredProfile]) -> None:
        """Upsert profiles."""
        rows = list(profiles)
        if not rows:
            return
        sql.run(
            self._c,
            sql.UPSERT_PROFILES,
            [p.profile_id for p in rows],
            [sql.json_text(p.fields) for p in rows],
            [sql.json_text(p.identifiers) for p in rows],
            [p.record_count for p in rows],
            [p.created_sequence for p in rows],
            [p.updated_sequence for p in rows],
        )

    def retire_profiles(self, merged_into: Mapping[str, str | None], sequence: int) -> None:
        """Remove profiles; those merged into a survivor keep resolving as its aliases."""
        if not merged_into:
            return
        self._c.execute(delete(t.profiles).where(t.profiles.c.profile_id.in_(list(merged_into))))
        aliases = [
            {"alias_id": old, "profile_id": new, "sequence": sequence}
            for old, new in merged_into.items()
            if new is not None
        ]
        if aliases:
            # Earlier aliases of a merged profile now point at the new survivor too.
            for old, new in merged_into.items():
                if new is not None:
                    self._c.execute(
                        update(t.profile_aliases)
                        .where(t.profile_aliases.c.profile_id == old)
                        .values(profile_id=new)
                    )
            statement = insert(t.profile_aliases).values(aliases)
            self._c.execute(
                statement.on_conflict_do_update(
                    index_elements=["alias_id"],
                    set_={
                        "profile_id": statement.excluded.profile_id,
                        "sequence": statement.excluded.sequence,
                    },
                )
            )

    def append_changes(self, changes: list[ChangeRow]) -> int:
        """Append changes with the next sequences; returns the new head."""
        if not changes:
            return self.head
        sql.run(
            self._c,
            sql.APPEND_CHANGES,
            range(self.head + 1, self.head + 1 + len(changes)),
            [c.profile_id for c in changes],
            [c.kind for c in changes],
            [sql.json_text(c.changes) for c in changes],
            [sql.json_text(c.related) for c in changes],
            [sql.json_text(c.cause) for c in changes],
        )
        self.head += len(changes)
        self._c.execute(
            update(t.change_log_head).where(t.change_log_head.c.id == 1).values(sequence=self.head)
        )
        # Delivered at commit (never for a rolled-back batch): the change feed wakes up and reads.
        self._c.execute(select(func.pg_notify(CHANGE_CHANNEL, str(self.head))))
        return self.head

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None:
        """Record how far ``consumer`` has applied each stream (same transaction as effects)."""
        if not positions:
            return
        statement = insert(t.positions).values(
            [{"consumer": consumer, "stream": s, "position": p} for s, p in positions.items()]
        )
        self._c.execute(
            statement.on_conflict_do_update(
                index_elements=["consumer", "stream"],
                set_={
                    "position": func.greatest(t.positions.c.position, statement.excluded.position)
                },
            )
        )

    def add_dead_letter(
        self,
        consumer: str,
        stream: str,
        position: int,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        reason: str,
    ) -> None:
        """Keep an event that could not be applied, with the reason."""
        self._c.execute(
            insert(t.dead_letters).values(
                consumer=consumer,
                stream=stream,
                position=position,
                topic=topic,
                key=key,
                value=value,
                reason=reason,
            )
        )

    def save_override(self, kind: str, a: RecordKey, b: RecordKey, actor: str, reason: str) -> None:
        """Store a steward's force-link or never-link (replacing any earlier one for the pair)."""
        first, second = sorted((a, b))
        statement = insert(t.link_overrides).values(
            kind=kind,
            record_a=_key_text(first),
            record_b=_key_text(second),
            actor=actor,
            reason=reason,
        )
        self._c.execute(
            statement.on_conflict_do_update(
                index_elements=["record_a", "record_b"],
                set_={
                    "kind": statement.excluded.kind,
                    "actor": statement.excluded.actor,
                    "reason": statement.excluded.reason,
                    "created_at": func.now(),
                },
            )
        )

    def delete_override(self, a: RecordKey, b: RecordKey) -> bool:
        """Remove the override between two records; ``True`` if there was one."""
        first, second = sorted((a, b))
        result = self._c.execute(
            delete(t.link_overrides).where(
                t.link_overrides.c.record_a == _key_text(first),
                t.link_overrides.c.record_b == _key_text(second),
            )
        )
        return bool(result.rowcount)

    def save_conflicts(self, conflicts: Iterable[tuple[Identifier, list[str], str]]) -> None:
        """Record shared identifiers that were not used to merge, for stewards to review."""
        rows = [
            {
                "identifier_type": i.type,
                "identifier_value": i.value,
                "records": records,
                "reason": reason,
                "sequence": self.head,
            }
            for i, records, reason in conflicts
        ]
        if not rows:
            return
        statement = insert(t.identity_conflicts).values(rows)
        self._c.execute(
            statement.on_conflict_do_update(
                index_elements=["identifier_type", "identifier_value"],
                set_={
                    "records": statement.excluded.records,
                    "reason": statement.excluded.reason,
                    "sequence": statement.excluded.sequence,
                },
            )
        )


def _load_profiles(connection: Connection, profile_ids: list[str]) -> dict[str, StoredProfile]:
    if not profile_ids:
        return {}
    rows = sql.run(connection, sql.LOAD_PROFILES, profile_ids).all()
    return {
        r.profile_id: StoredProfile(
            r.profile_id,
            r.fields,
            r.identifiers,
            r.record_count,
            r.created_sequence,
            r.updated_sequence,
        )
        for r in rows
    }


def _record_key(row: Any) -> RecordKey:
    return RecordKey(row.source, row.table_name, row.record_key)


def _record(row: Any) -> SourceRecord:
    return SourceRecord(
        key=_record_key(row),
        fields=row.fields,
        identifiers=frozenset(Identifier(typ, value) for typ, value in row.identifiers),
        version=row.version,
        commit_time_us=row.commit_time_us,
        position=row.position,
        deleted=row.deleted,
    )


def _key_text(key: RecordKey) -> str:
    return json.dumps([key.source, key.table, key.key], separators=(",", ":"))


def _parse_key_text(text: str) -> RecordKey:
    source, table, key = json.loads(text)
    return RecordKey(source, table, key)
