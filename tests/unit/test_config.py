"""Unit tests for cdc/config.py: reading, validating and reporting errors in the capture config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unified_profile.cdc.config import (
    CaptureConfig,
    EmbeddedTransportConfig,
    KafkaConfig,
    SnapshotMode,
    load_capture_config,
    parse_capture_config,
    read_config_file,
)
from unified_profile.cdc.errors import ConfigError
from unified_profile.cdc.identifiers import TableName
from unified_profile.cdc.type_encoding import DecimalHandling

UNKNOWN_KEY = "unknown key (check its spelling and the README's configuration reference)"


def write(tmp_path: Path, text: str, name: str = "unified-profile.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def source(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "crm", "dsn": "host=db", "tables": [{"table": "customers"}]}
    base.update(overrides)
    return base


def problems_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_capture_config(data, file="f.toml")
    assert info.value.file == "f.toml"
    return info.value.problems


# --- a whole file ---------------------------------------------------------------------------


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[sources]]
name = "crm"
dsn = "host=db dbname=crm"

[[sources.tables]]
table = "customers"
""",
    )
    config = load_capture_config(path)

    assert config.transport == EmbeddedTransportConfig(kind="embedded", queue_events=50_000)
    (crm,) = config.sources
    assert crm.name == "crm"
    assert crm.dsn == "host=db dbname=crm"
    assert [t.table for t in crm.tables] == [TableName("public", "customers")]
    assert crm.snapshot is SnapshotMode.INITIAL
    assert crm.slot_name == "unified_profile_crm"
    assert crm.publication_name == "unified_profile_crm"
    assert crm.set_replica_identity_full is False
    assert crm.schemas_enable is False
    assert crm.decimal_handling is DecimalHandling.PRECISE
    assert crm.tombstones_on_delete is True
    assert crm.provide_transaction_metadata is False
    assert crm.heartbeat_interval_s == 10.0
    assert crm.status_interval_s == 5.0
    assert crm.snapshot_batch_rows == 5_000


def test_readme_example_with_env_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_CRM_DSN", "postgresql://cdc@crm-db/crm")
    path = write(
        tmp_path,
        """
[transport]
kind = "kafka"
bootstrap_servers = "127.0.0.1:9092"

[[sources]]
name = "crm"
dsn = "env:UP_CRM_DSN"

[[sources.tables]]
table = "public.customers"

[[sources.tables]]
table = 'workspace_1."Person"'
set_replica_identity_full = true
""",
    )
    config = load_capture_config(path)

    assert config.transport == KafkaConfig(
        kind="kafka",
        bootstrap_servers="127.0.0.1:9092",
        topic_partitions=3,
        topic_replication_factor=1,
        offsets_topic="unified_profile.connector_offsets",
        group_id="profile-engine",
        linger_ms=5,
        client_options={},
    )
    crm = config.source("crm")
    assert crm.dsn == "postgresql://cdc@crm-db/crm"
    customers, person = crm.tables
    assert customers.table == TableName("public", "customers")
    assert person.table == TableName("workspace_1", "Person")
    assert crm.replica_identity_full_allowed(customers) is False
    assert crm.replica_identity_full_allowed(person) is True


def test_table_can_refuse_replica_identity_full_the_source_allows() -> None:
    config = parse_capture_config(
        {
            "sources": [
                source(
                    set_replica_identity_full=True,
                    tables=[
                        {"table": "a"},
                        {"table": "b", "set_replica_identity_full": False},
                    ],
                )
            ]
        }
    )
    crm = config.sources[0]
    assert [crm.replica_identity_full_allowed(t) for t in crm.tables] == [True, False]


