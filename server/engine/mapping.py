"""Mapping: one Debezium change event of a configured table → one :class:`SourceRecord`.

A table's mapping is compiled once from the config (:mod:`.mapping_config` validates the keys and
builds a :class:`TableMapping` per ``[[sources.tables]]`` entry from the pieces defined here);
:meth:`TableMapping.map_event` then runs per event with no validation left.

**Unchanged TOAST.** A ``__debezium_unavailable_value`` is never a value. The mapping reads the
column from ``before`` when the event has it there (``REPLICA IDENTITY FULL`` logs the whole old
row, detoasted); otherwise the record's ``fields`` hold :data:`UNAVAILABLE` for each affected path,
and ``identifiers.<type>`` for an affected identifier type. The store must call
:func:`fill_unavailable` with the stored image before using the record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from unified_profile.cdc.envelope import DecodedEvent
from unified_profile.cdc.identifiers import TableName

from .debezium_values import (
    UNAVAILABLE,
    ColumnError,
    DecoderMemo,
    MissingColumn,
    RowReader,
    TimeUnit,
    to_epoch_micros,
)
from .identity import IdentifierType, normalize_identifier
from .profile_paths import to_bool
from .records import Identifier, RecordKey, SourceRecord, canonical_json
from .transforms import Chain, TransformError, shown_value

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_IDENTIFIERS_PREFIX",
    "ColumnPlan",
    "MappingError",
    "SoftDeleteRule",
    "TableMapping",
    "VersionColumn",
    "fill_unavailable",
    "match_text",
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
        missing_column: The column is not in the event at all (the source table was changed
            under the mapping), rather than holding a value the mapping rejects.
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
        missing_column: bool = False,
    ) -> None:
        self.reason, self.source, self.table, self.key = reason, source, table, key
        self.column, self.transform, self.value = column, transform, value
        self.missing_column = missing_column
        parts = [f"{source}/{table}"]
        if key is not None:
            parts.append(f"key {key}")
        if column is not None:
            parts.append(f"column {column!r}")
        if transform is not None:
            parts.append(f"transform {transform}")
        # An absent column has no value to show.
        detail = f" (value {shown_value(value)})" if column is not None and not missing_column else ""
        self.without_value = f"{', '.join(parts)}: {reason}"
        """The message without the rejected value (which may be personal data), for logs."""
        super().__init__(f"{self.without_value}{detail}")


# --- compiled pieces (built by mapping_config) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How one field path (or one identifier spec) is read: columns → chain → final form.

    Built by :mod:`.mapping_config` when it compiles a column spec.
    """

    columns: tuple[str, ...]
    multi: bool
    chain: Chain | None  # None when the spec names no transform
    final: Callable[[Any], Any] | None
    lenient: bool  # on_invalid = "null"
    final_label: str  # names the last step in errors: "as timestamp"
    chain_key: str  # equal for specs that run the same chain on the same columns


@dataclass(frozen=True, slots=True)
class VersionColumn:
    """A compiled ``version_column``: the column (unquoted) and the unit of its integer values."""

    column: str
    unit: TimeUnit
    """Unit of plain integer values (``timestamp`` columns are decoded whatever this says)."""


# --- running a table's mapping ----------------------------------------------------------------

_NOT_RUN = object()


def _evaluate(plan: ColumnPlan, row: RowReader, chained: dict[str, Any]) -> Any:
    if plan.multi:
        raw: Any = [row.get(c) for c in plan.columns]
        # `in` without a generator; no column value compares equal to the marker but itself.
        if UNAVAILABLE in raw:
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


def match_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    return str(value)


@dataclass(frozen=True, slots=True)
class SoftDeleteRule:
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
            return match_text(value) in self.equals
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
        fields: Sequence[tuple[str, ColumnPlan]],
        identifiers: Sequence[tuple[ColumnPlan, IdentifierType]],
        version: VersionColumn | None,
        soft_delete: SoftDeleteRule | None,
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
                missing_column=isinstance(exc, MissingColumn),
            ) from None
        return SourceRecord(key, fields, frozenset(identifiers), version, commit_time_us, position)

    @staticmethod
    def _add_identifiers(
        plan: ColumnPlan,
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
