"""The profile store's tables (SQLAlchemy Core).

Migrations (``server/store/migrations``) create exactly these; a test compares the two.

- ``up_source_records``: the latest image of every source row, already mapped onto profile field
  paths, with its position (so an older redelivery changes nothing) and the profile it belongs to.
- ``up_record_identifiers``: one row per (identifier, record): finds the records that share a value.
- ``up_profiles`` / ``up_profile_aliases``: the unified profiles; an id merged away stays an alias.
- ``up_change_log`` / ``up_change_log_head``: every profile change with a gap-free sequence; the
  head row is locked by each applying transaction, which also serialises concurrent engines.
- ``up_positions``: how far each consumer has applied each stream (Kafka partition, source LSN).
- ``up_dead_letters``: events that could not be decoded or mapped, with the reason.
- ``up_link_overrides``: steward force-link / never-link decisions between two records.
- ``up_identity_conflicts``: shared identifiers that were not used to merge, and why.
- ``up_connector_offsets``: the embedded connector's state (whether its snapshot completed).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB

metadata = MetaData()

source_records = Table(
    "up_source_records",
    metadata,
    Column("source", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("record_key", Text, nullable=False),
    Column("profile_id", Text, nullable=True),
    # json, not jsonb: written and read whole, never queried inside (migration 0002).
    Column("fields", JSON, nullable=False),
    Column("identifiers", JSONB, nullable=False),
    Column("version", BigInteger, nullable=True),
    Column("commit_time_us", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    PrimaryKeyConstraint("source", "table_name", "record_key"),
)
Index("up_source_records_profile", source_records.c.profile_id)

record_identifiers = Table(
    "up_record_identifiers",
    metadata,
    Column("type", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("record_key", Text, nullable=False),
    PrimaryKeyConstraint("type", "value", "source", "table_name", "record_key"),
)
Index(
    "up_record_identifiers_record",
    record_identifiers.c.source,
    record_identifiers.c.table_name,
    record_identifiers.c.record_key,
)

profiles = Table(
    "up_profiles",
    metadata,
    Column("profile_id", Text, primary_key=True),
    # Values and their provenance by reference (profile_document; migration 0003), as json.
    Column("fields", JSON, nullable=False),
    Column("identifiers", JSONB, nullable=False),
    Column("record_count", Integer, nullable=False),
    Column("created_sequence", BigInteger, nullable=False),
    Column("updated_sequence", BigInteger, nullable=False),
)

profile_aliases = Table(
    "up_profile_aliases",
    metadata,
    Column("alias_id", Text, primary_key=True),
    Column("profile_id", Text, nullable=False),
    Column("sequence", BigInteger, nullable=False),
)
Index("up_profile_aliases_profile", profile_aliases.c.profile_id)

change_log = Table(
    "up_change_log",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("profile_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("changes", JSONB, nullable=False),
    Column("related", JSONB, nullable=False),
    Column("cause", JSONB, nullable=False),
    Column("committed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("up_change_log_profile", change_log.c.profile_id, change_log.c.sequence)

change_log_head = Table(
    "up_change_log_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("sequence", BigInteger, nullable=False),
)

positions = Table(
    "up_positions",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("stream", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    PrimaryKeyConstraint("consumer", "stream"),
)

dead_letters = Table(
    "up_dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("consumer", Text, nullable=False),
    Column("stream", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("topic", Text, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=True),
    Column("reason", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

link_overrides = Table(
    "up_link_overrides",
    metadata,
    Column("kind", Text, nullable=False),
    Column("record_a", Text, nullable=False),
    Column("record_b", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("record_a", "record_b"),
)

connector_offsets = Table(
    "up_connector_offsets",
    metadata,
    Column("source", Text, primary_key=True),
    Column("state", JSONB, nullable=False),
)

identity_conflicts = Table(
    "up_identity_conflicts",
    metadata,
    Column("identifier_type", Text, nullable=False),
    Column("identifier_value", Text, nullable=False),
    Column("records", JSONB, nullable=False),
    Column("reason", Text, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    PrimaryKeyConstraint("identifier_type", "identifier_value"),
)
