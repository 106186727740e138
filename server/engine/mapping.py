"""Mapping: one Debezium change event of a configured table → one :class:`SourceRecord`.

Onboarding a schema is configuration, not code. Per ``[[sources.tables]]`` the config declares:

* ``version_column = "updated_at"`` (or ``{ column = "updated_ms", unit = "ms" }``): the row's own
  version, converted to µs since 1970 (instants) or kept as the integer (counters);
* ``soft_delete = { column = "deleted_at", when = "not_null" }`` (``when`` is ``not_null``,
  ``true`` or ``false``; or ``equals = value`` / ``equals = [values]``);
* ``identifiers = { crm_id = "id", email = ["email", { column = "emails", transform = "each" }] }``:
  a key is an identifier type declared in ``[identity.<type>]`` (or any label with ``type = …``);
* ``fields = { "person.given_name" = "first_name", "contact.phone" = { column = "phone",
  transform = "e164", region = "GB" } }``: keys are profile field paths (``profile_paths``).

A column spec is a column name, or a table with ``column`` (or ``columns = [...]``), ``transform``
(a name or a chain, see ``transforms``), the transforms' options, and ``on_invalid = "null"`` to
keep a value a transform rejects out of the profile instead of failing the event. Column names are
exact, as in the event (``"nameFirstName"``; SQL-style double quotes are optional).

Everything is validated and compiled once (:func:`parse_mapping_config`): errors name the file, the
key path and the problem. :meth:`TableMapping.map_event` then runs per event with no validation left.

**Unchanged TOAST.** A ``__debezium_unavailable_value`` is never a value. The mapping reads the
column from ``before`` when the event has it there (``REPLICA IDENTITY FULL`` logs the whole old
row, detoasted); otherwise the record's ``fields`` hold :data:`UNAVAILABLE` for each affected path,
and ``identifiers.<type>`` for an affected identifier type. The store must call
:func:`fill_unavailable` with the stored image before using the record.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unified_profile.cdc.config import read_config_file, validation_problems
from unified_profile.cdc.envelope import DecodedEvent
from unified_profile.cdc.errors import ConfigError
from unified_profile.cdc.identifiers import TableName

from .debezium_values import (
    UNAVAILABLE,
    ColumnError,
    DecoderMemo,
    RowReader,
    TimeUnit,
    to_epoch_micros,
)
from .identity import IdentifierType, normalize_identifier
from .profile_paths import ValueKind, field_writer, kind_of, path_problem, to_bool, writer_options
from .records import Identifier, RecordKey, SourceRecord, canonical_json
from .transforms import (
    COMBINING_TRANSFORMS,
    Chain,
    TransformError,
    compile_chain,
    known_options,
    shown_value,
)

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_IDENTIFIERS_PREFIX",
    "MappingConfig",
    "MappingError",
    "TableMapping",
    "fill_unavailable",
    "load_mapping_config",
    "parse_mapping_config",
]

UNAVAILABLE_IDENTIFIERS_PREFIX = "identifiers."
"""``fields["identifiers.<type>"] = UNAVAILABLE``: that type's identifiers were not in the event."""


class MappingError(Exception):
    """An event of a configured table could not be mapped; it belongs in the dead letters.

    Attributes:
        reason: What went wrong.
        source: The source's name.
        table: ``schema.table``.
        key: The record's key (canonical JSON), when known.
        column: The column whose value failed, when one did.
        transform: The transform (or decoding step) that rejected it.
        value: The value it rejected.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str,
        table: str,
        key: str | None = None,
        column: str | None = None,
        transform: str | None = None,
        value: object = None,
    ) -> None:
        self.reason, self.source, self.table, self.key = reason, source, table, key
        self.column, self.transform, self.value = column, transform, value
        parts = [f"{source}/{table}"]
        if key is not None:
            parts.append(f"key {key}")
        if column is not None:
            parts.append(f"column {column!r}")
        if transform is not None:
            parts.append(f"transform {transform}")
        detail = f" (value {shown_value(value)})" if column is not None else ""
        super().__init__(f"{', '.join(parts)}: {reason}{detail}")


# --- config structure (pydantic); column specs are checked by the compiler below --------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _column_shorthand(data: Any) -> Any:
    return {"column": data} if isinstance(data, str) else data


class VersionColumnConfig(_Strict):
    """``version_column``: a column name, or ``{ column, unit }`` for integer instants."""

    column: str
    unit: TimeUnit = TimeUnit.US
    """Unit of plain integer values (``timestamp`` columns are decoded whatever this says)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _column_shorthand(data)


