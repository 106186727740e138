"""Configured names are quoted identifiers and values are bound parameters, all the way through.

A source schema, table and columns whose names are SQL (quotes, a semicolon, ``DROP TABLE``,
spaces, mixed case) and values that are SQL too go through the connector's preflight,
publication, snapshot and stream, the engine's mapping and the store: the profile holds the
values exactly, and nothing the names or values spell out was executed.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

from unified_profile.cdc.connector import Connector
from unified_profile.cdc.sink import SinkGroup
from unified_profile.server.config import parse_service_config
from unified_profile.server.engine.records import Identifier
from unified_profile.server.ingest.consumers import EmbeddedIngest
from unified_profile.server.ingest.service import build_pipeline, open_store
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import StoreOffsetStore

from ..waiting import wait_for

pytestmark = pytest.mark.integration

SCHEMA = 'crm"; DROP SCHEMA public CASCADE; --'
TABLE = "Customers'); DROP TABLE up_profiles; --"
ID_COLUMN = 'id"--'
EMAIL_COLUMN = "E-mail Address; DELETE FROM up_change_log"
NAME_COLUMN = "name'); TRUNCATE up_source_records; --"
HOSTILE_VALUE = "Robert'); DROP TABLE up_profiles; --"


def _config(source_dsn: str, store_dsn: str, slot: str) -> dict[str, object]:
    table = f'"{SCHEMA.replace(chr(34), chr(34) * 2)}"."{TABLE}"'
    return {
        "store": {"dsn": store_dsn},
        "transport": {"kind": "embedded"},
        "identity": {"email": {"normalize": ["trim", "lower"]}, "hostile_id": {}},
        "rules": {"default": "last_writer_wins"},
        "sources": [{
            "name": "hostile", "dsn": source_dsn, "slot": slot, "publication": slot,
            "status_interval_s": 0.5,
            "tables": [{
                "table": table,
                "identifiers": {"hostile_id": ID_COLUMN, "email": EMAIL_COLUMN},
                "fields": {
                    "person.full_name": NAME_COLUMN,
                    "contact.email": {"column": EMAIL_COLUMN, "transform": ["trim", "lower"]},
                },
            }],
        }],
    }


def _create_source(dsn: str) -> sql.Composed:
    table = sql.Identifier(SCHEMA, TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text, {} text)").format(
            table, sql.Identifier(ID_COLUMN), sql.Identifier(EMAIL_COLUMN),
            sql.Identifier(NAME_COLUMN)))
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s)").format(table),
                     ("snap@example.com", HOSTILE_VALUE))
    return sql.SQL("INSERT INTO {} VALUES (2, %s, %s)").format(table)


def test_sql_in_names_and_values_is_data_never_executed(new_database, unique_name):
    source_dsn, store_dsn = new_database("hostile_src"), new_database("hostile_store")
    insert_streamed = _create_source(source_dsn)
    config = parse_service_config(_config(source_dsn, store_dsn, unique_name("hostile")), "t")
    migrate.upgrade(store_dsn)
    store = open_store(config)
    source = config.capture.sources[0]
    sinks = SinkGroup()
    stop = threading.Event()
    threads = [
        threading.Thread(target=Connector(source, sinks.add(source.name),
                                          StoreOffsetStore(store)).run, args=(stop,)),
        threading.Thread(target=EmbeddedIngest(sinks, build_pipeline(config, store, "embedded")).run,
                         args=(stop,)),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: store.find_profile(Identifier("email", "snap@example.com")),
                 what="the snapshot row's profile")
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute(insert_streamed, ("  Stream@Example.com ", "x'; SELECT pg_sleep(60); --"))
        streamed = wait_for(lambda: store.find_profile(Identifier("email", "stream@example.com")),
                            what="the streamed row's profile")
        profiles = store.all_profiles()
        snapshot_profile = profiles[store.find_profile(Identifier("email", "snap@example.com"))]
        assert snapshot_profile.fields["person.full_name"]["value"] == HOSTILE_VALUE
        assert profiles[streamed].fields["person.full_name"]["value"] == (
            "x'; SELECT pg_sleep(60); --")
        assert store.find_profile(Identifier("hostile_id", "2")) == streamed
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        store.close()
    # Nothing the names or values spelled out ran: every table is there and holds its rows.
    with psycopg.connect(store_dsn) as conn:
        for table in ("up_profiles", "up_change_log", "up_source_records"):
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            assert count.fetchone() >= (2,), table
    with psycopg.connect(source_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('public') IS NOT NULL").fetchone() == (True,)
