"""Each way a source or a config can be wrong gives an error naming the problem and its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from unified_profile.server.cli import EXIT_CONFIG, EXIT_PREFLIGHT, main
from unified_profile.server.devstack import EmbeddedPostgres

from .capture_support import execute

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "up.toml"
    path.write_text(body)
    return str(path)


def _source(dsn: str, kafka: str, table: str = "customers", extra: str = "") -> str:
    return f"""
[transport]
kind = "kafka"
bootstrap_servers = "{kafka}"

[[sources]]
name = "crm"
dsn = "{dsn}"
{extra}

[[sources.tables]]
table = '{table}'
"""


def _run(config: str, capsys) -> tuple[int, str]:
    code = main(["--log-format", "json", "cdc", "--config", config])
    return code, capsys.readouterr().err


def test_missing_file(tmp_path, capsys):
    code, err = _run(str(tmp_path / "nope.toml"), capsys)
    assert code == EXIT_CONFIG
    assert "nope.toml" in err and "file not found" in err


def test_not_toml(tmp_path, capsys):
    code, err = _run(_config(tmp_path, "[transport\nkind = 1"), capsys)
    assert code == EXIT_CONFIG and "not valid TOML" in err


def test_unknown_key_is_named_with_its_path(tmp_path, capsys):
    body = _source("dbname=x", "127.0.0.1:1").replace("table = ", "tabel = ")
    code, err = _run(_config(tmp_path, body), capsys)
    assert code == EXIT_CONFIG
    assert "sources[0].tables[0].tabel: unknown key" in err
    assert "sources[0].tables[0].table: required key is missing" in err


def test_bad_values_are_named(tmp_path, capsys):
    body = _source("dbname=x", "127.0.0.1:1", table='ws."unclosed',
                   extra='slot = "Bad-Slot"\nsnapshot = "sometimes"')
    code, err = _run(_config(tmp_path, body), capsys)
    assert code == EXIT_CONFIG
    assert "sources[0].slot:" in err and "a-z, 0-9 and _" in err
    assert "sources[0].snapshot:" in err and "when_needed" in err
    assert "sources[0].tables[0].table:" in err and "never closed" in err


def test_missing_environment_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UP_TEST_UNSET_DSN", raising=False)
    code, err = _run(_config(tmp_path, _source("env:UP_TEST_UNSET_DSN", "127.0.0.1:1")), capsys)
    assert code == EXIT_CONFIG
    assert "sources[0].dsn: environment variable UP_TEST_UNSET_DSN is not set" in err


def test_embedded_transport_is_refused_by_the_cdc_command(tmp_path, capsys):
    body = '[transport]\nkind = "embedded"\n' + _source("dbname=x", "x").split("\n", 4)[4]
    code, err = _run(_config(tmp_path, body), capsys)
    assert code == EXIT_CONFIG and "transport.kind" in err


@pytest.mark.parametrize(
    ("setup", "table", "expected", "fix"),
    [
        ("", "customers", "table public.customers does not exist", "check the name"),
        ("CREATE TABLE \"Customers\" (id int PRIMARY KEY)", "customers",
         'did you mean "public"."Customers"', "quote mixed-case names"),
        ("CREATE TABLE customers (id int)", "customers", "has no primary key", "ADD PRIMARY KEY"),
        ("CREATE TABLE customers (id int PRIMARY KEY)", "customers",
         "has REPLICA IDENTITY DEFAULT", "REPLICA IDENTITY FULL"),
        ("CREATE VIEW customers AS SELECT 1 AS id", "customers", "is not a table", ""),
    ],
)
def test_source_tables_that_cannot_be_captured(
    new_database, kafka_bootstrap, tmp_path, capsys, setup, table, expected, fix
):
    dsn = new_database()
    if setup:
        execute(dsn, setup)
    code, err = _run(_config(tmp_path, _source(dsn, kafka_bootstrap, table)), capsys)
    assert code == EXIT_PREFLIGHT
    assert expected in err
    assert "fix: " in err and fix in err


def test_role_without_replication_or_select(new_database, kafka_bootstrap, tmp_path, capsys,
                                            unique_name):
    dsn = new_database()
    role = unique_name("reader")
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY)",
            "ALTER TABLE customers REPLICA IDENTITY FULL", f"CREATE ROLE {role} LOGIN")
    role_dsn = f"{dsn} user={role}"
    code, err = _run(_config(tmp_path, _source(role_dsn, kafka_bootstrap)), capsys)
    assert code == EXIT_PREFLIGHT
    assert f"role '{role}' has no REPLICATION attribute" in err and "REPLICATION;" in err

    execute(dsn, f"ALTER ROLE {role} REPLICATION")
    code, err = _run(_config(tmp_path, _source(role_dsn, kafka_bootstrap)), capsys)
    assert code == EXIT_PREFLIGHT
    assert "may not SELECT from public.customers" in err and "GRANT SELECT" in err
    execute(dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_server_without_logical_wal_level(tmp_path, kafka_bootstrap, capsys):
    server = EmbeddedPostgres(tmp_path / "pg", settings={"wal_level": "replica"})
    server.start()
    try:
        dsn = server.create_database("crm")
        code, err = _run(_config(tmp_path, _source(dsn, kafka_bootstrap)), capsys)
    finally:
        server.stop()
    assert code == EXIT_PREFLIGHT
    assert "wal_level is 'replica'" in err and "ALTER SYSTEM SET wal_level = logical" in err


def test_replica_identity_is_set_when_configured(new_database, kafka_bootstrap):
    from unified_profile.cdc.connector import Connector
    from unified_profile.cdc.offsets import InMemoryOffsetStore
    from unified_profile.cdc.sink import InMemorySink

    from .capture_support import capture_config

    dsn = new_database()
    execute(dsn, "CREATE TABLE customers (id int PRIMARY KEY)")
    config = capture_config("crm", dsn, kafka_bootstrap, ["customers"],
                            set_replica_identity_full=True)
    Connector(config.sources[0], InMemorySink(), InMemoryOffsetStore()).prepare()
    import psycopg

    with psycopg.connect(dsn) as conn:
        (identity,) = conn.execute(
            "SELECT relreplident FROM pg_class WHERE oid = 'customers'::regclass"
        ).fetchone()
    assert identity == "f"
