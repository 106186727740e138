"""One applying transaction: the reads and writes the applier, stewards and erasure make.

:meth:`ProfileStore.batch <unified_profile.server.store.profile_store.ProfileStore.batch>` opens
it; its first statement locks the change-log head row, which gives the change log its gap-free
sequence and serialises applying transactions of concurrent engine workers. The hot statements are
in :mod:`.batch_sql`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as upsert

from ..engine.records import Identifier, RecordKey, SourceRecord
from . import batch_sql as sql
from . import json_codec, profile_writes
from . import schema as t
from .rows import (
    ChangeRow,
    StoredProfile,
    StoredRecord,
    key_text,
    load_profiles,
    parse_key_text,
    stored_record,
)

CHANGE_CHANNEL = "up_change_log"
"""The LISTEN/NOTIFY channel announcing a new change-log head."""


class StoreBatch:
    """The statements of one applying transaction: ``with StoreBatch(connection) as batch:``.

    Creating it locks the change-log head (serialising applying transactions) and makes the
    transaction plan its statements generically (see ``batch_sql.LOCK_HEAD``); the block's end
    sends the writes it deferred, before the caller commits. With its writes goes a ``NOTIFY``
    naming the profiles they touched (:mod:`.profile_writes`), for the serving processes' caches.

    Attributes:
        head: The change-log head: the last sequence appended (by this batch or before it).
    """

    def __init__(self, connection: Connection) -> None:
        self._c = connection
        self.head = int(sql.run(connection, sql.LOCK_HEAD)[0][0])
        # Writes nothing in the transaction reads back: sent with the next pipelined writes, or
        # when the batch's block ends, rather than in a round trip of their own.
        self._deferred: list[tuple[str, tuple[Any, ...]]] = []
        # What the transaction wrote, announced with its last writes (see profile_writes).
        self._written_profiles: set[str] = set()
        self._linked_identifiers: set[Identifier] = set()

    # --- reads --------------------------------------------------------------------------------

    def load_records(self, keys: Collection[RecordKey]) -> dict[RecordKey, StoredRecord]:
        """The stored images of these records (missing ones are absent)."""
        if not keys:
            return {}
        found = (stored_record(r) for r in sql.run(self._c, sql.LOAD_RECORDS, *sql.keys(keys)))
        return {s.record.key: s for s in found}

    def records_sharing(self, identifiers: Collection[Identifier]) -> set[RecordKey]:
        """Records holding any of these identifiers."""
        if not identifiers:
            return set()
        values = sql.columns((i.type, i.value) for i in identifiers)
        return {RecordKey(*row) for row in sql.run(self._c, sql.RECORDS_SHARING, *values)}

    def sole_profiles_holding(self, identifiers: Collection[Identifier]) -> dict[Identifier, str]:
        """For each identifier whose live holders are all in one profile: that profile.

        Identifiers nobody holds, or held in several profiles (or by a record in none), are
        absent.
        """
        if not identifiers:
            return {}
        values = sql.columns((i.type, i.value) for i in identifiers)
        return {
            Identifier(row.type, row.value): row.profile_id
            for row in sql.run(self._c, sql.PROFILES_HOLDING, *values)
            if row.profiles == 1 and not row.unassigned
        }

    def records_of_profiles(self, profile_ids: Collection[str]) -> set[RecordKey]:
        """Records currently linked to these profiles."""
        if not profile_ids:
            return set()
        rows = sql.run(self._c, sql.RECORDS_OF_PROFILES, list(profile_ids))
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
        return load_profiles(self._c, list(profile_ids))

    def profile_ids_taken(self, candidates: Collection[str]) -> set[str]:
        """Which of these ids name a live profile or an alias (those ids are never reused).

        A deleted profile's id may come back when its founding record does: ids follow history.
        """
        if not candidates:
            return set()
        ids = list(candidates)
        return {row[0] for row in sql.run(self._c, sql.PROFILE_IDS_TAKEN, ids, ids)}

    def load_overrides(self, keys: Collection[RecordKey]) -> list[tuple[str, RecordKey, RecordKey]]:
        """Steward overrides that involve any of these records: ``(kind, a, b)``."""
        if not keys:
            return []
        texts = json_codec.dumps([key_text(k) for k in keys])
        rows = sql.run(self._c, sql.LOAD_OVERRIDES, texts, texts)
        return [(kind, parse_key_text(a), parse_key_text(b)) for kind, a, b in rows]

    # --- writes -------------------------------------------------------------------------------

    @contextmanager
    def pipelined(self) -> Iterator[None]:
        """The writes inside (and any deferred ones) are sent together, not one round trip each
        (see :func:`.batch_sql.pipelined`); reads inside would wait for everything before them."""
        with sql.pipelined(self._c):
            yield
            self._send_deferred()

    def __enter__(self) -> StoreBatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # The transaction commits after this block: the deferred writes no pipelined block
        # took go now (a failed batch is rolled back, so they are dropped with it).
        if exc_type is None:
            self._send_deferred()

    def _send_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for statement, params in deferred:
            sql.send(self._c, statement, *params)
        self._announce_writes()

    def _announce_writes(self) -> None:
        """NOTIFY the profiles written (and identifiers linked) since the last announcement."""
        if not self._written_profiles and not self._linked_identifiers:
            return
        payloads = list(profile_writes.encode(self._written_profiles, self._linked_identifiers))
        self._written_profiles = set()
        self._linked_identifiers = set()
        sql.send(self._c, sql.ANNOUNCE_WRITES, profile_writes.PROFILE_WRITES_CHANNEL, payloads)

    def save_records(
        self,
        records: Iterable[tuple[SourceRecord, str | None]],
        links_unchanged: Collection[RecordKey] = (),
    ) -> None:
        """Upsert record images (with their profile) and replace their identifier rows.

        Args:
            records: ``(image, profile id)`` pairs.
            links_unchanged: Records whose stored identifier rows are already right (same
                identifiers, not deleted before or now): their rows are left alone, which spares
                the index churn of the most common change, an update that keeps its identifiers.
        """
        items = list(records)
        if not items:
            return
        sql.send(
            self._c,
            sql.UPSERT_RECORDS,
            *sql.columns(
                (
                    r.key.source,
                    r.key.table,
                    r.key.key,
                    profile_id,
                    json_codec.dumps(r.fields),
                    json_codec.dumps(sorted([i.type, i.value] for i in r.identifiers)),
                    r.version,
                    r.commit_time_us,
                    r.position,
                    r.deleted,
                )
                for r, profile_id in items
            ),
        )
        relinked = [r for r, _ in items if r.key not in links_unchanged]
        if not relinked:
            return
        sql.send(self._c, sql.DELETE_IDENTIFIERS, *sql.keys(r.key for r in relinked))
        # Deleted records keep their image (so older redeliveries stay ignored) but link nothing.
        links = [
            (i.type, i.value, r.key.source, r.key.table, r.key.key)
            for r in relinked
            if not r.deleted
            for i in sorted(r.identifiers)
        ]
        if links:
            sql.send(self._c, sql.INSERT_IDENTIFIERS, *sql.columns(links))
            for r in relinked:
                if not r.deleted:
                    self._linked_identifiers.update(r.identifiers)

    def set_record_profiles(self, assignment: Mapping[RecordKey, str | None]) -> None:
        """Move records to other profiles (records whose image did not change)."""
        if not assignment:
            return
        moves = sql.columns((k.source, k.table, k.key, p) for k, p in assignment.items())
        sql.send(self._c, sql.SET_RECORD_PROFILES, *moves)

    def save_profiles(self, profiles: Iterable[StoredProfile]) -> None:
        """Upsert profiles."""
        rows = [
            (
                p.profile_id,
                json_codec.dumps(p.document),
                json_codec.dumps(p.identifiers),
                p.record_count,
                p.created_sequence,
                p.updated_sequence,
            )
            for p in profiles
        ]
        if rows:
            sql.send(self._c, sql.UPSERT_PROFILES, *sql.columns(rows))
            self._written_profiles.update(row[0] for row in rows)

    def retire_profiles(self, merged_into: Mapping[str, str | None], sequence: int) -> None:
        """Remove profiles; those merged into a survivor keep resolving as its aliases."""
        if not merged_into:
            return
        sql.send(self._c, sql.DELETE_PROFILES, list(merged_into))
        self._written_profiles.update(merged_into)
        survived = [(old, new) for old, new in merged_into.items() if new is not None]
        if survived:
            aliases = sql.columns(survived)
            sql.send(self._c, sql.REPOINT_ALIASES, *aliases)
            sql.send(self._c, sql.UPSERT_ALIASES, sequence, *aliases)

    def append_changes(self, changes: list[ChangeRow]) -> int:
        """Append changes with the next sequences; returns the new head."""
        if not changes:
            return self.head
        document = sql.rows(
            {
                "sequence": self.head + n,
                "profile_id": c.profile_id,
                "kind": c.kind,
                "changes": c.changes,
                "related": c.related,
                "cause": c.cause,
            }
            for n, c in enumerate(changes, start=1)
        )
        sql.send(self._c, sql.APPEND_CHANGES, document)
        # Erasure removes its profile outside this batch; its DELETED entry names it here.
        self._written_profiles.update(c.profile_id for c in changes)
        self.head += len(changes)
        sql.send(self._c, sql.ADVANCE_HEAD, self.head, CHANGE_CHANNEL, str(self.head))
        return self.head

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None:
        """Record how far ``consumer`` has applied each stream (same transaction as effects).

        Deferred: sent with the batch's other writes, whenever this is called.
        """
        if not positions:
            return
        document = sql.rows({"stream": s, "position": p} for s, p in positions.items())
        self._deferred.append((sql.SAVE_POSITIONS, (consumer, document)))

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

    def delete_dead_letters(self, ids: Collection[int]) -> None:
        """Remove dead letters (replayed successfully)."""
        if ids:
            self._c.execute(delete(t.dead_letters).where(t.dead_letters.c.id.in_(list(ids))))

    def save_override(self, kind: str, a: RecordKey, b: RecordKey, actor: str, reason: str) -> None:
        """Store a steward's force-link or never-link (replacing any earlier one for the pair)."""
        first, second = sorted((a, b))
        statement = upsert(t.link_overrides).values(
            kind=kind,
            record_a=key_text(first),
            record_b=key_text(second),
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
                t.link_overrides.c.record_a == key_text(first),
                t.link_overrides.c.record_b == key_text(second),
            )
        )
        return bool(result.rowcount)

    def save_conflicts(self, conflicts: Iterable[tuple[Identifier, list[str], str]]) -> None:
        """Record shared identifiers that were not used to merge, for stewards to review."""
        document: list[dict[str, Any]] = [
            {
                "identifier_type": i.type,
                "identifier_value": i.value,
                "records": records,
                "reason": reason,
            }
            for i, records, reason in conflicts
        ]
        if document:
            sql.send(self._c, sql.SAVE_CONFLICTS, self.head, sql.rows(document))
