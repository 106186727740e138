"""Schema migrations (Alembic), run from code: ``unified-profile migrate`` and the test suite.

No ``alembic.ini``: the script location is this package, and the connection is handed to the
environment, so migrating needs nothing but the store's DSN.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine

from .engine import create_store_engine

_SCRIPT_LOCATION = "unified_profile.server.store:migrations"
HEAD_REVISION = "0003"
"""The schema revision this version of the code reads and writes."""


def upgrade(dsn: str, revision: str = "head") -> None:
    """Bring the store's schema to ``revision`` (default: the newest)."""
    engine = create_store_engine(dsn)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate through an existing engine (the caller owns it)."""
    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)


def downgrade(dsn: str, revision: str) -> None:
    """Take the store's schema back to ``revision`` (before running an older version)."""
    engine = create_store_engine(dsn)
    try:
        with engine.begin() as connection:
            command.downgrade(_config(connection), revision)
    finally:
        engine.dispose()


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    """The revision the store is at, or ``None`` if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
