"""Re-syncing what drifted through the normal apply path.

Each drifted record is applied as a forced image: its source image (missing and stale records), a
deleted image (orphaned records), or its own stored image (records of a drifted profile, which
recomputes that profile). Positions stay as stored, so any newer event still in flight applies
over the repair as it would have over the original.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from ..config import ServiceConfig
from ..engine.records import SourceRecord
from ..ingest.applier import IncomingRecord, ProfileApplier
from ..store.profile_store import ProfileStore
from .drift import Report

log = structlog.get_logger(__name__)

_BATCH = 500


def repair(config: ServiceConfig, store: ProfileStore, report: Report) -> int:
    """Apply the fixes for ``report``; returns the change-log entries they appended."""
    applier = ProfileApplier(config.mapping.identity_types, config.rules)
    appended = 0
    fixes = list(_fixes(store, report))
    for start in range(0, len(fixes), _BATCH):
        chunk = fixes[start : start + _BATCH]
        stored = store.records([record.key for record in chunk])
        incoming = [
            IncomingRecord(
                _at_stored_position(record, stored[record.key].record.position)
                if record.key in stored
                else record,
                {"source": record.key.source, "table": record.key.table, "key": record.key.key,
                 "op": "reconcile"},
                force=True,
            )
            for record in chunk
        ]
        with store.batch() as batch:
            appended += len(applier.apply(batch, incoming))
    log.info("reconcile.repaired", records=len(fixes), profile_changes=appended)
    return appended


def _fixes(store: ProfileStore, report: Report) -> Iterator[SourceRecord]:
    for table in report.tables:
        for drift in table.drift:
            if drift.expected is not None:
                yield drift.expected
            else:
                yield SourceRecord(drift.key, deleted=True)
    # A drifted profile is recomputed by re-applying one of its records as stored.
    for drifted in report.profile_drift:
        keys = store.profile_record_keys(drifted.profile_id)
        if keys:
            found = store.records([min(keys)])
            yield from (s.record for s in found.values())


def _at_stored_position(record: SourceRecord, position: int) -> SourceRecord:
    return SourceRecord(
        record.key,
        record.fields,
        record.identifiers,
        record.version,
        record.commit_time_us,
        position,
        record.deleted,
    )

