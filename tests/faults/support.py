"""What the fault tests share: the demo on real databases, ``unified-profile run`` as a process,
a seeded writer, a subscriber that lives across crashes, and comparisons of stores.

The reference for "correct" is always recomputed from the sources: a fresh store filled by a
fresh ``run`` that snapshots the source databases as they are at the end. Profile ids and the
change log's batching may differ between the two, so profiles are compared by the set of source
records they hold and their field values; record images by their mapped fields and identifiers
(their positions differ: the snapshot's LSN against each change's own).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from unified_profile_client import ProfileClient, RetryConfig

from unified_profile.server.demo import TrafficModel, generate_population
from unified_profile.server.demo.seeding import load_example, load_population
from unified_profile.server.demo.simulator import Simulator
from unified_profile.server.devstack import pick_free_port
from unified_profile.v1 import profile_pb2

from ..command_process import CommandProcess
from ..store_state import assert_change_log_sound as assert_change_log_sound
from ..store_state import canonical, profiles_by_members
from ..waiting import wait_for

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
TOKEN = "fault-suite-token-0123456789"
SOURCES = ("crm", "loyalty")


# --- the demo's source databases -------------------------------------------------------------


@dataclass
class DemoSources:
    """The demo's CRM and loyalty databases, seeded with a generated population."""

    dsns: dict[str, str]
    population_seed: int
    people: int

    @classmethod
    def create(cls, crm_dsn: str, loyalty_dsn: str, people: int, seed: int) -> DemoSources:
        population = generate_population(people, seed)
        load_example(crm_dsn, loyalty_dsn)
        load_population(crm_dsn, loyalty_dsn, population)
        return cls({"crm": crm_dsn, "loyalty": loyalty_dsn}, seed, people)

    def writer(self, seed: int, rate: float) -> Simulator:
        """The demo's simulator: seeded customer traffic at ``rate`` activities per second.

        An activity whose commit fails (a source restarting) is skipped, as the demo's is: the
        source never held it, so nothing downstream may show it.
        """
        model = TrafficModel(generate_population(self.people, self.population_seed), seed)
        return Simulator(model, {"crm": self.dsns["crm"], "loyalty": self.dsns["loyalty"]}, rate)

    def wal_positions(self) -> dict[str, str]:
        """Each source's current WAL insert position."""
        positions = {}
        for name, dsn in self.dsns.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                assert row is not None
                positions[name] = row[0]
        return positions

    def confirmed_past(self, slots: dict[str, str], targets: dict[str, str]) -> bool:
        """Whether every source's slot is confirmed at or past its target position."""
        for name, dsn in self.dsns.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (targets[name], slots[name]),
                ).fetchone()
            if row is None or not row[0]:
                return False
        return True


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """One ``run`` configuration: its file, its gRPC port and its slots."""

    config: Path
    port: int
    slots: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def write_config(
    directory: Path,
    suffix: str,
    *,
    snapshot: str = "initial",
    kafka: str | None = None,
    batch_events: int | None = None,
) -> Deployment:
    """The demo's configuration with this test's slots, a free gRPC port and one token.

    Args:
        directory: Where the file goes (``<suffix>.toml``).
        suffix: Makes slot and publication names unique to the deployment.
        snapshot: Both sources' ``snapshot`` mode.
        kafka: Bootstrap servers: the Kafka transport instead of the embedded one.
        batch_events: The engine's batch size (small batches: more commits to crash between).
    """
    text = (DEMO / "unified-profile.toml").read_text()
    port = pick_free_port()
    text = text.replace('listen = "127.0.0.1:50051"', f'listen = "127.0.0.1:{port}"')
    text = text.replace('snapshot = "initial"', f'snapshot = "{snapshot}"')
    text = re.sub(
        r"(?s)\n\[\[grpc\.tokens\]\].*?(?=\n# ---)",
        f'\n[[grpc.tokens]]\nname = "fault-suite"\ntoken = "{TOKEN}"\n'
        'scopes = ["profiles.read", "profiles.subscribe", "admin"]\n',
        text,
        count=1,
    )
    if kafka is not None:
        text = text.replace(
            '[transport]\nkind = "embedded"\n',
            f'[transport]\nkind = "kafka"\nbootstrap_servers = "{kafka}"\n'
            f'group_id = "engine_{suffix}"\noffsets_topic = "offsets_{suffix}"\n'
            "topic_partitions = 2\n"
            # A SIGKILLed member is dropped from the group after 1.5 s instead of 45 s.
            "consumer_options = { session_timeout_ms = 1500, heartbeat_interval_ms = 300 }\n",
        )
    if batch_events is not None:
        text = text.replace("\n[grpc]\n", f"\n[engine]\nbatch_events = {batch_events}\n\n[grpc]\n")
    slots = {}
    for name in SOURCES:
        slots[name] = f"{name}_{suffix}"
        text = text.replace(
            f'\nname = "{name}"\n',
            f'\nname = "{name}"\nslot = "{name}_{suffix}"\npublication = "{name}_{suffix}"\n'
            "status_interval_s = 0.2\nheartbeat_interval_s = 1.0\n",
            1,
        )
    path = directory / f"{suffix}.toml"
    path.write_text(text)
    return Deployment(path, port, slots)


