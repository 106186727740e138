"""Reconciliation's orphan check: the keys it saw are noted in the store, not held in memory."""

from __future__ import annotations

import psycopg
import pytest

from unified_profile.server.engine.records import RecordKey
from unified_profile.server.store.seen_records import seen_records

pytestmark = pytest.mark.integration

CUSTOMERS = "crm.customers"
CASES = "crm.service_cases"


def _stored(store, source: str, table: str, key: str, *, deleted: bool = False) -> RecordKey:
    assert store.dsn is not None
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO up_source_records (source, table_name, record_key, profile_id, fields,"
            " identifiers, version, commit_time_us, position, deleted)"
            " VALUES (%s, %s, %s, NULL, '{}', '[]', NULL, 0, 1, %s)",
            (source, table, key, deleted),
        )
    return RecordKey(source, table, key)


def test_live_records_no_seen_key_names_are_the_orphans_in_key_order(store):
    seen_customer = _stored(store, "crm", CUSTOMERS, '{"customer_id":1}')
    orphan_b = _stored(store, "crm", CUSTOMERS, '{"customer_id":3}')
    orphan_a = _stored(store, "crm", CUSTOMERS, '{"customer_id":2}')
    _stored(store, "crm", CUSTOMERS, '{"customer_id":4}', deleted=True)  # not live: no orphan
    # The same key text in another table, or of another source, is another record.
    case = _stored(store, "crm", CASES, '{"customer_id":3}')
    _stored(store, "loyalty", CUSTOMERS, '{"customer_id":5}')

    with seen_records(store, "crm") as seen:
        seen.add([seen_customer])
        seen.add(iter([case, RecordKey("crm", CUSTOMERS, '{"customer_id":9}')]))
        assert seen.unseen_live(CUSTOMERS) == [orphan_a, orphan_b]
        assert seen.unseen_live(CASES) == []


def test_each_check_starts_from_nothing_seen(store):
    key = _stored(store, "crm", CUSTOMERS, '{"customer_id":1}')
    with seen_records(store, "crm") as seen:
        seen.add([key])
        assert seen.unseen_live(CUSTOMERS) == []
    # The next check may get the same pooled session back: what the last one saw is gone.
    with seen_records(store, "crm") as seen:
        assert seen.unseen_live(CUSTOMERS) == [key]
