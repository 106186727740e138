"""Creating the SQLAlchemy engine for the store from a libpq DSN or URI."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine


def create_store_engine(dsn: str, **options: Any) -> Engine:
    """An engine on psycopg 3 for ``dsn`` (``host=… dbname=…`` or ``postgresql://…``).

    psycopg parses the DSN itself (``creator``), so both forms and every libpq option work.
    """
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn),
        pool_pre_ping=True,
        **options,
    )
