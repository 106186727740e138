"""The end-to-end scenario's source writer: the demo's customer traffic, paced in row changes/s.

The workload is the one ``make demo`` and the fault suite run: a population from
:func:`~unified_profile.server.demo.generate_population` and the activities of a
:class:`~unified_profile.server.demo.TrafficModel` (purchases, redemptions, sign-ups, address
changes, consent revocations, complaints, tier upgrades, account links) on the CRM and loyalty
databases, both from the run's seed. The demo's simulator paces *activities*; a benchmark rate
is *source row changes* per second, so this writer counts the rows each statement changed and
commits the next activity no earlier than ``rows so far / rate`` seconds after the pass began. A
writer that falls behind catches up rather than skipping activities.

It runs in a process of its own (one for every pass of a transport: spawning it and generating
the population stay out of the measurements) and reports, per pass, the wall-clock times of its
first and last commits: changes are matched to their source commit by PostgreSQL's commit
timestamp, which the change log keeps in each change's cause.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import time
import traceback
from dataclasses import dataclass
from typing import Any

import psycopg

_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class WrittenPass:
    """What one paced pass wrote.

    Attributes:
        rows: Source rows changed (inserted, updated or deleted).
        transactions: Transactions committed.
        activities: Customer activities committed.
        failed: Activities that failed and were rolled back (skipped).
        first_commit: ``time.time()`` when the first transaction's commit returned.
        last_commit: ``time.time()`` when the last one's did.
    """

    rows: int
    transactions: int
    activities: int
    failed: int
    first_commit: float
    last_commit: float

    @property
    def achieved_rate(self) -> float | None:
        """Row changes per second between the first and the last commit."""
        span = self.last_commit - self.first_commit
        return (self.rows - 1) / span if span > 0 and self.rows > 1 else None


class TrafficWriter:
    """The writer process, given one paced pass at a time.

    Args:
        dsns: ``crm`` and ``loyalty`` database DSNs, seeded with the same population.
        people: The population's size.
        seed: Seeds the population (as seeded) and the traffic.
    """

    def __init__(self, dsns: dict[str, str], people: int, seed: int) -> None:
        self._conn, child_end = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=writer_main, args=(dsns, people, seed, child_end),
            name="bench-traffic-writer", daemon=True,
        )
        self._process.start()
        child_end.close()

    def write(self, rate: float, rows: int) -> WrittenPass:
        """Commit activities until ``rows`` source rows changed, at ``rate`` rows per second.

        Raises:
            RuntimeError: The writer failed or did not finish in time.
        """
        self._conn.send((rate, rows))
        if not self._conn.poll(120.0 + 3 * rows / rate):
            raise RuntimeError("the source writer did not finish")
        outcome = self._conn.recv()
        if isinstance(outcome, str):
            raise RuntimeError(f"the source writer failed:\n{outcome}")
        assert isinstance(outcome, WrittenPass)
        return outcome

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def writer_main(
    dsns: dict[str, str], people: int, seed: int, conn: multiprocessing.connection.Connection
) -> None:
    """Entry point of the writer process: one :class:`WrittenPass` per ``(rate, rows)`` received;
    ``None`` ends it. The traffic goes on from pass to pass (one model, one random stream)."""
    try:
        from unified_profile.server.demo import TrafficModel, generate_population

        model = TrafficModel(generate_population(people, seed), seed)
        with contextlib.ExitStack() as stack:
            databases = {
                name: stack.enter_context(psycopg.connect(dsn, autocommit=True))
                for name, dsn in dsns.items()
            }
            while (command := conn.recv()) is not None:
                rate, rows = command
                conn.send(_write_pass(model, databases, rate, rows))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(traceback.format_exc())
    finally:
        conn.close()


def _write_pass(
    model: Any, databases: dict[str, psycopg.Connection[Any]], rate: float, target_rows: int
) -> WrittenPass:
    rows = transactions = activities = failed = 0
    first = last = 0.0
    started = time.monotonic()
    while rows < target_rows:
        delay = started + rows / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        activity = next(model)
        try:
            for transaction in activity.transactions:
                database = databases[transaction.database]
                changed = 0
                with database.transaction():
                    for statement, params in transaction.statements:
                        changed += max(database.execute(statement, params).rowcount, 0)
                last = time.time()
                first = first or last
                rows += changed
                transactions += 1
        except psycopg.Error:
            # The model keeps the databases consistent when an activity is skipped (relative
            # updates); count it and go on, as the demo's simulator does.
            failed += 1
            continue
        activities += 1
    return WrittenPass(rows, transactions, activities, failed, first, last)


__all__ = ["TrafficWriter", "WrittenPass", "writer_main"]
