"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore


@pytest.fixture
def store(new_database) -> Iterator[ProfileStore]:
    """A :class:`ProfileStore` on a fresh, migrated database (a test module may define its own)."""
    dsn = new_database("store")
    migrate.upgrade(dsn)
    store = ProfileStore.connect(dsn)
    yield store
    store.close()
