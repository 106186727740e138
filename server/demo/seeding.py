"""Fills the demo's CRM and loyalty databases: the example schema, its hand-written people, and a
generated :class:`~unified_profile.server.demo.people.Population`.

Each database holds only its own system: ``examples/demo/schema.sql`` and ``seed.sql`` describe
both, so after loading them the other system's schema is dropped. Generated rows go in with
``COPY``, a few thousand people in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .people import (
    CASE_COLUMNS,
    CONSENT_COLUMNS,
    CONTACT_COLUMNS,
    CRM_CUSTOMER_COLUMNS,
    LEDGER_COLUMNS,
    MEMBER_COLUMNS,
    REDEMPTION_COLUMNS,
    Population,
    Row,
)

#: Where a clone keeps the demo's schema, hand-written seed and configuration.
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "demo"

_SYSTEMS = ("crm", "loyalty")


def load_example(crm_dsn: str, loyalty_dsn: str, example_dir: Path = EXAMPLE_DIR) -> None:
    """Create the example's schema and hand-written people in both (empty) databases."""
    schema = (example_dir / "schema.sql").read_text()
    seed = (example_dir / "seed.sql").read_text()
    for system, dsn in zip(_SYSTEMS, (crm_dsn, loyalty_dsn), strict=True):
        other = next(s for s in _SYSTEMS if s != system)
        with psycopg.connect(dsn, autocommit=True) as connection:
            # The files are ours and whole scripts: several statements, no parameters.
            connection.execute(schema.encode())
            connection.execute(seed.encode())
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other)))


def load_population(crm_dsn: str, loyalty_dsn: str, population: Population) -> None:
    """Insert the generated people (after :func:`load_example`), one transaction per database."""
    with psycopg.connect(crm_dsn) as connection:
        _copy(connection, "crm.customers", CRM_CUSTOMER_COLUMNS, population.crm_customers)
        _copy(connection, "crm.contact_details", CONTACT_COLUMNS, population.contact_details)
        _copy(connection, "crm.consents", CONSENT_COLUMNS, population.consents)
        _copy(connection, "crm.service_cases", CASE_COLUMNS, population.service_cases)
    with psycopg.connect(loyalty_dsn) as connection:
        _copy(connection, "loyalty.members", MEMBER_COLUMNS, population.members)
        _copy(connection, "loyalty.points_ledger", LEDGER_COLUMNS, population.points_ledger)
        _copy(connection, "loyalty.redemptions", REDEMPTION_COLUMNS, population.redemptions)


def _copy(
    connection: psycopg.Connection[Any], table: str, columns: tuple[str, ...], rows: list[Row]
) -> None:
    schema, name = table.split(".")
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema, name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


__all__ = ["EXAMPLE_DIR", "load_example", "load_population"]