class SoftDeleteConfig(_Strict):
    """``soft_delete``: which column value marks a row as deleted."""

    column: str
    when: Literal["not_null", "true", "false"] | None = None
    equals: Any = None
    """A value, or a list of values, that mark the row deleted (compared as text)."""

    @model_validator(mode="after")
    def _one_condition(self) -> SoftDeleteConfig:
        if (self.when is None) == (self.equals is None):
            raise ValueError('set exactly one of when ("not_null", "true", "false") or equals')
        if self.equals is not None:
            values = self.equals if isinstance(self.equals, list) else [self.equals]
            if not values or not all(isinstance(v, str | int | bool) for v in values):
                raise ValueError(
                    "equals must be a string, an integer, a boolean, or a list of them"
                )
        return self


class TableMappingConfig(_Strict):
    """The mapping keys of one ``[[sources.tables]]`` entry (capture reads the others)."""

    table: str
    set_replica_identity_full: bool | None = None
    version_column: VersionColumnConfig | None = None
    soft_delete: SoftDeleteConfig | None = None
    identifiers: dict[str, Any] = Field(default_factory=dict)
    fields: dict[str, Any] = Field(default_factory=dict)


class _SourceMappingConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    tables: list[TableMappingConfig] = Field(default_factory=list)


class IdentityTypeConfig(_Strict):
    """``[identity.<type>]``: how values of one identifier type are normalised and limited.

    Keys left out take :class:`IdentifierType`'s defaults (``normalize = ["trim"]``, the
    common placeholder values blocked, no limit).
    """

    normalize: list[str] | None = None
    blocked: list[str] | None = None
    max_per_profile: int | None = Field(default=None, ge=1)


class _MappingFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    sources: list[_SourceMappingConfig] = Field(min_length=1)
    identity: dict[str, IdentityTypeConfig] = Field(default_factory=dict)


# --- compiling column specs -------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SPEC_KEYS = frozenset({"column", "columns", "transform", "on_invalid", "type"})


def key_path(*parts: str | int) -> str:
    """A TOML-style key path: ``key_path("sources", 1, "fields", "loyalty.teir")`` →
    ``sources[1].fields."loyalty.teir"``. A part may itself be a path built by this function."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        bare = _BARE_KEY.fullmatch(part) or (out == "" and part)
        text = part if bare else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out += f".{text}" if out else text
    return out


def _unquote(column: str) -> str:
    if len(column) >= 2 and column[0] == column[-1] == '"':
        return column[1:-1].replace('""', '"')
    return column


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one field path (or one identifier spec) is read: columns → chain → final form."""

    columns: tuple[str, ...]
    multi: bool
    chain: Chain | None  # None when the spec names no transform
    final: Callable[[Any], Any] | None
    lenient: bool  # on_invalid = "null"
    final_label: str  # names the last step in errors: "as timestamp"
    chain_key: str  # equal for specs that run the same chain on the same columns


def _compile_spec(
    raw: Any, kind: ValueKind | None, where: str, problems: list[tuple[str, str]]
) -> tuple[_Plan, str | None] | None:
    """Check and compile one column spec; ``kind`` is ``None`` for identifiers (returns ``type``)."""
    spec = {"column": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, dict):
        problems.append((where, "must be a column name or a table with column or columns"))
        return None
    column, columns = spec.get("column"), spec.get("columns")
    id_type, on_invalid = spec.get("type"), spec.get("on_invalid", "reject")
    problem: tuple[str, str] | None = None
    if (column is None) == (columns is None):
        problem = (where, "set exactly one of column or columns")
    elif column is not None and not isinstance(column, str):
        problem = (key_path(where, "column"), "must be a column name")
    elif columns is not None and (
        not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns)
    ):
        problem = (key_path(where, "columns"), "must be a non-empty list of column names")
    elif on_invalid not in ("reject", "null"):
        problem = (key_path(where, "on_invalid"), 'must be "reject" or "null"')
    elif id_type is not None and (kind is not None or not isinstance(id_type, str)):
        problem = (key_path(where, "type"), "only identifiers have a type (a declared type's name)")
    if problem is not None:
        problems.append(problem)
        return None
    options = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
    try:
        chain, chain_used = compile_chain(spec.get("transform"), options)
        final = field_writer(kind, options) if kind is not None else None
    except ValueError as exc:
        problems.append((where, str(exc)))
        return None
    used = set(chain_used)
    if kind is not None:
        used |= writer_options(kind) & set(options)
    unknown = sorted(set(options) - used)
    if unknown:
        known = sorted(known_options(kind) | _SPEC_KEYS - {"type"})
        problems.append(
            (key_path(where, unknown[0]), f"unknown option{_did_you_mean(unknown[0], known)}")
        )
        return None
    names = set(chain.names)
    if kind not in (None, ValueKind.LIST, ValueKind.ANY):
        if columns is not None and not names & COMBINING_TRANSFORMS:
            problems.append(
                (where, "several columns need a transform that combines them (concat, full_name)")
            )
            return None
        if "each" in names:
            problems.append((where, f"each gives a list, and this field holds one {kind}"))
            return None
    names_given: list[str] = [column] if isinstance(column, str) else list(columns or ())
    cols = tuple(_unquote(c) for c in names_given)
    label = f"as {kind}" if kind is not None else "identifier"
    chain_options = sorted((k, repr(v)) for k, v in options.items() if k in chain_used)
    chain_key = repr((cols, spec.get("transform"), chain_options))
    plan = _Plan(
        cols, columns is not None, chain or None, final, on_invalid == "null", label, chain_key
    )
    return plan, id_type


