"""Schema changes while ``unified-profile run`` works: a column added, widened, renamed or
dropped in a source, and a table added to the config with the service restarted.

What the on-call engineer should see:

- An added column the mapping does not use, or a mapped column widened, changes nothing: events
  keep mapping, no dead letters, the profiles stay right.
- A mapped column renamed or dropped: that table's events can no longer be mapped. They are
  dead-lettered, never applied with the field blanked, and the log and ``dead-letters list``
  name the source, table and column and the fix (change the mapping, restart, replay). The other
  tables keep flowing. After the fix, ``dead-letters replay`` applies what was held back, and
  ``reconcile`` says whether stored records still carry the old mapping (``--repair`` re-maps them).
- A table added to the config: on restart its existing rows are read and its changes stream.

Every test ends with the store equal to a from-scratch recompute under the final configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from unified_profile_client import ProfileClient

from .support import (
    TOKEN,
    DemoSources,
    Deployment,
    RunProcess,
    assert_change_log_sound,
    assert_same_as_recompute,
    drop_slots,
    head,
    reconcile,
    service_env,
    wait_for,
    write_config,
)

Edit = Callable[[str], str]


def _no_edit(text: str) -> str:
    return text


@dataclass
class Running:
    """A ``run`` deployment of the demo on a store of its own."""

    sources: DemoSources
    store_dsn: str
    deployment: Deployment
    env: dict[str, str]
    service: RunProcess

    def caught_up(self) -> None:
        """Wait until both slots are confirmed past what the sources hold now."""
        targets = self.sources.wal_positions()
        wait_for(lambda: self.sources.confirmed_past(self.deployment.slots, targets),
                 "the service to catch up", timeout=240, died=[self.service.died])

    def restart(self, log: Path) -> None:
        """Stop the service (SIGTERM) and start it again with the config as it is now."""
        assert self.service.stop() == 0, self.service.log_tail()
        self.service = RunProcess(self.deployment, self.env, log)

    def edit_config(self, edit: Edit) -> None:
        text = self.deployment.config.read_text()
        edited = edit(text)
        assert edited != text, "the config edit changed nothing"
        self.deployment.config.write_text(edited)

    def cli(self, *args: str) -> tuple[int, str]:
        """``unified-profile <args> --config <this deployment's config>``: exit code, stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "unified_profile.server.cli", "--log-level", "warning",
             *args, "--config", str(self.deployment.config)],
            env=self.env, capture_output=True, timeout=300, check=False, text=True,
        )
        return done.returncode, done.stdout + done.stderr

    def dead_letters(self) -> list[dict[str, Any]]:
        code, out = self.cli("dead-letters", "list", "--json", "--limit", "100000")
        assert code == 0, out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def client(self) -> ProfileClient:
        return ProfileClient(self.deployment.target, token=TOKEN, timeout=20)


@contextmanager
def _running(tmp_path: Path, sources: DemoSources, store_dsn: str, suffix: str) -> Iterator[Running]:
    """The demo's ``run``, its snapshot applied; stopped at the end."""
    deployment = write_config(tmp_path, suffix)
    env = service_env(store_dsn, sources)
    running = Running(sources, store_dsn, deployment, env,
                      RunProcess(deployment, env, tmp_path / "run.log"))
    try:
        wait_for(lambda: head(store_dsn) > 300, "the snapshot to be applied",
                 died=[running.service.died])
        running.caught_up()
        yield running
        assert running.service.died() is None
        assert running.service.stop() == 0, running.service.log_tail()
    finally:
        running.service.stop()


def _recompute(tmp_path: Path, sources: DemoSources, store_dsn: str, suffix: str,
               edit: Edit) -> None:
    """Fill ``store_dsn`` from scratch under the edited demo config: a fresh ``run``'s snapshot."""
    deployment = write_config(tmp_path, suffix)
    deployment.config.write_text(edit(deployment.config.read_text()))
    service = RunProcess(deployment, service_env(store_dsn, sources), tmp_path / "recompute.log")
    try:
        targets = sources.wal_positions()
        wait_for(lambda: sources.confirmed_past(deployment.slots, targets),
                 "the recompute to apply the sources' snapshot", timeout=300,
                 died=[service.died])
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()
        drop_slots(sources, deployment.slots)


def _assert_right(running: Running, tmp_path: Path, new_database, unique_name,
                  edit: Edit = _no_edit) -> None:
    """The store equals a recompute under the final config; reconcile agrees; log sound."""
    recomputed = new_database("recompute")
    _recompute(tmp_path, running.sources, recomputed, unique_name("recompute"), edit)
    assert assert_same_as_recompute(running.store_dsn, recomputed, "after the schema change") > 300
    assert_change_log_sound(running.store_dsn)
    code, report = reconcile(running.deployment, running.env)
    assert code == 0, f"drift: {report}"


