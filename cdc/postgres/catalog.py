"""What the source database says about itself: preflight checks, publication, slot, table shapes.

Every refusal is a :class:`~unified_profile.cdc.errors.PreflightError` naming the database object,
what is wrong and the fix, because the people reading it run databases we do not control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from ..errors import PreflightError, SourceError
from ..identifiers import TableName, quote_identifier
from ..lsn import parse_lsn
from ..model import Column, PgType, TableShape

_REPLICA_IDENTITY = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}


@dataclass(frozen=True, slots=True)
class SlotState:
    """A replication slot as ``pg_replication_slots`` shows it."""

    name: str
    plugin: str | None
    database: str | None
    confirmed_flush_lsn: int | None
    wal_status: str | None
    active_pid: int | None
    restart_lsn: int | None = None
    """The oldest WAL the slot still needs: no change it will stream starts before it."""
    invalidation_reason: str | None = None
    """Why the server invalidated the slot (PostgreSQL 17 and later), else ``None``."""

    @property
    def invalidation(self) -> str | None:
        """Why the slot can stream nothing any more (``wal_removed``, ``idle_timeout``…), or ``None``.

        An invalidated slot still exists. PostgreSQL 17 and later say why; from 13 on,
        ``wal_status = 'lost'`` means its WAL was removed.
        """
        if self.invalidation_reason is not None:
            return self.invalidation_reason
        return "wal_removed" if self.wal_status == "lost" else None


def check_server(conn: psycopg.Connection[Any]) -> str:
    """Check the server can do logical decoding for this role; return the database name.

    Raises:
        PreflightError: ``wal_level`` is not ``logical``, or the role may not replicate.
    """
    row = _one(
        conn,
        "SELECT current_setting('wal_level'), current_user, current_database(), "
        "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
    )
    wal_level, user, database, can_replicate = row
    if wal_level != "logical":
        raise PreflightError(
            f"wal_level is {wal_level!r} on database {database!r}; logical decoding needs 'logical'",
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL "
            "(on managed services enable logical replication in the parameter group)",
        )
    if not can_replicate:
        raise PreflightError(
            f"role {user!r} has no REPLICATION attribute, so it cannot create or read a slot",
            f"ALTER ROLE {quote_identifier(user)} REPLICATION;",
        )
    return str(database)


def prepare_tables(
    conn: psycopg.Connection[Any], tables: list[TableName], may_set_full: dict[TableName, bool]
) -> None:
    """Check each table exists, is readable, has a primary key and ``REPLICA IDENTITY FULL``.

    Sets ``REPLICA IDENTITY FULL`` where ``may_set_full`` allows it.

    Raises:
        PreflightError: Naming the first table that cannot be captured and why.
    """
    for table in tables:
        row = conn.execute(
            "SELECT c.oid, c.relkind, c.relreplident, has_table_privilege(c.oid, 'SELECT'), "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (table.schema, table.name),
        ).fetchone()
        if row is None:
            raise PreflightError(
                f"table {table} does not exist in this database{_near_miss(conn, table)}",
                "check the name in [[sources.tables]]; quote mixed-case names: "
                "table = 'schema.\"MyTable\"'",
            )
        _oid, relkind, replident, readable, has_pk = row
        if relkind not in ("r", "p"):
            raise PreflightError(
                f"{table} is not a table (relkind {relkind!r}); only tables can be captured",
                "capture the underlying table instead",
            )
        if not readable:
            raise PreflightError(
                f"the connector's role may not SELECT from {table} (needed for the snapshot)",
                f"GRANT SELECT ON {table.quoted} TO <connector role>;",
            )
        if not has_pk:
            raise PreflightError(
                f"table {table} has no primary key; change events are keyed by it",
                f"ALTER TABLE {table.quoted} ADD PRIMARY KEY (...);",
            )
        if replident != "f":
            _ensure_full_identity(conn, table, replident, may_set_full.get(table, False))


def _ensure_full_identity(
    conn: psycopg.Connection[Any], table: TableName, replident: str, allowed: bool
) -> None:
    current = _REPLICA_IDENTITY.get(replident, replident)
    statement = f"ALTER TABLE {table.quoted} REPLICA IDENTITY FULL"
    if not allowed:
        raise PreflightError(
            f"table {table} has REPLICA IDENTITY {current}; capture needs FULL so that updates "
            "and deletes carry the whole previous row",
            f"{statement}; (or set set_replica_identity_full = true for this source or table)",
        )
    try:
        conn.execute(
            sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                sql.Identifier(table.schema, table.name)
            )
        )
    except psycopg.Error as exc:
        raise PreflightError(
            f"could not set REPLICA IDENTITY FULL on {table}: {exc.diag.message_primary or exc}",
            f"run {statement}; as the table's owner",
        ) from exc


def _near_miss(conn: psycopg.Connection[Any], table: TableName) -> str:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE lower(c.relname) = lower(%s) AND c.relkind IN ('r', 'p') LIMIT 3",
        (table.name,),
    ).fetchall()
    if not rows:
        return ""
    names = ", ".join(TableName(s, n).quoted for s, n in rows)
    return f" (did you mean {names}?)"


def ensure_publication(
    conn: psycopg.Connection[Any], name: str, tables: list[TableName]
) -> set[TableName]:
    """Create the publication, or set its tables to exactly the configured ones.

    Returns:
        The configured tables the publication did not have before (all of them when it is new).

    Raises:
        PreflightError: The role may not create or alter the publication.
    """
    table_list = sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables)
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    try:
        if exists is None:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(name), table_list
                )
            )
            return set(tables)
        published = {
            TableName(s, t)
            for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (name,),
            )
        }
        if published != set(tables):
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
                    sql.Identifier(name), table_list
                )
            )
        return set(tables) - published
    except psycopg.Error as exc:
        raise PreflightError(
            f"could not create or update publication {name!r}: {exc.diag.message_primary or exc}",
            "create it as a table owner: CREATE PUBLICATION "
            f"{quote_identifier(name)} FOR TABLE {', '.join(t.quoted for t in tables)};",
        ) from exc


def slot_state(conn: psycopg.Connection[Any], slot: str) -> SlotState | None:
    """The slot's state, or ``None`` if there is no such slot."""
    # invalidation_reason through to_jsonb: servers before 17 lack the column and give NULL.
    row = conn.execute(
        "SELECT slot_name, plugin, database, confirmed_flush_lsn::text, wal_status, active_pid, "
        "restart_lsn::text, to_jsonb(s) ->> 'invalidation_reason' "
        "FROM pg_replication_slots s WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    name, plugin, database, confirmed, wal_status, active_pid, restart, reason = row
    return SlotState(
        name,
        plugin,
        database,
        parse_lsn(confirmed) if confirmed else None,
        wal_status,
        active_pid,
        parse_lsn(restart) if restart else None,
        reason,
    )


def check_slot_usable(state: SlotState, database: str) -> None:
    """Refuse a slot that belongs to something else or is being read by another process.

    Raises:
        PreflightError: Naming the slot and what is wrong with it.
    """
    if state.plugin != "pgoutput":
        raise PreflightError(
            f"replication slot {state.name!r} exists but uses plugin {state.plugin!r}",
            "drop it (SELECT pg_drop_replication_slot(...)) or configure another slot name",
        )
    if state.database != database:
        raise PreflightError(
            f"replication slot {state.name!r} belongs to database {state.database!r}, "
            f"not {database!r}",
            "configure a different slot name for this source",
        )
    if state.active_pid is not None:
        raise PreflightError(
            f"replication slot {state.name!r} is in use by server process {state.active_pid} "
            "(is another connector for this source running?)",
            "stop the other connector, or terminate it with "
            f"SELECT pg_terminate_backend({state.active_pid});",
        )


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Drop the slot if it exists (used before re-creating it for a fresh snapshot)."""
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )


def current_wal_lsn(conn: psycopg.Connection[Any]) -> int:
    """The server's current WAL write position."""
    return parse_lsn(str(_one(conn, "SELECT pg_current_wal_lsn()::text")[0]))


def table_oid(conn: psycopg.Connection[Any], table: TableName) -> int:
    """The OID of a table (it must exist: :func:`prepare_tables` checked)."""
    return int(_one(conn, "SELECT %s::regclass::oid", (table.quoted,))[0])


def load_table_shape(conn: psycopg.Connection[Any], oid: int) -> TableShape:
    """Read a table's columns, primary key and column types from the catalog."""
    names = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    if names is None:
        raise SourceError(f"table with OID {oid} disappeared while capturing")
    rows = conn.execute(
        "SELECT a.attname, a.atttypid, a.atttypmod, a.attnotnull, "
        "COALESCE(a.attnum = ANY(i.indkey), false) "
        "FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (oid,),
    ).fetchall()
    columns = tuple(
        Column(name=n, type_oid=t, type_modifier=m, part_of_key=bool(k), optional=not notnull)
        for n, t, m, notnull, k in rows
    )
    return TableShape(
        names[0], names[1], columns, resolve_types(conn, {c.type_oid for c in columns})
    )


def resolve_types(conn: psycopg.Connection[Any], oids: set[int]) -> dict[int, PgType]:
    """Look up types (with array elements, domain bases and enum labels) by OID."""
    resolved: dict[int, PgType] = {}
    for oid in oids:
        resolved[oid] = _resolve_type(conn, oid, resolved)
    return resolved


def _resolve_type(conn: psycopg.Connection[Any], oid: int, seen: dict[int, PgType]) -> PgType:
    if oid in seen:
        return seen[oid]
    row = conn.execute(
        "SELECT t.typname, t.typcategory, t.typelem, t.typbasetype, t.typtype, "
        "ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) "
        "FROM pg_type t WHERE t.oid = %s",
        (oid,),
    ).fetchone()
    if row is None:
        return PgType(oid, f"unknown_{oid}")
    name, category, elem, base, typtype, labels = row
    pg_type = PgType(
        oid=oid,
        name=name,
        category=category,
        element=_resolve_type(conn, elem, seen) if category == "A" and elem else None,
        enum_labels=tuple(labels) if typtype == "e" else (),
        base=_resolve_type(conn, base, seen) if typtype == "d" and base else None,
    )
    seen[oid] = pg_type
    return pg_type


def _one(
    conn: psycopg.Connection[Any], query: LiteralString, params: tuple[object, ...] = ()
) -> tuple[Any, ...]:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return tuple(row)
