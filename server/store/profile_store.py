"""The profile store: reading and writing profiles, record images, links and the change log.

With :mod:`.store_batch` (an applying transaction's statements) and :mod:`.rows` (the row
shapes), the only code that talks to the store database. Writes happen inside
:meth:`ProfileStore.batch`: one transaction that first locks the change-log head row. That lock
gives the change log its gap-free sequence and serialises applying transactions of concurrent
engine workers, so two workers never recompute the same people from different snapshots (and never
deadlock).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, and_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, OperationalError

from unified_profile.cdc.offsets import ConnectorOffset

from ..engine.records import Identifier, RecordKey
from . import batch_sql as sql
from . import schema as t
from .engine import create_store_engine
from .rows import (
    ChangeRow,
    LoggedChange,
    StoredProfile,
    StoredRecord,
    change_entry,
    load_profiles,
    stored_record,
)
from .store_batch import CHANGE_CHANNEL, StoreBatch

# The row shapes and the batch are imported from here by most of the service.
__all__ = [
    "CHANGE_CHANNEL",
    "ChangeRow",
    "LoggedChange",
    "ProfileStore",
    "StoreBatch",
    "StoreError",
    "StoreOffsetStore",
    "StoredProfile",
    "StoredRecord",
]

class StoreError(Exception):
    """The store failed (unreachable, or a statement failed); safe to retry the batch."""


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
            with self.engine.begin() as connection, StoreBatch(connection) as batch:
                yield batch
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"store transaction failed: {exc.orig or exc}") from exc

    # --- reads outside a batch ----------------------------------------------------------------

    def _single_statement(self) -> Connection:
        """A pooled connection in autocommit for a read that is one statement.

        The change feed reads the log after every commit it is told of: a transaction around
        one ``SELECT`` added a ``BEGIN`` and a ``ROLLBACK``, each a round trip of its own.
        """
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def get_profile(self, profile_id: str) -> tuple[StoredProfile, bool] | None:
        """The profile with this id, following an alias; ``(profile, was_alias)`` or ``None``."""
        with self.engine.connect() as connection:
            alias = connection.execute(
                select(t.profile_aliases.c.profile_id).where(
                    t.profile_aliases.c.alias_id == profile_id
                )
            ).scalar_one_or_none()
            found = load_profiles(connection, [alias or profile_id])
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
        with self._single_statement() as connection:
            rows = connection.execute(
                select(t.change_log)
                .where(t.change_log.c.sequence > sequence)
                .order_by(t.change_log.c.sequence)
                .limit(limit)
            ).all()
        return [change_entry(r) for r in rows]

    def head_sequence(self) -> int:
        """The newest change-log sequence (0 when empty)."""
        with self._single_statement() as connection:
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
            return load_profiles(connection, list(ids))

    def records(self, keys: Collection[RecordKey]) -> dict[RecordKey, StoredRecord]:
        """The stored images of these records, outside any batch (reconciliation)."""
        if not keys:
            return {}
        with self.engine.connect() as connection:
            rows = sql.run(connection, sql.LOAD_RECORDS, *sql.keys(keys))
        return {found.record.key: found for found in map(stored_record, rows)}

    def profile_record_keys(self, profile_id: str) -> set[RecordKey]:
        """The records linked to one profile."""
        with self.engine.connect() as connection:
            rows = sql.run(connection, sql.RECORDS_OF_PROFILES, [profile_id])
            return {RecordKey(*row) for row in rows}

    def profiles_page(
        self, after: str, limit: int
    ) -> list[tuple[StoredProfile, list[StoredRecord]]]:
        """Profiles by id after ``after`` (``""``: from the first), each with its records."""
        with self.engine.connect() as connection:
            ids = list(
                connection.execute(
                    select(t.profiles.c.profile_id)
                    .where(t.profiles.c.profile_id > after)
                    .order_by(t.profiles.c.profile_id)
                    .limit(limit)
                ).scalars()
            )
            profiles = load_profiles(connection, ids)
            members: dict[str, list[StoredRecord]] = {pid: [] for pid in ids}
            for row in sql.run(connection, sql.RECORDS_OF_PROFILES_FULL, ids):
                found = stored_record(row)
                members[str(found.profile_id)].append(found)
        return [(profiles[pid], members[pid]) for pid in ids if pid in profiles]

    def dead_letters(
        self, ids: Collection[int] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Dead letters, oldest first: all of them, or those with these ids."""
        query = select(t.dead_letters).order_by(t.dead_letters.c.id).limit(limit)
        if ids is not None:
            query = query.where(t.dead_letters.c.id.in_(list(ids)))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
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


