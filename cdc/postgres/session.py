"""Connections to a source database, with the session settings capture depends on.

Values reach the connector as PostgreSQL's text output, which depends on session settings. Both the
replication connection (pgoutput runs the output functions in the walsender) and the snapshot
connection pin them, so a row reads the same whether it came from the snapshot or the stream.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..errors import SourceError

# IntervalStyle 'postgres' and ISO dates are what the type encoder parses.
SESSION_OPTIONS = (
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex -c application_name=unified-profile-cdc"
)


def connect(
    dsn: str, *, replication: bool = False, autocommit: bool = True
) -> psycopg.Connection[Any]:
    """Open a connection to the source with capture's session settings.

    Raises:
        SourceError: The database cannot be reached; the message keeps the server's reason.
    """
    extra: dict[str, Any] = {"options": SESSION_OPTIONS}
    if replication:
        extra["replication"] = "database"
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **extra)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to the source database: {exc}".strip()) from exc


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` for log lines and messages (never the password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
