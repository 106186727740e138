"""The change streamed at exactly a slot's consistent point is not taken for a redelivery.

Found by the store-restart test: with the store on another PostgreSQL cluster nothing else writes
WAL between the slot's creation and the first source write, so that write's change sits at the
snapshot's LSN. Ranked equal, the applier skipped it for good.
"""

from __future__ import annotations

from unified_profile.server.engine.mapping_config import parse_mapping_config
from unified_profile.server.engine.records import SourceRecord
from unified_profile.server.ingest.mapper import ConfiguredMapper

from ..unit.engine.test_mapping import LSN, SALLY, config, event


def test_a_snapshot_read_ranks_below_a_change_at_the_same_lsn() -> None:
    mapper = ConfiguredMapper(parse_mapping_config(config()))
    read = mapper.map_event(event("r", SALLY))
    change = mapper.map_event(event("u", {**SALLY, "first_name": "Sal"}, SALLY))
    assert isinstance(read, SourceRecord) and isinstance(change, SourceRecord)
    assert read.position < change.position == LSN
    # Still above every change streamed before the consistent point (WAL records are aligned).
    assert read.position > LSN - 8
