"""Shared fixtures: a real PostgreSQL and a real Kafka-protocol broker for the whole session.

By default both are started here (no Docker needed): an :class:`EmbeddedPostgres` and a
:class:`TansuBroker`, each stopped at the end of the session. To use existing services::

    UP_TEST_PG_DSN="host=127.0.0.1 port=5432 user=postgres"   # a superuser, wal_level=logical
    UP_TEST_KAFKA_BOOTSTRAP="127.0.0.1:9092"

A service that cannot be started (or an external one that is unusable) makes the tests
that need it error with the cause; nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from unified_profile.server.devstack import EmbeddedPostgres, TansuBroker

_IDENT_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")


def _unique(prefix: str, max_len: int = 63) -> str:
    """``<prefix>_<random hex>``: lowercase, a valid unquoted SQL identifier and topic name."""
    prefix = prefix.lower()
    if not _IDENT_PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r} must match {_IDENT_PREFIX.pattern}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    if len(name) > max_len:
        raise ValueError(f"prefix {prefix!r} is too long for a {max_len}-character name")
    return name


# -- PostgreSQL -------------------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    """The session's PostgreSQL server.

    Attributes:
        admin_dsn: DSN of a superuser, connected to the ``postgres`` database.
        embedded: The :class:`EmbeddedPostgres` started for the session, or ``None`` when
            ``UP_TEST_PG_DSN`` points at an external server (tests that stop or restart the
            server skip then).
    """

    admin_dsn: str
    embedded: EmbeddedPostgres | None = None

    def dsn_for(self, dbname: str) -> str:
        """The admin DSN with the database replaced by ``dbname``."""
        return make_conninfo(self.admin_dsn, dbname=dbname)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("UP_TEST_PG_DSN")
    if external:
        admin_dsn = make_conninfo(external, dbname="postgres")
        try:
            with psycopg.connect(admin_dsn, connect_timeout=10) as conn:
                row = conn.execute(
                    "SELECT current_setting('wal_level'), rolsuper FROM pg_roles "
                    "WHERE rolname = current_user"
                ).fetchone()
        except psycopg.Error as exc:
            raise RuntimeError(f"UP_TEST_PG_DSN: cannot connect: {exc}") from exc
        if row is None or row[0] != "logical" or not row[1]:
            raise RuntimeError(
                f"UP_TEST_PG_DSN must name a superuser on a server with wal_level=logical; "
                f"got wal_level={row[0] if row else '?'}, superuser={row[1] if row else '?'}"
            )
        yield PgServer(admin_dsn=admin_dsn)
        return

    # Not under pytest's base temp: a pytest session started meanwhile (a second suite on the
    # same machine) prunes older sessions' base temps, and would delete the running cluster.
    root = Path(tempfile.mkdtemp(prefix="up-test-postgres-"))
    server = EmbeddedPostgres(root / "data", settings={"fsync": "off"})
    server.start()
    try:
        yield PgServer(admin_dsn=server.dsn(), embedded=server)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class DatabaseFactory:
    """Creates uniquely named databases; :meth:`drop_all` removes them with their slots.

    Call it: ``dsn = new_database("crm")``.
    """

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.names: list[str] = []

    def __call__(self, prefix: str = "t") -> str:
        name = _unique(prefix)
        with psycopg.connect(self.server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return self.server.dsn_for(name)

    def drop_all(self) -> None:
        """Drop every database created so far: first end the sessions holding replication
        slots in it and drop those slots, then ``DROP DATABASE ... WITH (FORCE)``."""
        with psycopg.connect(self.server.admin_dsn, autocommit=True) as conn:
            while self.names:
                name = self.names[-1]
                self._drop_slots(conn, name)
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                self.names.pop()

    @staticmethod
    def _drop_slots(conn: psycopg.Connection[TupleRow], dbname: str) -> None:
        # A slot in use cannot be dropped; a client may reconnect between the two steps,
        # so repeat until no slot is left.
        for _ in range(10):
            conn.execute(
                "SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL",
                (dbname,),
            )
            slots = [
                r[0]
                for r in conn.execute(
                    "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)
                ).fetchall()
            ]
            if not slots:
                return
            for slot in slots:
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                except psycopg.errors.ObjectInUse:
                    pass  # reacquired meanwhile: terminate again on the next round
                except psycopg.errors.UndefinedObject:
                    pass  # a temporary slot that went away with its session
        raise RuntimeError(f"replication slots in database {dbname!r} keep being reacquired")


@pytest.fixture
def new_database(pg_server: PgServer) -> Iterator[DatabaseFactory]:
    """``new_database(prefix="t") -> dsn``: a fresh database, dropped after the test."""
    factory = DatabaseFactory(pg_server)
    yield factory
    factory.drop_all()


# -- Kafka ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker | None]:
    """The session's :class:`TansuBroker`, or ``None`` with ``UP_TEST_KAFKA_BOOTSTRAP``."""
    if os.environ.get("UP_TEST_KAFKA_BOOTSTRAP"):
        yield None
        return
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: TansuBroker | None) -> str:
    """``host:port`` of the session's Kafka-protocol broker."""
    if kafka_broker is None:
        return os.environ["UP_TEST_KAFKA_BOOTSTRAP"]
    return kafka_broker.bootstrap_servers


# -- names ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def unique_name() -> Callable[..., str]:
    """``unique_name(prefix="t") -> "t_3f2a..."``: a fresh lowercase identifier, valid as a
    topic, slot, publication, table or database name."""
    return _unique

