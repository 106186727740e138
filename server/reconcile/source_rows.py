"""Reading every row of a source's configured tables and mapping it as ingest would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from unified_profile.cdc.config import SourceConfig
from unified_profile.cdc.envelope import SourceInfo, TableEventBuilder, decoded_from
from unified_profile.cdc.postgres import catalog
from unified_profile.cdc.postgres.snapshot import SnapshotReader
from unified_profile.cdc.type_encoding import EncodingOptions

from ..engine.records import SourceRecord
from ..ingest.mapper import ConfiguredMapper
from ..ingest.pipeline import MappingFailed


@dataclass(frozen=True, slots=True)
class MappedRows:
    """A batch of one table's rows as record images.

    Attributes:
        table: ``schema.table``.
        images: The images rows map to.
        rejected: ``(row key, reason)`` for rows the mapping rejects.
    """

    table: str
    images: list[SourceRecord]
    rejected: list[tuple[str, str]]


def read_source(
    source: SourceConfig, mapper: ConfiguredMapper, batch_rows: int = 2_000
) -> Iterator[MappedRows]:
    """Every row of ``source``'s tables, in one consistent snapshot, mapped in batches.

    A table with no rows still yields one empty batch (so it appears in the report).

    Raises:
        SourceError: The source is unreachable or a read failed.
    """
    reader = SnapshotReader(source.dsn, None)
    try:
        conn = reader.connection
        database = reader.database()
        options = EncodingOptions(decimal_handling=source.decimal_handling)
        for table in source.tables:
            shape = catalog.load_table_shape(conn, catalog.table_oid(conn, table.table))
            builder = TableEventBuilder(source.name, shape, options)
            info = SourceInfo(source.name, database, shape.schema, shape.name, ts_us=_now_us())
            name = f"{shape.schema}.{shape.name}"
            yield MappedRows(name, [], [])
            for rows in reader.read_rows(shape, batch_rows):
                images: list[SourceRecord] = []
                rejected: list[tuple[str, str]] = []
                for values in rows:
                    event = builder.event("r", None, builder.row(values), info, _now_us())
                    try:
                        mapped = mapper.map_event(decoded_from(event))
                    except MappingFailed as exc:
                        rejected.append((str(event.key), str(exc)))
                        continue
                    if isinstance(mapped, SourceRecord):
                        images.append(mapped)
                yield MappedRows(name, images, rejected)
    finally:
        reader.close()


def _now_us() -> int:
    return int(time.time() * 1_000_000)
