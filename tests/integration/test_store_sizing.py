"""Starting on a store whose indexes outgrow its server's shared_buffers warns the operator."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from unified_profile.server.config import load_service_config
from unified_profile.server.devstack import EmbeddedPostgres
from unified_profile.server.ingest import service as service_module
from unified_profile.server.ingest.service import open_store
from unified_profile.server.store import migrate

from .log_support import LogRecorder

pytestmark = pytest.mark.integration

CONFIG = """
[store]
dsn = "{dsn}"

[identity.email]

[[sources]]
name = "crm"
dsn = "dbname=unused"

[[sources.tables]]
table = "public.customers"
identifiers = {{ email = "email" }}
"""

# ~5 MB of identifier indexes: more than the small server's buffers, far less than the default.
_IDENTIFIERS = """
INSERT INTO up_record_identifiers (type, value, source, table_name, record_key)
SELECT 'email', 'person' || g || '@example.com', 'crm', 'public.customers', '{"id":' || g || '}'
FROM generate_series(1, 20000) AS g
"""

# ~4 MB of change-log indexes: a long history, which only grows at its end.
_HISTORY = """
INSERT INTO up_change_log (sequence, profile_id, kind, changes, related, cause)
SELECT g, 'p_' || g, 'UPDATED', '[]', '[]', '{}' FROM generate_series(1, 60000) AS g
"""


def _start_warnings(
    tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch, rows: str = _IDENTIFIERS
) -> list[dict]:
    migrate.upgrade(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(rows)
    path = tmp_path / "service.toml"
    path.write_text(CONFIG.format(dsn=dsn))
    recorder = LogRecorder()
    monkeypatch.setattr(service_module, "log", recorder)
    open_store(load_service_config(path)).close()
    return [w for w in recorder.warnings if w["event"] == "store.undersized"]


def test_a_store_outgrowing_shared_buffers_is_reported_at_start(tmp_path, monkeypatch):
    server = EmbeddedPostgres(tmp_path / "pg", settings={"fsync": "off", "shared_buffers": "2MB"})
    with server:
        warnings = _start_warnings(tmp_path, server.create_database("small"), monkeypatch)
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning["shared_buffers_mib"] == 2
    assert warning["index_mib"] >= 4
    assert "shared_buffers" in warning["advice"]
    assert "Running in production" in warning["advice"]


def test_a_long_change_log_alone_is_no_reason_to_warn(tmp_path, monkeypatch):
    server = EmbeddedPostgres(tmp_path / "pg", settings={"fsync": "off", "shared_buffers": "2MB"})
    with server:
        dsn = server.create_database("history")
        assert _start_warnings(tmp_path, dsn, monkeypatch, rows=_HISTORY) == []


def test_a_store_that_fits_starts_without_the_warning(new_database, tmp_path, monkeypatch):
    # The suite's server runs with PostgreSQL's default 128 MB.
    assert _start_warnings(tmp_path, new_database("fits"), monkeypatch) == []
