"""Schema migrations on real PostgreSQL: what they build is what the code declares, and moving
between revisions keeps the stored documents."""

from __future__ import annotations

import json

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from unified_profile.server.engine.records import RecordKey
from unified_profile.server.engine.survivorship import FieldValue, Provenance
from unified_profile.server.store import migrate, profile_document
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

    migrate.upgrade(dsn, "0002")
    assert _column_types(dsn) == {"up_profiles": "json", "up_source_records": "json"}
    with psycopg.connect(dsn) as conn:
        (fields,) = conn.execute("SELECT fields FROM up_profiles").fetchone()
    assert fields == json.loads(FIELDS)
    store = ProfileStore.connect(dsn)
    try:
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


def _provenance(source: str, key: str, version: int | None, rule: str) -> dict[str, object]:
    return {
        "source": source, "table": "public.t", "record_key": key, "version": version,
        "commit_time_us": 7, "rule": rule,
    }


CRM = _provenance("crm", '{"id": 1}', 5, "source_priority")
LOYALTY = _provenance("loyalty", '{"id": "L1"}', None, "source_priority")
LOYALTY_SUM = _provenance("loyalty", '{"id": "L1"}', None, "sum")
CRM_SUM = _provenance("crm", '{"id": 1}', 5, "sum")
INLINE = {
    "person.given_name": {"value": "Zoë", "provenance": [CRM]},
    "loyalty.tier": {"value": "gold", "provenance": [LOYALTY]},
    "traits.visits": {"value": 3, "provenance": [LOYALTY_SUM, CRM_SUM]},
    "traits.nothing": {"value": None, "provenance": []},
}


def test_profile_documents_move_to_provenance_by_reference_and_back(new_database):
    dsn = new_database("by_reference")
    migrate.upgrade(dsn, "0002")
    with psycopg.connect(dsn) as conn:
        for profile_id, fields in (("p_1", INLINE), ("p_empty", {})):
            conn.execute(
                "INSERT INTO up_profiles VALUES (%s, %s::json, '[]', 1, 1, 1)",
                (profile_id, json.dumps(fields)),
            )

    migrate.upgrade(dsn)
    store = ProfileStore.connect(dsn)
    try:
        found, empty = store.get_profile("p_1"), store.get_profile("p_empty")
    finally:
        store.close()
    assert found is not None and empty is not None
    # Exactly what the engine writes for this merge: contributors in its order, each once.
    assert found[0].document == {
        "values": {"loyalty.tier": "gold", "person.given_name": "Zoë", "traits.nothing": None,
                   "traits.visits": 3},
        "provenance": {"loyalty.tier": [2], "person.given_name": [0], "traits.nothing": [],
                       "traits.visits": [3, 1]},
        "contributors": [
            [p[k] for k in profile_document.CONTRIBUTOR_KEYS]
            for p in (CRM, CRM_SUM, LOYALTY, LOYALTY_SUM)
        ],
    }
    assert found[0].fields == INLINE
    assert empty[0].document == profile_document.EMPTY

    migrate.downgrade(dsn, "0002")
    with psycopg.connect(dsn) as conn:
        rows = dict(conn.execute("SELECT profile_id, fields::jsonb FROM up_profiles").fetchall())
    assert rows == {"p_1": INLINE, "p_empty": {}}


def test_the_engine_writes_the_document_the_migration_makes():
    """The migration's order of contributors is :func:`profile_document.encode`'s."""
    provenance = {
        key: Provenance(p["source"], p["table"], p["record_key"], p["version"], 7, p["rule"])
        for key, p in (("crm", CRM), ("loyalty", LOYALTY), ("lsum", LOYALTY_SUM), ("csum", CRM_SUM))
    }
    merged = {
        "person.given_name": FieldValue("Zoë", (provenance["crm"],)),
        "loyalty.tier": FieldValue("gold", (provenance["loyalty"],)),
        "traits.visits": FieldValue(3, (provenance["lsum"], provenance["csum"])),
    }
    document = profile_document.encode(merged)
    assert document["contributors"] == [
        [p[k] for k in profile_document.CONTRIBUTOR_KEYS]
        for p in (CRM, CRM_SUM, LOYALTY, LOYALTY_SUM)
    ]
    assert document["provenance"] == {
        "person.given_name": [0], "loyalty.tier": [2], "traits.visits": [3, 1],
    }
    assert profile_document.expand(document) == {
        path: field for path, field in INLINE.items() if field["value"] is not None
    }
