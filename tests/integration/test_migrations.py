"""Schema migrations on real PostgreSQL: what they build is what the code declares, and moving
between revisions keeps the stored documents."""

from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from unified_profile.server.engine.records import RecordKey
from unified_profile.server.store import migrate
from unified_profile.server.store.engine import create_store_engine
from unified_profile.server.store.profile_store import ProfileStore
from unified_profile.server.store.schema import metadata

pytestmark = pytest.mark.integration

FIELDS = '{"person.given_name": {"value": "Zoë", "provenance": [{"source": "crm", "rule": "x"}]}}'
RECORD = '{"person.given_name": "Zoë", "loyalty.points_balance": 1.5e3}'


def test_the_migrations_build_the_schema_the_code_declares(new_database):
    dsn = new_database("migrated")
    migrate.upgrade(dsn)
    engine = create_store_engine(dsn)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
        assert migrate.current_revision(engine) == migrate.HEAD_REVISION
    finally:
        engine.dispose()


def _column_types(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, data_type FROM information_schema.columns"
            " WHERE column_name = 'fields' AND table_name IN ('up_profiles', 'up_source_records')"
        ).fetchall()
    return dict(rows)


def test_upgrading_and_downgrading_keep_the_stored_documents(new_database):
    dsn = new_database("moved")
    migrate.upgrade(dsn, "0001")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO up_profiles VALUES ('p_1', %s::jsonb, '[[\"crm_id\", \"1\"]]', 1, 1, 1)",
            (FIELDS,),
        )
        conn.execute(
            "INSERT INTO up_source_records VALUES"
            " ('crm', 'public.customers', '{\"id\": 1}', 'p_1', %s::jsonb,"
            " '[[\"crm_id\", \"1\"]]', 1, 1, 1, false)",
            (RECORD,),
        )

    migrate.upgrade(dsn)
    assert _column_types(dsn) == {"up_profiles": "json", "up_source_records": "json"}
    store = ProfileStore.connect(dsn)
    try:
        found = store.get_profile("p_1")
        assert found is not None
        assert found[0].fields == {
            "person.given_name": {
                "value": "Zoë", "provenance": [{"source": "crm", "rule": "x"}],
            }
        }
        key = RecordKey("crm", "public.customers", '{"id": 1}')
        assert store.records([key])[key].record.fields == {
            "person.given_name": "Zoë", "loyalty.points_balance": 1500.0,
        }
    finally:
        store.close()

    migrate.downgrade(dsn, "0001")
    assert _column_types(dsn) == {"up_profiles": "jsonb", "up_source_records": "jsonb"}
    with psycopg.connect(dsn) as conn:
        (name,) = conn.execute(
            "SELECT fields -> 'person.given_name' ->> 'value' FROM up_profiles"
        ).fetchone()
    assert name == "Zoë"