def _source(running: Running, name: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(running.sources.dsns[name], autocommit=True) as conn:
        conn.execute(statement, params)


def _one(running: Running, name: str, query: str) -> Any:
    with psycopg.connect(running.sources.dsns[name]) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


@contextmanager
def _traffic(running: Running, seed: int) -> Iterator[None]:
    """The demo's customer traffic, light, for the duration of the block."""
    writer = running.sources.writer(seed, rate=10)
    writer.start()
    try:
        wait_for(lambda: sum(writer.counts().values()) >= 10, "traffic",
                 died=[running.service.died])
        yield
        wait_for(lambda: sum(writer.counts().values()) >= 40, "traffic after the change",
                 died=[running.service.died])
    finally:
        writer.stop()


def _field(profile: Any, path: str) -> Any:
    """A profile's value at ``path`` as the API returns it (``None`` when unset)."""
    section, _, name = path.partition(".")
    if section == "traits":
        traits = profile.traits
        if name not in traits:
            return None
        value = traits[name]
        return getattr(value, value.WhichOneof("kind"))
    message = getattr(profile, section)
    return getattr(message, name) if message.HasField(name) else None


# --- a column added, columns widened ---------------------------------------------------------


def test_column_added_to_mapped_tables_changes_nothing(
    tmp_path, demo_sources, new_database, unique_name, seed
):
    with _running(tmp_path, demo_sources, new_database("store"), unique_name("added")) as running:
        member = _one(running, "loyalty",
                      "SELECT member_id FROM loyalty.members ORDER BY member_id LIMIT 1")
        with _traffic(running, seed):
            # A column with a default (filled in every row without a rewrite) and one without.
            _source(running, "loyalty",
                    "ALTER TABLE loyalty.members ADD COLUMN nickname text,"
                    " ADD COLUMN referral_code text NOT NULL DEFAULT 'none'")
            _source(running, "crm", "ALTER TABLE crm.customers ADD COLUMN vip boolean")
            _source(running, "loyalty",
                    "UPDATE loyalty.members SET nickname = 'Sal', points_balance = 4242,"
                    " updated_at = now() WHERE member_id = %s", (member,))
        running.caught_up()
        with running.client() as client:
            profile = client.lookup("loyalty_id", member)
        assert _field(profile, "loyalty.points_balance") == 4242
        assert running.dead_letters() == []
        assert not running.service.log_events("ingest.dead_letter")
    _assert_right(running, tmp_path, new_database, unique_name)


def test_mapped_columns_widened_keep_mapping(
    tmp_path, demo_sources, new_database, unique_name, seed
):
    with _running(tmp_path, demo_sources, new_database("store"), unique_name("widened")) as running:
        member = _one(running, "loyalty",
                      "SELECT member_id FROM loyalty.members ORDER BY member_id LIMIT 1")
        customer = _one(running, "crm",
                        "SELECT customer_id FROM crm.contact_details ORDER BY customer_id LIMIT 1")
        with _traffic(running, seed):
            _source(running, "loyalty",
                    "ALTER TABLE loyalty.members ALTER COLUMN points_balance TYPE bigint,"
                    " ALTER COLUMN lifetime_spend TYPE numeric(16, 2),"
                    " ALTER COLUMN given_name TYPE varchar(200)")
            _source(running, "crm",
                    "ALTER TABLE crm.contact_details ALTER COLUMN country_code TYPE text")
            # Values only the wider types hold.
            _source(running, "loyalty",
                    "UPDATE loyalty.members SET points_balance = 5000000000,"
                    " lifetime_spend = 12345678901234.56, updated_at = now()"
                    " WHERE member_id = %s", (member,))
            _source(running, "crm",
                    "UPDATE crm.contact_details SET country_code = 'gbr', updated_at = now()"
                    " WHERE customer_id = %s", (customer,))
        running.caught_up()
        with running.client() as client:
            by_member = client.lookup("loyalty_id", member)
            by_customer = client.lookup("crm_id", str(customer))
        assert _field(by_member, "loyalty.points_balance") == 5_000_000_000
        assert _field(by_member, "traits.lifetime_spend") == 12345678901234.56
        assert by_customer.contact.address.country == "GBR"
        assert running.dead_letters() == []
    _assert_right(running, tmp_path, new_database, unique_name)


# --- a mapped column renamed or dropped --------------------------------------------------------

_OWNER = '"crm.owner" = "owner_email"\n'
_NOTES = '"traits.crm_notes" = "notes"\n'


@dataclass(frozen=True)
class _Removal:
    """A mapped column of ``crm.customers`` taken away, and the operator's fix of the mapping."""

    column: str
    ddl: str
    update: str  # sets the column's successor (if any) and a field mapped from another column
    path: str
    fix: Edit
    stale_after_fix: bool  # stored records still hold the field the fixed mapping no longer has


_REMOVALS = {
    "renamed": _Removal(
        "owner_email",
        "ALTER TABLE crm.customers RENAME COLUMN owner_email TO account_manager_email",
        "UPDATE crm.customers SET account_manager_email = 'new.manager@example.com',"
        " last_name = 'Renamed-Held', updated_at = now() WHERE id = %s",
        "crm.owner",
        lambda text: text.replace(_OWNER, '"crm.owner" = "account_manager_email"\n'),
        stale_after_fix=False,
    ),
    "dropped": _Removal(
        "notes",
        "ALTER TABLE crm.customers DROP COLUMN notes",
        "UPDATE crm.customers SET last_name = 'Dropped-Held', updated_at = now() WHERE id = %s",
        "traits.crm_notes",
        lambda text: text.replace(_NOTES, ""),
        stale_after_fix=True,
    ),
}


@pytest.mark.parametrize("change", sorted(_REMOVALS))
def test_mapped_column_renamed_or_dropped_is_held_back_named_and_recovered(
    tmp_path, demo_sources, new_database, unique_name, seed, change
):
    removal = _REMOVALS[change]
    with _running(tmp_path, demo_sources, new_database("store"), unique_name(change)) as running:
        customer = _one(running, "crm",
                        "SELECT id FROM crm.customers WHERE deleted_at IS NULL"
                        " AND owner_email IS NOT NULL AND notes IS NOT NULL ORDER BY id LIMIT 1")
        member = _one(running, "loyalty",
                      "SELECT member_id FROM loyalty.members ORDER BY member_id LIMIT 1")
        with running.client() as client:
            before = client.lookup("crm_id", str(customer))
        assert _field(before, removal.path) is not None
        with _traffic(running, seed):
            _source(running, "crm", removal.ddl)
            _source(running, "crm", removal.update, (customer,))
            # Another table of the same source, and the other source, go on meanwhile.
            _source(running, "crm", "UPDATE crm.consents SET sms_opt_in = true,"
                    " sms_opt_in_at = now(), updated_at = now() WHERE customer_id = %s",
                    (customer,))
            _source(running, "loyalty", "UPDATE loyalty.members SET points_balance = 777,"
                    " updated_at = now() WHERE member_id = %s", (member,))
        running.caught_up()

        # Held back, not blanked: the customer's fields are as they were, the other tables' new.
        with running.client() as client:
            held = client.lookup("crm_id", str(customer))
            assert _field(client.lookup("loyalty_id", member), "loyalty.points_balance") == 777
        assert _field(held, removal.path) == _field(before, removal.path)
        assert held.person.family_name == before.person.family_name
        assert held.consent.sms_marketing.granted is True

        # Said where the on-call engineer looks: the log, and the dead-letter list.
        letters = running.dead_letters()
        assert letters and {d["topic"] for d in letters} == {"crm.crm.customers"}
        for reason in [d["reason"] for d in letters] + [
            e["reason"] for e in running.service.log_events("ingest.dead_letter")
        ]:
            assert "crm/crm.customers" in reason and f"column {removal.column!r}" in reason
            assert "renamed or dropped" in reason and "dead-letters replay" in reason
        (warned,) = {e["event"]: e for e in running.service.log_events(
            "ingest.mapped_column_missing")}.values()
        assert warned["source"] == "crm" and warned["table"] == "crm.customers"
        assert warned["column"] == removal.column and "dead-letters replay" in warned["fix"]

        # The fix: the mapping follows the source, the service restarts, the held events replay.
        running.edit_config(removal.fix)
        running.restart(tmp_path / "fixed.log")
        running.caught_up()
        code, out = running.cli("dead-letters", "replay", "--all")
        assert code == 0, out
        assert running.dead_letters() == []
        code, report = reconcile(running.deployment, running.env)
        if removal.stale_after_fix:
            # Records stored before hold a field the mapping no longer has: reconcile says so,
            # and --repair re-maps them.
            assert code == 4, report
            code, out = running.cli("reconcile", "--repair")
            assert code == 0, out
        assert code == 0, report
        with running.client() as client:
            fixed = client.lookup("crm_id", str(customer))
        assert fixed.person.family_name == removal.update.split("last_name = '")[1].split("'")[0]
        if change == "renamed":
            assert fixed.crm.owner == "new.manager@example.com"
        else:
            assert _field(fixed, removal.path) is None
    _assert_right(running, tmp_path, new_database, unique_name, removal.fix)


# --- a table added to the config ---------------------------------------------------------------

_SEGMENTS = """
[[sources.tables]]
table = "crm.segments"
version_column = "updated_at"
identifiers = { crm_id = "customer_id" }
fields = { "traits.segment" = "segment" }
"""


def _add_segments(text: str) -> str:
    """The new table, as the CRM source's last ``[[sources.tables]]`` entry."""
    marker = "\n# --- loyalty platform"
    assert marker in text
    return text.replace(marker, _SEGMENTS + marker, 1)


class _SegmentWriter:
    """Keeps re-segmenting customers in ``crm.segments``, one small transaction at a time."""

    def __init__(self, dsn: str, customers: list[int]) -> None:
        self._dsn, self._customers = dsn, customers
        self._stop = threading.Event()
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="segments", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.wait(0.02):
                customer = self._customers[self.writes % len(self._customers)]
                conn.execute(
                    "UPDATE crm.segments SET segment = %s, updated_at = clock_timestamp()"
                    " WHERE customer_id = %s", (f"wave-{self.writes}", customer))
                self.writes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_table_added_to_config_is_read_on_restart_then_streamed(
    tmp_path, demo_sources, new_database, unique_name, seed
):
    with _running(tmp_path, demo_sources, new_database("store"), unique_name("newtable")) as running:
        customers = [int(c) for (c,) in psycopg.connect(demo_sources.dsns["crm"]).execute(
            "SELECT id FROM crm.customers WHERE deleted_at IS NULL ORDER BY id LIMIT 40")]
        with _traffic(running, seed):
            # The CRM team ships a new table while the service runs; nothing maps it yet.
            _source(running, "crm",
                    "CREATE TABLE crm.segments (customer_id bigint PRIMARY KEY"
                    " REFERENCES crm.customers (id), segment text NOT NULL,"
                    " updated_at timestamptz NOT NULL DEFAULT now())")
            _source(running, "crm",
                    "INSERT INTO crm.segments (customer_id, segment)"
                    " SELECT id, 'initial-' || id FROM crm.customers WHERE id = ANY(%s)",
                    (customers,))
            # It is added to the config and the service restarted, while the table keeps
            # changing (half of its rows) and the demo's traffic goes on.
            segments = _SegmentWriter(running.sources.dsns["crm"], customers[:20])
            try:
                running.edit_config(_add_segments)
                running.restart(tmp_path / "with-segments.log")
                wait_for(lambda: len(running.service.log_events("cdc.streaming")) >= 2,
                         "streaming with the new table", died=[running.service.died])
                written = segments.writes
                wait_for(lambda: segments.writes > written + 20, "segment changes meanwhile",
                         died=[running.service.died])
            finally:
                segments.stop()
        # Later changes stream.
        _source(running, "crm", "UPDATE crm.segments SET segment = 'streamed',"
                " updated_at = now() WHERE customer_id = %s", (customers[-1],))
        running.caught_up()

        (read,) = running.service.log_events("cdc.added_tables_read")
        assert read["source"] == "crm" and read["tables"] == ["crm.segments"]
        assert read["rows"] == len(customers)
        with psycopg.connect(running.sources.dsns["crm"]) as conn:
            expected = dict(conn.execute("SELECT customer_id, segment FROM crm.segments"))
        with running.client() as client:
            shown = {c: _field(client.lookup("crm_id", str(c)), "traits.segment")
                     for c in customers}
        assert shown == expected
        assert expected[customers[-1]] == "streamed"
        assert expected[customers[20]] == f"initial-{customers[20]}"
        assert running.dead_letters() == []
    _assert_right(running, tmp_path, new_database, unique_name, _add_segments)

    # A second restart reads nothing again: the table is captured now.
    running.service = RunProcess(running.deployment, running.env, tmp_path / "again.log")
    try:
        wait_for(lambda: len(running.service.log_events("cdc.streaming")) >= 2, "streaming",
                 died=[running.service.died])
        assert not running.service.log_events("cdc.added_tables_read")
        assert running.service.stop() == 0, running.service.log_tail()
    finally:
        running.service.stop()
