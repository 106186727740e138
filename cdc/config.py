"""Capture configuration: the ``[[sources]]`` and ``[transport]`` sections of the TOML file.

The file is shared with the engine and the gRPC server; this module validates what capture reads and
leaves the other top-level sections to their owners. Every error names the file, the key path and the
problem (:class:`~unified_profile.cdc.errors.ConfigError`).
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .identifiers import TableName
from .type_encoding import DecimalHandling

_ENV_PREFIX = "env:"
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
# Kafka topic names allow [a-zA-Z0-9._-]; the source name is the topic prefix.
_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


class SnapshotMode(enum.StrEnum):
    """When the connector reads the tables' existing rows (as Debezium's ``snapshot.mode``)."""

    INITIAL = "initial"
    """Snapshot when the source has never been captured, then stream."""
    NEVER = "never"
    """Only stream changes from the moment the slot is created."""
    WHEN_NEEDED = "when_needed"
    """Like ``initial``, and also re-snapshot when the slot has been lost."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableConfig(_Strict):
    """One captured table. The mapping keys are read and validated by the engine."""

    table: TableName
    set_replica_identity_full: bool | None = None
    """Overrides the source's setting for this table."""

    # Mapping keys (the engine validates them): capture only passes them through.
    version_column: str | dict[str, Any] | None = None
    soft_delete: dict[str, Any] | None = None
    identifiers: dict[str, Any] = Field(default_factory=dict)
    fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("table", mode="before")
    @classmethod
    def _parse_table(cls, value: object) -> TableName:
        if isinstance(value, TableName):
            return value
        if not isinstance(value, str):
            raise ValueError('must be a string such as "public.customers"')
        return TableName.parse(value)


class SourceConfig(_Strict):
    """One source database, captured under a logical name (the topic prefix)."""

    name: str
    dsn: str
    tables: list[TableConfig] = Field(min_length=1)
    snapshot: SnapshotMode = SnapshotMode.INITIAL
    slot: str | None = None
    publication: str | None = None
    set_replica_identity_full: bool = False
    """Run ``ALTER TABLE … REPLICA IDENTITY FULL`` where needed instead of refusing to start."""
    schemas_enable: bool = False
    """Wrap every key and value as ``{"schema": …, "payload": …}`` (Kafka Connect JSON converter)."""
    decimal_handling: DecimalHandling = DecimalHandling.PRECISE
    tombstones_on_delete: bool = True
    provide_transaction_metadata: bool = False
    heartbeat_interval_s: Annotated[float, Field(gt=0)] = 10.0
    status_interval_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    snapshot_batch_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 5_000
    max_event_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024 * 1024)] = 1_000_000
    """The largest change event (JSON key and value, without the schema wrapper) handed over.

    The default stays under Kafka's 1 MB ``message.max.bytes``; a larger event is shrunk or
    replaced by a marker that the engine dead-letters (see :mod:`~unified_profile.cdc.oversized`).
    """

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _TOPIC_PREFIX.fullmatch(value):
            raise ValueError(
                "must be usable as a Kafka topic prefix: letters, digits, '.', '_', '-' "
                f"(got {value!r})"
            )
        return value

    @field_validator("slot", "publication")
    @classmethod
    def _check_slot(cls, value: str | None) -> str | None:
        if value is not None and not _SLOT_NAME.fullmatch(value):
            raise ValueError(
                "PostgreSQL slot and publication names here are 1-63 characters of a-z, 0-9 and _ "
                f"(got {value!r})"
            )
        return value

    @model_validator(mode="after")
    def _unique_tables(self) -> SourceConfig:
        seen: set[TableName] = set()
        for table in self.tables:
            if table.table in seen:
                raise ValueError(f"table {table.table} is listed twice")
            seen.add(table.table)
        return self

    @property
    def slot_name(self) -> str:
        """The replication slot, by default ``unified_profile_<name>``."""
        return self.slot or _default_object_name(self.name)

    @property
    def publication_name(self) -> str:
        """The publication, by default ``unified_profile_<name>``."""
        return self.publication or _default_object_name(self.name)

    def replica_identity_full_allowed(self, table: TableConfig) -> bool:
        """Whether the connector may set ``REPLICA IDENTITY FULL`` on this table."""
        if table.set_replica_identity_full is not None:
            return table.set_replica_identity_full
        return self.set_replica_identity_full


