"""The applying transaction's lookups probe the store's indexes, however small the batch.

Every batch runs the same statements, prepared once per connection. Planned for a typical batch
of rows from a parameter, a lookup must stay an index probe per row: planned as a hash join, it
reads the whole identifier table (or every record image) for each batch, so a trickle of single
changes costs CPU in proportion to the size of the store instead of the traffic.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from unified_profile.server.store import batch_sql, migrate
from unified_profile.server.store.profile_store import ProfileStore
from unified_profile.server.store.store_batch import StoreBatch

pytestmark = pytest.mark.integration

RECORDS = 5_000
LOOKUPS = {
    "LOAD_RECORDS": batch_sql.LOAD_RECORDS,
    "RECORDS_SHARING": batch_sql.RECORDS_SHARING,
    "PROFILES_HOLDING": batch_sql.PROFILES_HOLDING,
    "DELETE_IDENTIFIERS": batch_sql.DELETE_IDENTIFIERS,
    "SET_RECORD_PROFILES": batch_sql.SET_RECORD_PROFILES,
    "REPOINT_ALIASES": batch_sql.REPOINT_ALIASES,
}
STORE_TABLES = ("up_source_records", "up_record_identifiers", "up_profile_aliases")


@pytest.fixture
def store(new_database):
    dsn = new_database("plans")
    migrate.upgrade(dsn)
    store = ProfileStore.connect(dsn)
    with store.engine.begin() as c:
        # A modest store: each record with two identifiers, each profile with an alias.
        c.execute(text(
            "INSERT INTO up_source_records SELECT 'crm', 'public.customers', "
            "'{\"id\":' || n || '}', 'p' || n, '{}', '[]', n, n, n, false "
            "FROM generate_series(1, :n) AS n"
        ), {"n": RECORDS})
        c.execute(text(
            "INSERT INTO up_record_identifiers SELECT t, t || '-' || n, 'crm', "
            "'public.customers', '{\"id\":' || n || '}' "
            "FROM generate_series(1, :n) AS n, (VALUES ('email'), ('phone')) AS v(t)"
        ), {"n": RECORDS})
        c.execute(text(
            "INSERT INTO up_profile_aliases SELECT 'a' || n, 'p' || n, n "
            "FROM generate_series(1, :n) AS n"
        ), {"n": RECORDS})
    with store.engine.begin() as c:
        c.execute(text("ANALYZE"))
    yield store
    store.close()


def test_a_batch_plans_its_statements_generically_and_only_for_itself(store):
    with store.engine.begin() as connection, StoreBatch(connection):
        inside = connection.execute(text("SHOW plan_cache_mode")).scalar()
    with store.engine.connect() as connection:
        after = connection.execute(text("SHOW plan_cache_mode")).scalar()
    assert (inside, after) == ("force_generic_plan", "auto")


@pytest.mark.parametrize("name", sorted(LOOKUPS))
def test_a_lookup_probes_indexes_instead_of_scanning_a_table(store, name):
    statement = LOOKUPS[name]
    placeholders = iter(range(1, statement.count("%") + 1))
    prepared = re.sub(r"%[bs]", lambda _: f"${next(placeholders)}", statement)
    arguments = ", ".join(["NULL"] * statement.count("%"))  # a generic plan: values unused
    with store.engine.begin() as connection, StoreBatch(connection):
        connection.exec_driver_sql(f"PREPARE lookup AS {prepared}")
        plan = "\n".join(
            connection.exec_driver_sql(f"EXPLAIN EXECUTE lookup({arguments})").scalars()
        )
        connection.exec_driver_sql("DEALLOCATE lookup")
    scanned = [table for table in STORE_TABLES if f"Seq Scan on {table}" in plan]
    assert scanned == [], f"{name} reads whole tables per batch:\n{plan}"