def test_other_top_level_sections_are_left_to_their_owners(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[store]
path = "profiles.db"
whatever = 1

[grpc]
listen = "0.0.0.0:50051"

[identity]
match_on = ["email"]

[[rules]]
field = "email"
prefer = "newest"

[[sources]]
name = "crm"
dsn = "host=db"
tables = [{ table = "customers", version_column = "updated_at", fields = { email = "email" } }]
""",
    )
    config = load_capture_config(path)
    assert [s.name for s in config.sources] == ["crm"]
    table = config.sources[0].tables[0]
    assert table.version_column == "updated_at"
    assert table.fields == {"email": "email"}
    # ... and the shared reader still hands those sections to the engine and the server.
    data = read_config_file(path)
    assert data["store"] == {"path": "profiles.db", "whatever": 1}
    assert data["rules"] == [{"field": "email", "prefer": "newest"}]


def test_explicit_slot_and_publication_names() -> None:
    config = parse_capture_config({"sources": [source(slot="crm_slot", publication="crm_pub")]})
    assert config.sources[0].slot_name == "crm_slot"
    assert config.sources[0].publication_name == "crm_pub"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("crm", "unified_profile_crm"),
        ("CRM-eu.1", "unified_profile_crm_eu_1"),
        ("x" * 100, ("unified_profile_" + "x" * 100)[:63]),
    ],
)
def test_default_slot_and_publication_are_valid_postgres_names(name: str, expected: str) -> None:
    crm = parse_capture_config({"sources": [source(name=name)]}).sources[0]
    assert crm.slot_name == expected
    assert crm.publication_name == expected
    assert len(crm.slot_name) <= 63


# --- env: references ------------------------------------------------------------------------


def test_env_references_are_resolved_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UP_TABLE", "crm.Accounts")
    monkeypatch.setenv("UP_HEARTBEAT", "2.5")
    path = write(
        tmp_path,
        """
[[sources]]
name = "crm"
dsn = "host=db"
heartbeat_interval_s = "env:UP_HEARTBEAT"
tables = [{ table = "env:UP_TABLE" }]
""",
    )
    crm = load_capture_config(path).sources[0]
    assert crm.tables[0].table == TableName("crm", "accounts")
    assert crm.heartbeat_interval_s == 2.5


def test_unset_env_variables_are_all_reported_with_file_and_key_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UP_CRM_DSN", raising=False)
    monkeypatch.delenv("UP_TABLE", raising=False)
    path = write(
        tmp_path,
        """
[[sources]]
name = "crm"
dsn = "env:UP_CRM_DSN"
tables = [{ table = "customers" }, { table = "env:UP_TABLE" }]
""",
    )
    with pytest.raises(ConfigError) as info:
        load_capture_config(path)
    assert info.value.file == str(path)
    assert info.value.problems == [
        ("sources[0].dsn", "environment variable UP_CRM_DSN is not set"),
        ("sources[0].tables[1].table", "environment variable UP_TABLE is not set"),
    ]
    assert str(info.value) == (
        "invalid configuration\n"
        f"  {path}: sources[0].dsn: environment variable UP_CRM_DSN is not set\n"
        f"  {path}: sources[0].tables[1].table: environment variable UP_TABLE is not set"
    )


def test_parse_does_not_resolve_env_references() -> None:
    config = parse_capture_config({"sources": [source(dsn="env:UP_SOMETHING")]})
    assert config.sources[0].dsn == "env:UP_SOMETHING"


# --- unreadable files -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_capture_config(path)
    assert info.value.problems == [("", "file not found")]
    assert str(info.value) == f"invalid configuration\n  {path}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_config_file(tmp_path)
    ((key, problem),) = info.value.problems
    assert key == ""
    assert problem.startswith("cannot read: ")


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[[sources]\nname = 'crm'\n")
    with pytest.raises(ConfigError) as info:
        load_capture_config(path)
    ((key, problem),) = info.value.problems
    assert key == ""
    assert problem.startswith("not valid TOML: ")
    assert str(info.value).startswith(f"invalid configuration\n  {path}: not valid TOML: ")


# --- validation errors name the key path ----------------------------------------------------


def test_misspelled_table_key_is_reported_like_the_readme_says(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[sources]]
name = "crm"
dsn = "host=db"

[[sources.tables]]
table = "customers"

[[sources.tables]]
tabel = "orders"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_capture_config(path)
    assert info.value.problems == [
        ("sources[0].tables[1].table", "required key is missing"),
        ("sources[0].tables[1].tabel", UNKNOWN_KEY),
    ]
    assert f"  {path}: sources[0].tables[1].tabel: {UNKNOWN_KEY}" in str(info.value).splitlines()


def test_unknown_source_key_is_rejected() -> None:
    assert problems_of({"sources": [source(slot_nmae="x")]}) == [
        ("sources[0].slot_nmae", UNKNOWN_KEY)
    ]


def test_unknown_top_level_key_is_ignored() -> None:
    config = parse_capture_config({"sources": [source()], "engine": {"anything": True}})
    assert isinstance(config, CaptureConfig)


def test_missing_and_empty_sources() -> None:
    assert problems_of({}) == [("sources", "required key is missing")]
    ((key, _),) = problems_of({"sources": []})
    assert key == "sources"


def test_missing_required_source_keys() -> None:
    assert problems_of({"sources": [{"name": "crm"}]}) == [
        ("sources[0].dsn", "required key is missing"),
        ("sources[0].tables", "required key is missing"),
    ]


def test_source_without_tables() -> None:
    ((key, _),) = problems_of({"sources": [source(tables=[])]})
    assert key == "sources[0].tables"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            "a.b.c",
            "'a.b.c' has 3 dot-separated parts; write table or schema.table "
            '(quote a name that contains a dot: schema."my.table")',
        ),
        ('crm."Person', "'crm.\"Person': quote opened at position 5 is never closed"),
        ("", "'': expected a name at position 1"),
        (42, 'must be a string such as "public.customers"'),
    ],
)
def test_bad_table_name_is_reported_at_its_key(table: object, problem: str) -> None:
    data = {"sources": [source(tables=[{"table": "ok"}, {"table": table}])]}
    assert problems_of(data) == [("sources[0].tables[1].table", problem)]


def test_same_table_listed_twice_in_one_source() -> None:
    data = {"sources": [source(tables=[{"table": "customers"}, {"table": "PUBLIC.Customers"}])]}
    assert problems_of(data) == [("sources[0]", "table public.customers is listed twice")]


def test_quoted_mixed_case_is_a_different_table() -> None:
    data = {"sources": [source(tables=[{"table": "customers"}, {"table": '"Customers"'}])]}
    tables = [t.table for t in parse_capture_config(data).sources[0].tables]
    assert tables == [TableName("public", "customers"), TableName("public", "Customers")]


def test_same_table_in_two_sources_is_allowed() -> None:
    config = parse_capture_config({"sources": [source(name="crm"), source(name="loyalty")]})
    assert [s.name for s in config.sources] == ["crm", "loyalty"]


def test_duplicate_source_names() -> None:
    data = {"sources": [source(name="crm"), source(name="loyalty"), source(name="crm")]}
    with pytest.raises(ConfigError) as info:
        parse_capture_config(data, file="f.toml")
    ((_, problem),) = info.value.problems
    assert problem == "source names must be unique: crm repeated"
    assert "f.toml" in str(info.value)
    assert "crm repeated" in str(info.value)


def test_source_name_must_be_a_topic_prefix() -> None:
    assert problems_of({"sources": [source(name="crm db")]}) == [
        (
            "sources[0].name",
            "must be usable as a Kafka topic prefix: letters, digits, '.', '_', '-' (got 'crm db')",
        )
    ]


@pytest.mark.parametrize("key", ["slot", "publication"])
@pytest.mark.parametrize("value", ["Crm", "crm-slot", "", "x" * 64])
def test_slot_and_publication_names_are_checked(key: str, value: str) -> None:
    assert problems_of({"sources": [source(**{key: value})]}) == [
        (
            f"sources[0].{key}",
            "PostgreSQL slot and publication names here are 1-63 characters of a-z, 0-9 and _ "
            f"(got {value!r})",
        )
    ]


@pytest.mark.parametrize(
    ("key", "value", "mentions"),
    [
        ("snapshot", "sometimes", "'initial', 'never' or 'when_needed'"),
        ("decimal_handling", "exact", "'precise', 'string' or 'double'"),
        ("heartbeat_interval_s", 0, "greater than 0"),
        ("status_interval_s", 61, "less than or equal to 60"),
        ("snapshot_batch_rows", 0, "greater than or equal to 1"),
    ],
)
def test_source_values_out_of_range(key: str, value: object, mentions: str) -> None:
    ((path, problem),) = problems_of({"sources": [source(**{key: value})]})
    assert path == f"sources[0].{key}"
    assert mentions in problem


def test_snapshot_modes_and_decimal_handling_are_read() -> None:
    crm = parse_capture_config(
        {"sources": [source(snapshot="when_needed", decimal_handling="string")]}
    ).sources[0]
    assert crm.snapshot is SnapshotMode.WHEN_NEEDED
    assert crm.decimal_handling is DecimalHandling.STRING


def test_errors_in_several_sources_are_all_reported() -> None:
    data = {"sources": [source(dsn=None), source(name="loyalty", tables=[{"table": "a.b.c"}])]}
    assert [path for path, _ in problems_of(data)] == [
        "sources[0].dsn",
        "sources[1].tables[0].table",
    ]


def test_error_without_file_says_config() -> None:
    with pytest.raises(ConfigError) as info:
        parse_capture_config({"sources": [source(extra=1)]})
    assert info.value.file is None
    assert str(info.value) == f"invalid configuration\n  <config>: sources[0].extra: {UNKNOWN_KEY}"


# --- source lookup --------------------------------------------------------------------------


def test_source_lookup_by_name() -> None:
    config = parse_capture_config({"sources": [source(name="crm"), source(name="loyalty")]})
    assert config.source("loyalty").name == "loyalty"
    with pytest.raises(ConfigError) as info:
        config.source("billing")
    assert info.value.problems == [
        ("sources", "no source named 'billing' (configured: crm, loyalty)")
    ]


# --- the transport union --------------------------------------------------------------------


def test_embedded_transport() -> None:
    config = parse_capture_config(
        {"sources": [source()], "transport": {"kind": "embedded", "queue_events": 10}}
    )
    assert config.transport == EmbeddedTransportConfig(kind="embedded", queue_events=10)


def test_kafka_transport_with_options() -> None:
    config = parse_capture_config(
        {
            "sources": [source()],
            "transport": {
                "kind": "kafka",
                "bootstrap_servers": "k1:9092,k2:9092",
                "topic_partitions": 6,
                "client_options": {"security_protocol": "SASL_SSL"},
            },
        }
    )
    assert isinstance(config.transport, KafkaConfig)
    assert config.transport.bootstrap_servers == "k1:9092,k2:9092"
    assert config.transport.topic_partitions == 6
    assert config.transport.client_options == {"security_protocol": "SASL_SSL"}


def test_kafka_transport_needs_bootstrap_servers() -> None:
    data = {"sources": [source()], "transport": {"kind": "kafka"}}
    assert problems_of(data) == [("transport.bootstrap_servers", "required key is missing")]


def test_transport_key_of_the_other_kind_is_unknown() -> None:
    data = {"sources": [source()], "transport": {"kind": "embedded", "bootstrap_servers": "k:9092"}}
    assert problems_of(data) == [("transport.bootstrap_servers", UNKNOWN_KEY)]


def test_transport_values_are_checked_at_their_key() -> None:
    data = {"sources": [source()], "transport": {"kind": "embedded", "queue_events": 0}}
    ((path, problem),) = problems_of(data)
    assert path == "transport.queue_events"
    assert "greater than or equal to 1" in problem


def test_unknown_transport_kind() -> None:
    data = {"sources": [source()], "transport": {"kind": "rabbitmq"}}
    ((path, problem),) = problems_of(data)
    assert path == "transport"
    assert "'kafka'" in problem
    assert "'embedded'" in problem


def test_transport_kind_defaults_to_embedded() -> None:
    config = parse_capture_config({"sources": [source()], "transport": {"queue_events": 10}})
    assert config.transport == EmbeddedTransportConfig(kind="embedded", queue_events=10)