class KafkaConfig(_Strict):
    """Where change events go when ``transport.kind = "kafka"``."""

    kind: Literal["kafka"] = "kafka"
    bootstrap_servers: str
    topic_partitions: Annotated[int, Field(ge=1)] = 3
    topic_replication_factor: Annotated[int, Field(ge=1)] = 1
    offsets_topic: str = "unified_profile.connector_offsets"
    group_id: str = "profile-engine"
    linger_ms: Annotated[int, Field(ge=0)] = 5
    client_options: dict[str, Any] = Field(default_factory=dict)
    """Extra kafka-python options for every client: security_protocol, sasl_*, ssl_*."""
    consumer_options: dict[str, Any] = Field(default_factory=dict)
    """Extra options for the engine's consumer only (session_timeout_ms, max_poll_interval_ms…)."""


class EmbeddedTransportConfig(_Strict):
    """Connector and engine in one process, handing events over in memory."""

    kind: Literal["embedded"] = "embedded"
    queue_events: Annotated[int, Field(ge=1)] = 50_000


class CaptureConfig(BaseModel):
    """What the connector needs from the config file."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sources: list[SourceConfig] = Field(min_length=1)
    transport: Annotated[KafkaConfig | EmbeddedTransportConfig, Field(discriminator="kind")] = (
        EmbeddedTransportConfig()
    )

    @model_validator(mode="before")
    @classmethod
    def _default_transport_kind(cls, data: Any) -> Any:
        # The union is told apart by "kind"; a [transport] table without it means the default.
        if isinstance(data, dict) and isinstance(data.get("transport"), dict):
            transport = data["transport"]
            if "kind" not in transport:
                data = {**data, "transport": {"kind": "embedded", **transport}}
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> CaptureConfig:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique: {', '.join(duplicates)} repeated")
        return self

    def source(self, name: str) -> SourceConfig:
        """The source called ``name``.

        Raises:
            ConfigError: No source has that name.
        """
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(None, [("sources", f"no source named {name!r} (configured: {known})")])


def load_capture_config(path: str | Path) -> CaptureConfig:
    """Read and validate the capture sections of a TOML config file.

    ``"env:NAME"`` string values are replaced by the environment variable ``NAME``.

    Raises:
        ConfigError: The file is missing, is not TOML, or fails validation.
    """
    data = read_config_file(path)
    return parse_capture_config(data, file=str(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file and resolve its ``env:`` references.

    Raises:
        ConfigError: The file cannot be read or parsed, or a referenced variable is not set.
    """
    file = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(file, [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(file, [("", f"cannot read: {exc.strerror}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [("", f"not valid TOML: {exc}")]) from exc
    problems: list[tuple[str, str]] = []
    resolved = _resolve_env(data, "", problems)
    if problems:
        raise ConfigError(file, problems)
    assert isinstance(resolved, dict)
    return resolved


def parse_capture_config(data: dict[str, Any], file: str | None = None) -> CaptureConfig:
    """Validate already-parsed config data (``env:`` references already resolved)."""
    try:
        return CaptureConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, validation_problems(exc)) from None


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(key path, problem)`` pairs a user can act on."""
    problems = []
    for error in exc.errors():
        path = format_key_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and the README's configuration reference)"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append((path, message))
    return problems


def format_key_path(loc: tuple[int | str, ...]) -> str:
    """``("sources", 0, "tables", 1, "table")`` → ``sources[0].tables[1].table``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("kafka", "embedded") and out == "transport":
            continue  # pydantic names the union member; the user wrote no such key
        else:
            out += f".{part}" if out else str(part)
    return out


def _default_object_name(source_name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_]", "_", source_name.lower())
    return f"unified_profile_{cleaned}"[:63]


def _resolve_env(value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        variable = value[len(_ENV_PREFIX) :]
        if variable not in os.environ:
            problems.append((path, f"environment variable {variable} is not set"))
            return value
        return os.environ[variable]
    if isinstance(value, dict):
        return {
            key: _resolve_env(item, f"{path}.{key}" if path else key, problems)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_resolve_env(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    return value
