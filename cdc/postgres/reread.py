"""Reading one row again, by its event key, as the change event a snapshot would make of it.

For an event that could not be delivered when it happened (it was too large): the row as it is now
stands in for it. The row is found by encoding candidate rows exactly as capture does and comparing
their keys with the event's, so no key type needs decoding back into SQL; when every key column has
a type whose text form is the encoded value (integers, text, uuid), the server narrows the
candidates to that one row.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from ..config import SourceConfig
from ..envelope import ChangeEvent, SourceInfo, TableEventBuilder
from ..errors import SourceError
from ..identifiers import TableName
from ..model import TableShape
from ..type_encoding import EncodingOptions
from . import catalog
from .snapshot import SnapshotReader

# Rows held at once while looking for the key among candidates (all rows, when not narrowed).
_BATCH_ROWS = 5_000

# Types whose text output equals the JSON value capture encodes them as (str() of it).
_TEXT_COMPARABLE = frozenset(("int2", "int4", "int8", "text", "varchar", "uuid"))


def reread_row(
    source: SourceConfig, table: TableName, key: dict[str, Any], lsn: int
) -> ChangeEvent | None:
    """The row of ``table`` with this event key as a snapshot read (op ``r``) at ``lsn``.

    Returns:
        The event, or ``None`` when the source has no such row any more.

    Raises:
        SourceError: The source is unreachable or the read failed.
    """
    reader = SnapshotReader(source.dsn, None)
    try:
        conn = reader.connection
        shape = catalog.load_table_shape(conn, catalog.table_oid(conn, table))
        options = EncodingOptions(decimal_handling=source.decimal_handling)
        builder = TableEventBuilder(source.name, shape, options)
        now_us = int(time.time() * 1_000_000)
        info = SourceInfo(source.name, reader.database(), shape.schema, shape.name, now_us, lsn=lsn)
        found = None
        # Read to the end (no early return) so the COPY is finished before the transaction ends.
        for rows in reader.read_rows(shape, _BATCH_ROWS, _key_filter(shape, key)):
            for values in rows:
                image = builder.row(values)
                if found is None and builder.key_of(image) == key:
                    found = builder.event("r", None, image, info, now_us)
        return found
    except psycopg.Error as exc:
        raise SourceError(f"could not read {table} again from source {source.name!r}: {exc}") from exc
    finally:
        reader.close()


def _key_filter(shape: TableShape, key: dict[str, Any]) -> sql.Composable | None:
    """``key_column::text = 'value' AND …`` when every key column compares as text; else
    ``None`` (every row is a candidate)."""
    key_columns = [c for c in shape.columns if c.part_of_key]
    narrowable = all(
        shape.types[c.type_oid].name in _TEXT_COMPARABLE
        and isinstance(key.get(c.name), int | str)
        and not isinstance(key.get(c.name), bool)
        for c in key_columns
    )
    if not narrowable:
        return None
    return sql.SQL(" AND ").join(
        sql.SQL("{}::text = {}").format(sql.Identifier(c.name), sql.Literal(str(key[c.name])))
        for c in key_columns
    )
