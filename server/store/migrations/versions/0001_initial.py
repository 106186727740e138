"""Initial profile store.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "up_source_records",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("record_key", sa.Text, nullable=False),
        sa.Column("profile_id", sa.Text, nullable=True),
        sa.Column("fields", JSONB, nullable=False),
        sa.Column("identifiers", JSONB, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=True),
        sa.Column("commit_time_us", sa.BigInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("source", "table_name", "record_key"),
    )
    op.create_index("up_source_records_profile", "up_source_records", ["profile_id"])
    op.create_table(
        "up_record_identifiers",
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("record_key", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("type", "value", "source", "table_name", "record_key"),
    )
    op.create_index(
        "up_record_identifiers_record",
        "up_record_identifiers",
        ["source", "table_name", "record_key"],
    )
    op.create_table(
        "up_profiles",
        sa.Column("profile_id", sa.Text, primary_key=True),
        sa.Column("fields", JSONB, nullable=False),
        sa.Column("identifiers", JSONB, nullable=False),
        sa.Column("record_count", sa.Integer, nullable=False),
        sa.Column("created_sequence", sa.BigInteger, nullable=False),
        sa.Column("updated_sequence", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "up_profile_aliases",
        sa.Column("alias_id", sa.Text, primary_key=True),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
    )
    op.create_index("up_profile_aliases_profile", "up_profile_aliases", ["profile_id"])
    op.create_table(
        "up_change_log",
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("profile_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("changes", JSONB, nullable=False),
        sa.Column("related", JSONB, nullable=False),
        sa.Column("cause", JSONB, nullable=False),
        sa.Column(
            "committed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("up_change_log_profile", "up_change_log", ["profile_id", "sequence"])
    op.create_table(
        "up_change_log_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
    )
    # The one head row: every applying transaction locks it, then advances it.
    op.execute("INSERT INTO up_change_log_head (id, sequence) VALUES (1, 0)")
    op.create_table(
        "up_positions",
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "stream"),
    )
    op.create_table(
        "up_dead_letters",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "up_link_overrides",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("record_a", sa.Text, nullable=False),
        sa.Column("record_b", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("record_a", "record_b"),
    )
    op.create_table(
        "up_identity_conflicts",
        sa.Column("identifier_type", sa.Text, nullable=False),
        sa.Column("identifier_value", sa.Text, nullable=False),
        sa.Column("records", JSONB, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("identifier_type", "identifier_value"),
    )
    op.create_table(
        "up_connector_offsets",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("state", JSONB, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "up_connector_offsets",
        "up_identity_conflicts",
        "up_link_overrides",
        "up_dead_letters",
        "up_positions",
        "up_change_log_head",
        "up_change_log",
        "up_profile_aliases",
        "up_profiles",
        "up_record_identifiers",
        "up_source_records",
    ):
        op.drop_table(table)
