"""Seeded CRM workloads: a realistic ``customers`` table and the transactions written to it.

Everything random comes from ``random.Random(seed)``: the same seed and size give the same rows,
the same transaction sizes and the same insert/update mix, so two runs write identical WAL.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

COLUMNS = (
    "id",
    "full_name",
    "email",
    "country",
    "created_at",
    "updated_at",
    "lifetime_value",
    "marketing_opt_in",
    "attributes",
)

_DDL = """
CREATE TABLE {table} (
    id bigint PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL,
    country text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    lifetime_value numeric(12, 2) NOT NULL DEFAULT 0,
    marketing_opt_in boolean NOT NULL DEFAULT false,
    attributes jsonb NOT NULL DEFAULT '{{}}'
);
ALTER TABLE {table} REPLICA IDENTITY FULL;
"""

_UPDATE = """
UPDATE {table} AS c
SET email = v.email, updated_at = v.updated_at, lifetime_value = v.lifetime_value,
    marketing_opt_in = v.opt_in, attributes = v.attributes
FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::numeric[], %s::boolean[],
            %s::text[]::jsonb[]) AS v(id, email, updated_at, lifetime_value, opt_in, attributes)
WHERE c.id = v.id
"""

_FIRST = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farah", "Gus", "Hana", "Ivan", "José",
          "Kai", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Yuki")
_LAST = ("Smith", "García", "Müller", "Nakamura", "Okafor", "Rossi", "Novak", "Silva",
         "Johansson", "Kowalski", "Dubois", "Chen", "Patel", "O'Brien", "Haddad", "Larsen")
_DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "inbox.example.io")
_COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "ES", "IT", "NL", "SE", "PL", None)
_TIERS = ("bronze", "silver", "gold", "platinum")
_TAGS = ("newsletter", "vip", "churn-risk", "b2b", "mobile", "returning", "wholesale", "beta")
_CHANNELS = ("web", "store", "app", "partner", "import")
_EPOCH = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
_SPAN_S = 6 * 365 * 86_400


def create_table(conn: psycopg.Connection[Any], table: str) -> None:
    """Create the ``customers``-like table with ``REPLICA IDENTITY FULL``."""
    conn.execute(sql.SQL(_DDL).format(table=sql.Identifier(table)))


@dataclass(frozen=True)
class Transaction:
    """One transaction of the throughput workload.

    Attributes:
        kind: ``insert`` (rows as COPY text) or ``update`` (column arrays for ``unnest``).
        rows: How many rows it changes.
        copy_data: The COPY ``text`` payload of an insert.
        update_params: The ``unnest`` arrays of an update.
    """

    kind: Literal["insert", "update"]
    rows: int
    copy_data: bytes = b""
    update_params: tuple[list[Any], ...] = ()


class CustomerGenerator:
    """Seeded customer rows and changes to them."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def row(self, customer_id: int) -> tuple[Any, ...]:
        """A new customer, in :data:`COLUMNS` order (timestamps as ISO strings)."""
        rng = self._rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        created = self._timestamp()
        return (
            customer_id,
            f"{first} {last}",
            self._email(first, last, customer_id),
            rng.choice(_COUNTRIES),
            created,
            created,
            f"{rng.uniform(0, 5_000):.2f}",
            rng.random() < 0.4,
            json.dumps(self._attributes(), ensure_ascii=False),
        )

    def change(self, customer_id: int) -> tuple[Any, ...]:
        """New values for an existing customer: (id, email, updated_at, value, opt-in, attributes)."""
        rng = self._rng
        return (
            customer_id,
            self._email(rng.choice(_FIRST), rng.choice(_LAST), customer_id),
            self._timestamp(),
            f"{rng.uniform(0, 5_000):.2f}",
            rng.random() < 0.4,
            json.dumps(self._attributes(), ensure_ascii=False),
        )

    def _email(self, first: str, last: str, customer_id: int) -> str:
        local = f"{first}.{last}".lower().replace("'", "")
        return f"{local}{customer_id}@{self._rng.choice(_DOMAINS)}"

    def _timestamp(self) -> str:
        moment = _EPOCH + dt.timedelta(seconds=self._rng.uniform(0, _SPAN_S))
        return moment.isoformat()

    def _attributes(self) -> dict[str, Any]:
        rng = self._rng
        return {
            "tier": rng.choice(_TIERS),
            "tags": rng.sample(_TAGS, rng.randint(0, 3)),
            "loyalty_points": rng.randint(0, 250_000),
            "channel": rng.choice(_CHANNELS),
        }


def throughput_workload(
    changes: int, seed: int, min_rows: int = 100, max_rows: int = 1_000, update_share: float = 0.3
) -> list[Transaction]:
    """Transactions of ``min_rows``-``max_rows`` rows totalling exactly ``changes`` row changes.

    The first transaction inserts; after it, each transaction updates random existing customers
    with probability ``update_share`` and inserts new ones otherwise.
    """
    rng = random.Random(seed)
    rows = CustomerGenerator(seed + 1)
    out: list[Transaction] = []
    inserted = 0
    remaining = changes
    while remaining > 0:
        size = min(remaining, rng.randint(min_rows, max_rows))
        if inserted and rng.random() < update_share:
            ids = rng.sample(range(1, inserted + 1), min(size, inserted))
            changed = [rows.change(i) for i in ids]
            params = tuple(list(column) for column in zip(*changed, strict=True))
            out.append(Transaction("update", len(ids), update_params=params))
            remaining -= len(ids)
        else:
            new = [rows.row(inserted + 1 + i) for i in range(size)]
            out.append(Transaction("insert", size, copy_data=_copy_text(new)))
            inserted += size
            remaining -= size
    return out


def write_transaction(conn: psycopg.Connection[Any], table: str, tx: Transaction) -> None:
    """Run one workload transaction (the caller commits)."""
    with conn.cursor() as cur:
        if tx.kind == "insert":
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
            )
            with cur.copy(copy) as pipe:
                pipe.write(tx.copy_data)
        else:
            cur.execute(sql.SQL(_UPDATE).format(table=sql.Identifier(table)), tx.update_params)


def insert_statement(table: str) -> sql.Composed:
    """A single-row ``INSERT`` of every column (for the paced latency writer)."""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)),
    )


def _copy_text(rows: list[tuple[Any, ...]]) -> bytes:
    lines = ["\t".join(_copy_field(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def paced_writer_main(
    dsn: str, table: str, rate: float, first_id: int, rows: int, seed: int, go: Any, report: Any
) -> None:
    """Entry point of the latency writer process: insert ``rows`` rows, one per transaction.

    The rows get ids ``first_id, first_id + 1, …`` and are committed in that order.

    Row ``i`` is committed no earlier than ``i / rate`` seconds after ``go`` is set (when the
    writer falls behind it does not skip rows, it catches up). Sends back, through the ``report``
    pipe, the wall-clock time (``time.time()``) at which each commit returned.
    """
    import time

    generator = CustomerGenerator(seed)
    data = [generator.row(i) for i in range(first_id, first_id + rows)]
    statement = insert_statement(table)
    commit_times: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        report.send("ready")
        go.wait()
        started = time.perf_counter()
        for index, row in enumerate(data):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.execute(statement, row)
            commit_times.append(time.time())
    report.send(commit_times)
