"""The benchmark's records-per-profile figure times changes to a profile of the size it names."""

from __future__ import annotations

import pytest

from bench import apply_data, profile_records
from unified_profile.server.config import parse_service_config
from unified_profile.server.engine.records import Identifier
from unified_profile.server.store.profile_store import ProfileStore

pytestmark = pytest.mark.integration


def test_each_size_is_one_profile_of_that_many_records_that_took_every_change(new_database):
    dsn = new_database("records")
    names = apply_data.SourceNames.for_run("t")
    config = parse_service_config(
        apply_data.engine_config(
            dsn, "127.0.0.1:9", names, group_id="g", offsets_topic="t.offsets"
        ),
        "test",
    )

    results = profile_records.measure(dsn, config, names, (2, 7), changes=3)

    assert list(results) == ["2", "7"]
    assert all(r["changes"] == 3 and r["cpu_us_per_change"] > 0 for r in results.values())
    store = ProfileStore.connect(dsn)
    try:
        for person, size in ((1, 2), (2, 7)):
            profile_id = store.find_profile(Identifier("loyalty_id", f"M{person:08d}"))
            assert profile_id is not None
            found = store.get_profile(profile_id)
            assert found is not None
            profile = found[0]
            assert profile.record_count == size
            # The last of the timed changes is what the profile shows.
            points = profile.document["values"]["loyalty.points_balance"]
            assert points == 1_000 + 3
    finally:
        store.close()
