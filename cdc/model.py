"""The data that capture passes between its stages.

Decoded pgoutput messages, the shape of a captured table, and column values as PostgreSQL's output
functions print them. Everything here is a frozen dataclass: it crosses from the replication adapter to
the pure decoder and encoder, and nothing downstream may change it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class _Unchanged(enum.Enum):
    """pgoutput's 'u' marker: an unchanged TOASTed value that the server did not send."""

    TOAST = "unchanged-toast"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _Unchanged.TOAST
"""A column value that did not change and was not sent (never a value in its own right)."""

ColumnValue = str | bytes | None | _Unchanged
"""One column of a tuple: text output (``str``), binary output (``bytes``), NULL, or unchanged TOAST."""


@dataclass(frozen=True, slots=True)
class PgType:
    """What capture needs to know about a PostgreSQL type to encode its values as Debezium does.

    Attributes:
        oid: The type's OID.
        name: The type name as ``pg_type.typname`` spells it (``int4``, ``_text``, ``my_enum``).
        category: ``pg_type.typcategory`` (``N`` numeric, ``A`` array, ``E`` enum, ``S`` string, ...).
        element: For an array type, its element type.
        enum_labels: For an enum type, its labels in sort order.
        base: For a domain, the type it is based on (values are encoded as the base type).
    """

    oid: int
    name: str
    category: str = "U"
    element: PgType | None = None
    enum_labels: tuple[str, ...] = ()
    base: PgType | None = None


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a captured table.

    Attributes:
        name: The column name exactly as stored (case preserved, never quoted).
        type_oid: The column's type OID.
        type_modifier: ``atttypmod``: precision/scale for numeric, fractional digits for time types,
            length for varchar; ``-1`` when absent.
        part_of_key: Whether the column is part of the table's primary key (the event key).
        optional: Whether the column may be NULL.
    """

    name: str
    type_oid: int
    type_modifier: int = -1
    part_of_key: bool = False
    optional: bool = True


@dataclass(frozen=True, slots=True)
class TableShape:
    """A captured table as it is now: its columns in order and their resolved types."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    types: dict[int, PgType] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        """The primary-key columns, in table order."""
        return tuple(c for c in self.columns if c.part_of_key)


# --- pgoutput protocol messages (protocol version 1) -------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts. ``final_lsn`` is its commit LSN; ``commit_time_us`` is µs since 1970."""

    final_lsn: int
    commit_time_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction ends. Everything before ``end_lsn`` belongs to committed transactions."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction came from another node (logical replication origin)."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """A column as a Relation message describes it. ``flags & 1`` marks a replica-identity column."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    """The server describes a table (sent before its first change and after every schema change)."""

    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeMessage:
    """The server names a non-built-in type used by a later Relation message."""

    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A row was inserted."""

    relation_oid: int
    new: tuple[ColumnValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """A row was updated.

    ``old`` is present when the replica identity changed (``old_kind == "K"``, key columns only) or
    when the table has ``REPLICA IDENTITY FULL`` (``old_kind == "O"``, every column).
    """

    relation_oid: int
    new: tuple[ColumnValue, ...]
    old: tuple[ColumnValue, ...] | None = None
    old_kind: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """A row was deleted; ``old`` holds the key (``"K"``) or the whole row (``"O"``)."""

    relation_oid: int
    old: tuple[ColumnValue, ...]
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """One or more tables were truncated in one statement."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with ``pg_logical_emit_message``."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
)