# --- running a table's mapping ----------------------------------------------------------------

_NOT_RUN = object()


def _evaluate(plan: _Plan, row: RowReader, chained: dict[str, Any]) -> Any:
    if plan.multi:
        raw: Any = [row.get(c) for c in plan.columns]
        if any(v is UNAVAILABLE for v in raw):
            return UNAVAILABLE
    else:
        raw = row.get(plan.columns[0])
        if raw is UNAVAILABLE:
            return UNAVAILABLE
    value = raw
    try:
        if plan.chain is not None:
            # A field and an identifier often run the same chain on the same column (the phone):
            # run it once per event.
            value = chained.get(plan.chain_key, _NOT_RUN)
            if value is _NOT_RUN:
                value = plan.chain(raw)
                chained[plan.chain_key] = value
        return value if plan.final is None else plan.final(value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        if plan.lenient:
            return None
        if isinstance(exc, TransformError):
            transform, reason, rejected = exc.transform or plan.final_label, exc.reason, exc.value
        else:  # the final conversion (debezium_values) raises plain ValueErrors
            transform, reason, rejected = plan.final_label, str(exc), value
        raise ColumnError(", ".join(plan.columns), transform, reason, rejected) from None


def _identifier_text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _match_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    return str(value)


@dataclass(frozen=True, slots=True)
class _SoftDelete:
    column: str
    when: str | None
    equals: frozenset[str]

    def applies(self, row: RowReader) -> bool:
        value = row.get(self.column)
        # A NULL flag marks nothing; an unavailable one (only long text is TOASTed) neither.
        if value is None or value is UNAVAILABLE:
            return False
        if self.when == "not_null":
            return True
        if self.when is None:
            return _match_text(value) in self.equals
        try:
            return to_bool(value) is (self.when == "true")
        except ValueError as exc:
            raise ColumnError(self.column, "soft_delete", str(exc), value) from None


class TableMapping:
    """The compiled mapping of one source table; :meth:`map_event` runs once per change event."""

    __slots__ = (
        "_decoders",
        "_fields",
        "_identifiers",
        "_soft_delete",
        "_table",
        "_version",
        "table",
    )

    def __init__(
        self,
        table: TableName,
        fields: Sequence[tuple[str, _Plan]],
        identifiers: Sequence[tuple[_Plan, IdentifierType]],
        version: VersionColumnConfig | None,
        soft_delete: _SoftDelete | None,
    ) -> None:
        self.table = table
        """The table, as configured."""
        self._table = str(table)
        self._fields = tuple(fields)
        self._identifiers = tuple(identifiers)
        self._version = version
        self._soft_delete = soft_delete
        # Decoders for events with schemas, per column. Instance state, not a global: two threads
        # racing on it at worst build the same decoder twice.
        self._decoders: DecoderMemo = {}

    def map_event(self, source: str, event: DecodedEvent) -> SourceRecord:
        """Map one change event of this table to the record image it leaves behind.

        Creates, updates and snapshot reads give a live record from ``after`` (deleted if
        ``soft_delete`` matches); deletes and tombstones give a deleted record. A tombstone has
        no source position (0): it never supersedes the delete before it.

        Args:
            source: The source's name (``crm``), as in provenance.
            event: The decoded event.

        Raises:
            MappingError: A column is missing or a value cannot be decoded or transformed (the
                message names the source, table, key, column, transform and value); or the event
                is a truncate, which concerns the whole table and is for the caller to handle.
        """
        table = self._table
        if event.op == "t":
            raise MappingError(
                "a truncate empties the whole table; it maps to no one record",
                source=source,
                table=table,
            )
        if event.key is None:
            raise MappingError(
                "the event has no key (the table needs a primary key)", source=source, table=table
            )
        key = RecordKey(source, table, canonical_json(event.key))
        if event.op is None:
            return SourceRecord(key, deleted=True)
        commit_time_us = _commit_time_us(event)
        position = event.lsn or 0
        try:
            if event.op == "d" or event.after is None:
                return SourceRecord(
                    key,
                    version=self._deleted_version(event),
                    commit_time_us=commit_time_us,
                    position=position,
                    deleted=True,
                )
            row = RowReader(event.after, event.before, event.row_schema, self._decoders)
            version = None if self._version is None else self._read_version(row)
            if self._soft_delete is not None and self._soft_delete.applies(row):
                return SourceRecord(
                    key,
                    version=version,
                    commit_time_us=commit_time_us,
                    position=position,
                    deleted=True,
                )
            chained: dict[str, Any] = {}
            fields = {path: _evaluate(plan, row, chained) for path, plan in self._fields}
            identifiers: set[Identifier] = set()
            for plan, id_type in self._identifiers:
                self._add_identifiers(plan, id_type, row, identifiers, fields, chained)
        except ColumnError as exc:
            raise MappingError(
                exc.reason,
                source=source,
                table=table,
                key=key.key,
                column=exc.column,
                transform=exc.step,
                value=exc.value,
            ) from None
        return SourceRecord(key, fields, frozenset(identifiers), version, commit_time_us, position)

    @staticmethod
    def _add_identifiers(
        plan: _Plan,
        id_type: IdentifierType,
        row: RowReader,
        out: set[Identifier],
        fields: dict[str, Any],
        chained: dict[str, Any],
    ) -> None:
        value = _evaluate(plan, row, chained)
        if value is UNAVAILABLE:
            fields[UNAVAILABLE_IDENTIFIERS_PREFIX + id_type.name] = UNAVAILABLE
            return
        for item in value if isinstance(value, list) else (value,):
            try:
                normalized = normalize_identifier(id_type, _identifier_text(item))
            except TypeError as exc:
                raise ColumnError(
                    ", ".join(plan.columns), f"identifier {id_type.name}", str(exc), item
                ) from None
            if normalized is not None:
                out.add(Identifier(id_type.name, normalized))

    def _deleted_version(self, event: DecodedEvent) -> int | None:
        if self._version is None or event.before is None:
            return None
        try:
            return self._read_version(
                RowReader(event.before, None, event.row_schema, self._decoders)
            )
        except ColumnError:
            # A key-only old row (REPLICA IDENTITY DEFAULT) or an odd value: a deleted record's
            # version orders nothing (it has no fields), so the delete must not fail over it.
            return None

    def _read_version(self, row: RowReader) -> int | None:
        assert self._version is not None
        column = self._version.column
        value = row.get(column)
        try:
            return to_epoch_micros(value, self._version.unit)
        except ValueError as exc:
            raise ColumnError(column, "version", str(exc), value) from None


def _commit_time_us(event: DecodedEvent) -> int:
    source = event.source
    ts_us = source.get("ts_us")
    if isinstance(ts_us, int):
        return ts_us
    ts_ms = source.get("ts_ms", event.ts_ms)
    return ts_ms * 1000 if isinstance(ts_ms, int) else 0


def fill_unavailable(record: SourceRecord, previous: SourceRecord | None) -> SourceRecord:
    """Replace a record's :data:`UNAVAILABLE` markers with the stored image's values.

    The store calls this with the record's stored image before it uses a mapped record. A field
    marked unavailable takes the previous image's value (or stays absent when there is none); an
    identifier type marked unavailable keeps the previous image's identifiers of that type in
    addition to the new ones (the column that was not sent did not change).

    Args:
        record: A freshly mapped record.
        previous: The stored image of the same record, or ``None``.

    Returns:
        ``record`` itself when it has no markers, else a copy without them.
    """
    marked = [path for path, value in record.fields.items() if value is UNAVAILABLE]
    if not marked:
        return record
    fields = {path: value for path, value in record.fields.items() if value is not UNAVAILABLE}
    identifiers = set(record.identifiers)
    if previous is not None and not previous.deleted:
        for path in marked:
            if path.startswith(UNAVAILABLE_IDENTIFIERS_PREFIX):
                kept = path[len(UNAVAILABLE_IDENTIFIERS_PREFIX) :]
                identifiers.update(i for i in previous.identifiers if i.type == kept)
            elif path in previous.fields:
                fields[path] = previous.fields[path]
    return dataclasses.replace(record, fields=fields, identifiers=frozenset(identifiers))


# --- the whole configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class MappingConfig:
    """Every table's compiled mapping and the declared identifier types.

    Attributes:
        identity_types: ``[identity.<type>]`` sections by type name.
        tables: ``(source name, table)`` → its mapping.
    """

    identity_types: Mapping[str, IdentifierType]
    tables: Mapping[tuple[str, TableName], TableMapping]
    _topics: dict[str, tuple[str, TableMapping]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        topics = {f"{s}.{t.schema}.{t.name}": (s, m) for (s, t), m in self.tables.items()}
        object.__setattr__(self, "_topics", topics)

    def for_topic(self, topic: str) -> tuple[str, TableMapping] | None:
        """The source name and table mapping of a topic ``<source>.<schema>.<table>``, if mapped."""
        return self._topics.get(topic)


def load_mapping_config(path: str | Path) -> MappingConfig:
    """Read a TOML config file and compile its mapping (``env:`` references are resolved first).

    Raises:
        ConfigError: The file cannot be read, or any mapping key is invalid (all problems listed).
    """
    return parse_mapping_config(read_config_file(path), file=str(path))


def parse_mapping_config(data: Mapping[str, Any], file: str | None = None) -> MappingConfig:
    """Validate and compile the mapping keys and ``[identity.*]`` of already-parsed config data.

    Raises:
        ConfigError: Every problem found, each with its key path.
    """
    try:
        model = _MappingFile.model_validate(data)
    except ValidationError as exc:
        paths = [key_path(*error["loc"]) for error in exc.errors()]
        messages = [message for _, message in validation_problems(exc)]
        raise ConfigError(file, list(zip(paths, messages, strict=True))) from None
    problems: list[tuple[str, str]] = []
    types: dict[str, IdentifierType] = {}
    for name, section in model.identity.items():
        try:
            given = section.model_dump(exclude_none=True)
            types[name] = IdentifierType(name, **{k: _tuple(v) for k, v in given.items()})
        except ValueError as exc:
            problems.append(
                (key_path("identity", name), str(exc).removeprefix(f"identifier type {name!r}: "))
            )
    tables: dict[tuple[str, TableName], TableMapping] = {}
    for i, source in enumerate(model.sources):
        for j, table in enumerate(source.tables):
            where = key_path("sources", i, "tables", j)
            compiled = _compile_table(table, types, set(model.identity), where, problems)
            if compiled is not None:
                tables[(source.name, compiled.table)] = compiled
    if problems:
        raise ConfigError(file, problems)
    return MappingConfig(types, tables)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _compile_table(
    config: TableMappingConfig,
    types: Mapping[str, IdentifierType],
    declared: set[str],
    where: str,
    problems: list[tuple[str, str]],
) -> TableMapping | None:
    before = len(problems)
    try:
        table = TableName.parse(config.table)
    except ValueError as exc:
        problems.append((key_path(where, "table"), str(exc)))
    fields: list[tuple[str, _Plan]] = []
    for path, raw in config.fields.items():
        spec_where = key_path(where, "fields", path)
        problem = path_problem(path)
        if problem is not None:
            problems.append((spec_where, problem))
            continue
        compiled = _compile_spec(raw, kind_of(path), spec_where, problems)
        if compiled is not None:
            fields.append((path, compiled[0]))
    identifiers: list[tuple[_Plan, IdentifierType]] = []
    for label, raw in config.identifiers.items():
        specs = raw if isinstance(raw, list) else [raw]
        if not specs:
            problems.append((key_path(where, "identifiers", label), "an empty list maps nothing"))
        for n, spec in enumerate(specs):
            spec_where = key_path(where, "identifiers", label)
            spec_where += f"[{n}]" if isinstance(raw, list) else ""
            compiled = _compile_spec(spec, None, spec_where, problems)
            if compiled is None:
                continue
            name = compiled[1] or label
            if name in types:
                identifiers.append((compiled[0], types[name]))
            elif name not in declared:  # a declared but invalid type is reported at its section
                hint = _did_you_mean(name, list(declared))
                problems.append(
                    (
                        spec_where,
                        f"unknown identifier type {name!r}{hint}; declare it as [identity.{name}]",
                    )
                )
    soft = config.soft_delete
    soft_delete = (
        None
        if soft is None
        else _SoftDelete(
            _unquote(soft.column),
            soft.when,
            frozenset(
                _match_text(v)
                for v in (soft.equals if isinstance(soft.equals, list) else [soft.equals])
            ),
        )
    )
    version = config.version_column
    if version is not None:
        version = version.model_copy(update={"column": _unquote(version.column)})
    if len(problems) > before:
        return None
    return TableMapping(table, fields, identifiers, version, soft_delete)
