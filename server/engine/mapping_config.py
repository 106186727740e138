"""Mapping config: the mapping keys of ``[[sources.tables]]`` and ``[identity.*]``, validated and compiled.

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
key path and the problem. The result, a :class:`MappingConfig`, holds a
:class:`~.mapping.TableMapping` per table, whose :meth:`~.mapping.TableMapping.map_event` then runs
per event with no validation left.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unified_profile.cdc.config import read_config_file, validation_problems
from unified_profile.cdc.errors import ConfigError
from unified_profile.cdc.identifiers import TableName

from .debezium_values import TimeUnit
from .identity import IdentifierType
from .mapping import ColumnPlan, SoftDeleteRule, TableMapping, VersionColumn, match_text
from .profile_paths import ValueKind, field_writer, kind_of, path_problem, writer_options
from .transforms import COMBINING_TRANSFORMS, compile_chain, known_options

__all__ = ["MappingConfig", "load_mapping_config", "parse_mapping_config"]


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


def _compile_spec(
    raw: Any, kind: ValueKind | None, where: str, problems: list[tuple[str, str]]
) -> tuple[ColumnPlan, str | None] | None:
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
    plan = ColumnPlan(
        cols, columns is not None, chain or None, final, on_invalid == "null", label, chain_key
    )
    return plan, id_type


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
    fields: list[tuple[str, ColumnPlan]] = []
    for path, raw in config.fields.items():
        spec_where = key_path(where, "fields", path)
        problem = path_problem(path)
        if problem is not None:
            problems.append((spec_where, problem))
            continue
        compiled = _compile_spec(raw, kind_of(path), spec_where, problems)
        if compiled is not None:
            fields.append((path, compiled[0]))
    identifiers: list[tuple[ColumnPlan, IdentifierType]] = []
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
        else SoftDeleteRule(
            _unquote(soft.column),
            soft.when,
            frozenset(
                match_text(v)
                for v in (soft.equals if isinstance(soft.equals, list) else [soft.equals])
            ),
        )
    )
    version_config = config.version_column
    version = (
        None
        if version_config is None
        else VersionColumn(_unquote(version_config.column), version_config.unit)
    )
    if len(problems) > before:
        return None
    return TableMapping(table, fields, identifiers, version, soft_delete)
