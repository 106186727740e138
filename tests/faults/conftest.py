"""Fixtures of the fault suite: the demo's source databases, seeded, and a fresh store."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from unified_profile.server.devstack import EmbeddedPostgres

from .support import DemoSources


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def seed() -> Iterator[int]:
    """The test's random seed (``UP_FAULT_SEED`` replays one); printed when the test fails."""
    value = int(os.environ.get("UP_FAULT_SEED") or random.randrange(1_000_000))
    print(f"fault seed: {value} (rerun with UP_FAULT_SEED={value})")
    yield value


@pytest.fixture
def demo_sources(new_database, seed) -> DemoSources:
    """The demo's CRM and loyalty databases on the session's PostgreSQL, 400 people."""
    return DemoSources.create(new_database("crm"), new_database("loyalty"), 400, seed)


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own, for faults that would reach the session's server
    (a restart, a server-wide setting). Outside pytest's base temp, as the session's."""
    root = Path(tempfile.mkdtemp(prefix="up-fault-postgres-"))
    server = EmbeddedPostgres(root / "data", settings={"fsync": "off"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