def service_env(store_dsn: str, sources: DemoSources) -> dict[str, str]:
    return {
        **os.environ,
        "UP_STORE_DSN": store_dsn,
        "UP_CRM_DSN": sources.dsns["crm"],
        "UP_LOYALTY_DSN": sources.dsns["loyalty"],
    }


# --- the service as a process --------------------------------------------------------------


class RunProcess(CommandProcess):
    """``unified-profile run`` as a child process; its JSON log lines appended to ``log``."""

    def __init__(self, deployment: Deployment, env: dict[str, str], log: Path) -> None:
        self.deployment = deployment
        level = os.environ.get("UP_FAULT_LOG_LEVEL", "info")
        super().__init__(
            ["--log-level", level, "run", "--config", str(deployment.config)], env, log, "run"
        )


# --- a subscriber across crashes -------------------------------------------------------------


@dataclass
class Subscriber:
    """``ProfileClient.watch`` from the beginning, in a thread, for as long as the test runs.

    It reconnects by itself whenever the server goes away and resumes after the last sequence it
    yielded; every change it receives is kept as (sequence, profile id, kind).
    """

    target: str
    received: list[tuple[int, str, str]] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        retry = RetryConfig(initial_backoff=0.1, max_backoff=1.0)
        self._client = ProfileClient(self.target, token=TOKEN, timeout=10, retry=retry)
        self._stream = self._client.watch("earliest")
        self._thread = threading.Thread(target=self._follow, name="subscriber", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for change in self._stream:
                kind = profile_pb2.ChangeKind.Name(change.kind).removeprefix("CHANGE_KIND_")
                self.received.append((change.sequence, change.profile_id, kind))
        except BaseException as exc:  # kept for the test to report
            self.error = exc

    @property
    def reconnects(self) -> int:
        return self._stream.reconnects

    def last_sequence(self) -> int:
        return self.received[-1][0] if self.received else 0

    def close(self) -> None:
        self._stream.close()
        self._thread.join(30)
        self._client.close()


# --- the store --------------------------------------------------------------------------------


def head(store_dsn: str) -> int:
    """The change log's head (0 while the store is not migrated yet)."""
    with psycopg.connect(store_dsn) as conn:
        if conn.execute("SELECT to_regclass('up_change_log_head')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT sequence FROM up_change_log_head").fetchone()
    return int(row[0]) if row else 0


def change_log(store_dsn: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(store_dsn) as conn:
        rows = conn.execute(
            "SELECT sequence, profile_id, kind FROM up_change_log ORDER BY sequence"
        ).fetchall()
    return [(int(s), str(p), str(k)) for s, p, k in rows]


def live_images(store_dsn: str) -> dict[tuple[str, str, str], str]:
    """Live record images: mapped fields, identifiers and version (not their positions)."""
    with psycopg.connect(store_dsn) as conn:
        rows = conn.execute(
            "SELECT source, table_name, record_key, fields, identifiers, version "
            "FROM up_source_records WHERE NOT deleted"
        ).fetchall()
    return {(r[0], r[1], r[2]): canonical(r[3:]) for r in rows}


def assert_same_as_recompute(store_dsn: str, recompute_dsn: str, context: str) -> int:
    """The store holds what a from-scratch recompute holds; returns the profile count."""
    images, expected = live_images(store_dsn), live_images(recompute_dsn)
    missing = sorted(expected.keys() - images.keys())
    extra = sorted(images.keys() - expected.keys())
    differing = sorted(k for k in images.keys() & expected.keys() if images[k] != expected[k])
    assert not (missing or extra or differing), (
        f"record images differ from the recompute ({context}): missing {missing[:3]}, "
        f"extra {extra[:3]}, differing {[(k, images[k], expected[k]) for k in differing[:3]]}"
    )
    profiles, reference = profiles_by_members(store_dsn), profiles_by_members(recompute_dsn)
    only_here = {sorted(k)[0]: v for k, v in profiles.items() if reference.get(k) != v}
    only_there = {sorted(k)[0]: v for k, v in reference.items() if profiles.get(k) != v}
    assert not only_here and not only_there, (
        f"profiles differ from the recompute ({context}):\n"
        f"  this store: {list(only_here.items())[:3]}\n  recompute:  {list(only_there.items())[:3]}"
    )
    return len(profiles)


def recompute(
    directory: Path, sources: DemoSources, store_dsn: str, suffix: str, log: Path
) -> None:
    """Fill ``store_dsn`` from scratch: a fresh ``run`` snapshots the sources, then stops."""
    deployment = write_config(directory, suffix)
    service = RunProcess(deployment, service_env(store_dsn, sources), log)
    try:
        targets = sources.wal_positions()
        wait_for(
            lambda: sources.confirmed_past(deployment.slots, targets),
            "the recompute to apply the sources' snapshot",
            timeout=300,
            died=[service.died],
        )
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()
        drop_slots(sources, deployment.slots)


def drop_slots(sources: DemoSources, slots: dict[str, str]) -> None:
    for name, dsn in sources.dsns.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NULL",
                (slots[name],),
            )


def reconcile(deployment: Deployment, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``unified-profile reconcile --json``: its exit code and report."""
    done = subprocess.run(
        [sys.executable, "-m", "unified_profile.server.cli", "--log-level", "warning",
         "reconcile", "--config", str(deployment.config), "--json"],
        env=env, capture_output=True, timeout=300, check=False,
    )
    assert done.returncode in (0, 4), done.stderr.decode(errors="replace")
    report = json.loads(done.stdout)
    if done.returncode == 4:
        report["stored"] = _stored_images(env["UP_STORE_DSN"], report)
    return done.returncode, report


def _stored_images(store_dsn: str, report: dict[str, Any]) -> list[Any]:
    """For a drift report: the stored images of the drifted records (what the store has)."""
    keys = [(t["source"], t["table"], d["key"]) for t in report["report"]["tables"]
            for d in t["drift"]][:5]
    found: list[Any] = []
    with psycopg.connect(store_dsn) as conn:
        for key in keys:
            found.append(conn.execute(
                "SELECT record_key, fields, version, position, deleted FROM up_source_records"
                " WHERE source = %s AND table_name = %s AND record_key = %s",
                key,
            ).fetchone())
            found += conn.execute(
                "SELECT sequence, kind, changes, cause FROM up_change_log"
                " WHERE cause::text LIKE %s ORDER BY sequence",
                (f"%{json.loads(key[2])['member_id'] if 'member_id' in key[2] else key[2]}%",),
            ).fetchall()
    return found
