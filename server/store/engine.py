"""Creating the SQLAlchemy engine for the store from a libpq DSN or URI."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import Engine, create_engine

from . import json_codec


def create_store_engine(dsn: str, **options: Any) -> Engine:
    """An engine on psycopg 3 for ``dsn`` (``host=… dbname=…`` or ``postgresql://…``).

    psycopg parses the DSN itself (``creator``), so both forms and every libpq option work.
    """
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: _connect(dsn),
        pool_pre_ping=True,
        **options,
    )


def _connect(dsn: str) -> psycopg.Connection[Any]:
    connection = psycopg.connect(dsn)
    # jsonb decoded with orjson: applying a batch reads thousands of record images and profiles.
    set_json_loads(json_codec.loads, connection)
    return connection
