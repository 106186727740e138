"""Comparing the sources with the store."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from ..config import ServiceConfig
from ..engine.records import SourceRecord
from ..engine.survivorship import RuleSet, merge_fields
from ..ingest.mapper import ConfiguredMapper
from ..store import profile_document
from ..store.profile_store import ProfileStore, StoredProfile
from ..store.seen_records import seen_records
from .drift import ProfileDrift, RecordDrift, Report, TableReport, compare
from .source_rows import read_source

log = structlog.get_logger(__name__)

_PROFILE_PAGE = 1_000


def check(config: ServiceConfig, store: ProfileStore, batch_rows: int = 2_000) -> Report:
    """Read every source row and every profile; report what drifted.

    Raises:
        SourceError: A source is unreachable.
        StoreError: The store is unreachable.
    """
    report = Report()
    mapper = ConfiguredMapper(config.mapping)
    for source in config.capture.sources:
        tables: dict[str, TableReport] = {}
        # The keys seen go to the store, not to a set here: memory stays flat however large a
        # table is, and the orphans are one anti-join (see ..store.seen_records).
        with seen_records(store, source.name) as seen:
            for batch in read_source(source, mapper, batch_rows):
                table = tables.setdefault(batch.table, TableReport(source.name, batch.table))
                table.source_rows += len(batch.images) + len(batch.rejected)
                table.unmappable += batch.rejected
                stored = store.records([image.key for image in batch.images])
                seen.add(image.key for image in batch.images)
                for image in batch.images:
                    before = stored.get(image.key)
                    drift = compare(image, before.record if before else None)
                    if drift is not None:
                        table.drift.append(drift)
            for name, table in tables.items():
                table.drift += [RecordDrift("orphaned", key) for key in seen.unseen_live(name)]
                report.tables.append(table)
                log.info(
                    "reconcile.table_checked",
                    source=source.name,
                    table=name,
                    rows=table.source_rows,
                    missing=table.count("missing"),
                    stale=table.count("stale"),
                    orphaned=table.count("orphaned"),
                )
    _check_profiles(store, config.rules, report)
    return report


def _check_profiles(store: ProfileStore, rules: RuleSet, report: Report) -> None:
    after = ""
    while page := store.profiles_page(after, _PROFILE_PAGE):
        for profile, records in page:
            report.profiles_checked += 1
            paths = profile_differences(profile, [r.record for r in records], rules)
            if paths:
                report.profile_drift.append(ProfileDrift(profile.profile_id, paths))
        after = page[-1][0].profile_id


def profile_differences(
    profile: StoredProfile, records: Iterable[SourceRecord], rules: RuleSet
) -> tuple[str, ...]:
    """Field paths (and ``identifiers`` / ``record_count``) where a stored profile differs from a
    recompute over its records."""
    live = [r for r in records if not r.deleted]
    merged = profile_document.expand(profile_document.encode(merge_fields(live, rules)))
    stored = profile.fields  # built from the document on every access: once here
    differences = sorted(
        path for path in stored.keys() | merged.keys() if stored.get(path) != merged.get(path)
    )
    identifiers = sorted({(i.type, i.value) for r in live for i in r.identifiers})
    if sorted(tuple(pair) for pair in profile.identifiers) != identifiers:
        differences.append("identifiers")
    if profile.record_count != len(live):
        differences.append("record_count")
    return tuple(differences)

