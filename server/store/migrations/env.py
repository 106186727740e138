"""Alembic environment: runs on the connection handed over by ``unified_profile.server.store.migrate``."""

from __future__ import annotations

from alembic import context

from unified_profile.server.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
