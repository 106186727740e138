"""`make demo`, headless: the demo starts its own PostgreSQL and broker, seeds, simulates, streams.

The demo runs as a user runs it (``python -m unified_profile.server.demo``), stopped with SIGINT
as Ctrl-C stops it, then a second time on the same directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import psycopg
import pytest
from unified_profile_client import ProfileClient, ProfileServiceError, StatusCode

from unified_profile.server.demo import Match, generate_population
from unified_profile.server.devstack import pick_free_port

from ..waiting import wait_for as _wait_for

# The demo seeds and snapshots its population before anything shows: allow longer waits.
wait_for = partial(_wait_for, timeout=180.0)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PEOPLE, SEED = 300, 7
CHANGE_LINE = re.compile(r"^#(\d+) (CREATED|UPDATED|MERGED|SPLIT|DELETED) .*?\[(p_[0-9a-f]+)\]")


def _start_demo(data_dir: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as stdout:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unified_profile.server.demo",
                "--headless",
                "--people",
                str(PEOPLE),
                "--seed",
                str(SEED),
                "--rate",
                "50",
                "--data-dir",
                str(data_dir),
                "--grpc-port",
                str(pick_free_port()),
                *extra,
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )


def _changes_printed(out: Path) -> list[tuple[int, str, str]]:
    return [
        (int(m[1]), m[2], m[3])
        for line in out.read_text(errors="replace").splitlines()
        if (m := CHANGE_LINE.match(line))
    ]


def _lookup(client: ProfileClient, kind: str, value: str):
    try:
        return client.lookup(kind, value)
    except ProfileServiceError as exc:
        if exc.code in (StatusCode.NOT_FOUND, StatusCode.FAILED_PRECONDITION):
            return None
        raise


def _processes_in_groups(groups: set[int]) -> list[int]:
    """Live processes whose process group is one of ``groups`` (each child leads its own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp in groups and state != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_nothing_left(state: dict) -> None:
    pids = {p for name, p in state["pids"].items() if name != "demo" and p}
    assert len(pids) == 3, state["pids"]  # PostgreSQL, the broker and the service all ran
    assert [p for p in pids if _alive(p)] == []
    if Path("/proc").is_dir():
        assert _processes_in_groups(pids) == []  # no PostgreSQL backend, no broker thread


def test_demo_seeds_merges_streams_and_stops_cleanly_twice(tmp_path):
    data_dir, out = tmp_path / "demo", tmp_path / "first.txt"
    population = generate_population(PEOPLE, SEED)
    demo = _start_demo(data_dir, out)
    try:
        state = wait_for(
            lambda: (
                (data_dir / "demo.json").exists()
                and json.loads((data_dir / "demo.json").read_text())
            ),
            what="the demo to be ready",
        )
        assert demo.poll() is None, out.read_text()
        client = ProfileClient(state["grpc_target"], token=state["token"], timeout=10)

        # Linked people whose loyalty record misspells the name: one profile, the CRM's spelling.
        members = {row[0]: row for row in population.members}
        misspelt = [
            p
            for p in population.with_match(Match.LINKED)
            if (members[p.member_id][4], members[p.member_id][5]) != (p.given_name, p.family_name)
        ][:3]
        assert misspelt, "the seed has linked people with typos"
        for person in misspelt:
            profile = wait_for(
                lambda p=person: (
                    (found := _lookup(client, "crm_id", str(p.crm_id)))
                    and found.loyalty.member_id == p.member_id
                    and found
                ),
                what=f"{person.full_name}'s CRM and loyalty records to merge",
            )
            assert profile.person.given_name == person.given_name
            assert profile.person.family_name == person.family_name
            assert profile.provenance["person.given_name"].source == "crm"
            assert profile.provenance["loyalty.member_id"].source == "loyalty"

        # No link: the same email up to case and spaces, or the same phone under another email.
        for match in (Match.EMAIL, Match.PHONE):
            for person in population.with_match(match)[:3]:
                wait_for(
                    lambda p=person: (
                        (found := _lookup(client, "loyalty_id", p.member_id))
                        and found.crm.customer_id == str(p.crm_id)
                    ),
                    what=f"{person.full_name} ({match}) to merge",
                )

        # Households: two CRM customers sharing an email stay two people; the email is ambiguous.
        for pair in list(population.households().values())[:3]:
            first, second = (
                wait_for(
                    lambda p=p: _lookup(client, "crm_id", str(p.crm_id)), what=f"{p.full_name}"
                )
                for p in pair
            )
            assert first.profile_id != second.profile_id
            assert first.person.full_name == pair[0].full_name
            with pytest.raises(ProfileServiceError) as ambiguous:
                client.lookup("email", pair[0].email)
            assert ambiguous.value.code is StatusCode.FAILED_PRECONDITION

        # People in one system only.
        for person in population.with_match(Match.LOYALTY_ONLY)[:3]:
            found = wait_for(
                lambda p=person: _lookup(client, "loyalty_id", p.member_id),
                what=f"{person.full_name}'s profile",
            )
            assert not found.crm.HasField("customer_id")

        # A live change shows in the view: who, the field old → new, and the source that won.
        with psycopg.connect(state["dsns"]["loyalty"], autocommit=True) as conn:
            conn.execute(
                "UPDATE loyalty.members SET tier_code = 'PLT', updated_at = now()"
                " WHERE member_id = 'LM-000101'"
            )
        wait_for(
            lambda: re.search(
                r'^#\d+ UPDATED Sally Smith \[p_\w+\] .*loyalty\.tier: "\w+" → "platinum" \(loyalty\)',
                out.read_text(),
                re.MULTILINE,
            ),
            what="Sally's upgrade in the live view",
        )
        # The simulator's traffic flows too: activities of several kinds changed profiles.
        with psycopg.connect(state["dsns"]["store"]) as conn:
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(DISTINCT c->>'table') FROM up_change_log,"
                        " jsonb_array_elements(cause) c WHERE kind = 'UPDATED' AND c->>'op' <> 'r'"
                    ).fetchone()[0]
                    >= 4
                ),
                what="simulated changes to four tables",
            )
            conn.commit()
            log = conn.execute(
                "SELECT sequence, kind, profile_id FROM up_change_log ORDER BY sequence"
            ).fetchall()
        head = log[-1][0]
        assert [row[0] for row in log] == list(range(1, head + 1))
        # Every change up to that head reached the view, once each, in order, as logged.
        printed = wait_for(
            lambda: (p := _changes_printed(out)) and p[-1][0] >= head and p,
            what=f"the view to print change #{head}",
        )
        assert [seq for seq, _, _ in printed] == list(range(1, len(printed) + 1))
        assert printed[:head] == [tuple(row) for row in log]
        wait_for(
            lambda: re.search(
                r"^summary: profiles [1-9][\d,]* │ merges [\d,]+ │ [\d.,]+ changes/s │ lag [\d,]+ ms",
                out.read_text(),
                re.MULTILINE,
            ),
            what="a summary line counting profiles",
        )
        client.close()

        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert demo.wait(timeout=180) == 0, out.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = out.read_text()
    assert "stopped: simulator, unified-profile run (exit 0), Tansu broker, PostgreSQL" in text
    _assert_nothing_left(state)

    # A second run on the same directory starts from a clean slate; SIGTERM stops it as cleanly.
    out = tmp_path / "second.txt"
    demo = _start_demo(data_dir, out)
    try:
        wait_for(
            lambda: re.search(r"^#1 CREATED ", out.read_text(), re.MULTILINE),
            what="the second run's first change",
        )
        second = json.loads((data_dir / "demo.json").read_text())
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=180) == 0, out.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert second["pids"] != state["pids"]
    assert "stopped: simulator, unified-profile run (exit 0), Tansu broker, PostgreSQL" in (
        out.read_text()
    )
    _assert_nothing_left(second)
