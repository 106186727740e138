"""``unified_profile_client`` and ``profilectl`` against the real server (port 0, real store).

The server is the production ProfileService behind the bearer-token interceptor, with the change
feed serving subscriptions; the store is filled through the engine's applier as the pipeline
fills it. Nothing on the client side is faked: every call crosses the network.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from unified_profile_client import (
    ChangeFilter,
    ChangeKind,
    IdentifierRef,
    ProfileChange,
    ProfileClient,
    ProfileServiceError,
    RetryConfig,
    StatusCode,
    TlsConfig,
)
from unified_profile_client.cli import main as profilectl

from unified_profile.server.feed import ChangeFeed, ChangeFeedConfig
from unified_profile.server.rpc.change_convert import subscribe_response
from unified_profile.server.rpc.server import RunningServer, start_server
from unified_profile.server.rpc.service import ProfileService
from unified_profile.server.rpc.settings import SCOPES
from unified_profile.server.rpc.subscriptions import ProfileSubscriptions
from unified_profile.server.store import migrate
from unified_profile.server.store.profile_store import ProfileStore

from .rpc_support import (
    ADMIN,
    READER,
    RULES,
    STEWARD,
    SUBSCRIBER,
    TOKENS,
    TYPES,
    apply,
    crm,
    grpc_config,
    make_certificates,
    member,
)

pytestmark = pytest.mark.integration

EVERYTHING = "everything-token-0123456789abcdef"
CLIENT_TOKENS = [*TOKENS, {"name": "client-tests", "token": EVERYTHING, "scopes": list(SCOPES)}]
ANNES_MEMBERSHIP = "loyalty/public.members/{\"member_id\":\"L1\"}"
FAST_RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.5)


# --- the server ---------------------------------------------------------------------------------


class ProfileServer:
    """The ProfileService with a change feed on 127.0.0.1, its event loop in a daemon thread.

    Built from its parts (``start_server`` and a ``ChangeFeed``) because ``serve`` does not wire
    subscriptions yet; a ``port`` restarts a server where a stopped one listened.
    """

    def __init__(self, store: ProfileStore, dsn: str, port: int = 0, **grpc: Any) -> None:
        self.store, self.dsn = store, dsn
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.feed, self.running = self._call(self._start(port, grpc))
        self.port = self.running.port
        self.target = f"127.0.0.1:{self.port}"

    async def _start(self, port: int, grpc: dict[str, Any]) -> tuple[ChangeFeed[Any], RunningServer]:
        # Created on the server's loop: the feed's tasks and events belong to it.
        feed = ChangeFeed(self.store, self.dsn, subscribe_response,
                          ChangeFeedConfig(poll_interval_s=1.0))
        await feed.start()
        service = ProfileService(self.store, TYPES, RULES,
                                 subscriptions=ProfileSubscriptions(feed, self.store))
        config = grpc_config(tokens=CLIENT_TOKENS, **grpc)
        return feed, await start_server(config, service, listen=f"127.0.0.1:{port}")

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        """Stop at once, as a crash or a deploy would: open streams end with UNAVAILABLE."""

        async def stop() -> None:
            await self.running.stop(0)
            await self.feed.close()

        try:
            self._call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def dsn(new_database):
    dsn = new_database("pyclient")
    migrate.upgrade(dsn)
    return dsn


@pytest.fixture
def store(dsn):
    store = ProfileStore.connect(dsn)
    yield store
    store.close()


@pytest.fixture
def server(store, dsn):
    server = ProfileServer(store, dsn)
    yield server
    server.stop()


@pytest.fixture
def connect(server):
    """``connect(token, **options) -> ProfileClient`` to the server; closed after the test."""
    clients: list[ProfileClient] = []

    def connect_with(token: str | None = EVERYTHING, **options: Any) -> ProfileClient:
        options.setdefault("retry", FAST_RETRY)
        client = ProfileClient(server.target, token=token, **options)
        clients.append(client)
        return client

    yield connect_with
    for client in clients:
        client.close()


def anne_and_membership(store) -> tuple[str, str]:
    """Anne's CRM record, then her membership as its own profile, then linked: (anne, alias)."""
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    [(annie, _, _)] = apply(store, member("L1", 11, crm_id=None))
    apply(store, member("L1", 12, crm_id=1))
    return anne, annie


def take(stream, count: int, timeout: float = 20.0) -> list[ProfileChange]:
    """The next ``count`` changes of a watch; fails (instead of hanging) after ``timeout``."""
    taken: list[ProfileChange] = []
    # Closing the stream from another thread ends a ``next`` that waits for a change.
    timer = threading.Timer(timeout, stream.close)
    timer.start()
    try:
        for change in stream:
            taken.append(change)
            if len(taken) == count:
                return taken
    finally:
        timer.cancel()
    raise AssertionError(f"got {len(taken)} of {count} changes within {timeout} s: {taken}")


def in_background(work) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def all_sequences(store) -> list[int]:
    return [row.sequence for row in store.read_changes_after(0)]


def error_of(call) -> ProfileServiceError:
    with pytest.raises(ProfileServiceError) as raised:
        call()
    return raised.value


# --- reads ------------------------------------------------------------------------------------


def test_get_follows_an_alias_and_a_field_mask_limits_the_fields(store, connect):
    anne, alias = anne_and_membership(store)
    client = connect(READER)
    profile = client.get(alias)
    assert profile.profile_id == anne
    assert profile.person.given_name == "Anne" and profile.loyalty.tier == "gold"
    assert profile.provenance["loyalty.tier"].source == "loyalty"
    assert client.get_response(alias).resolved_from_alias
    assert not client.get_response(anne).resolved_from_alias
    masked = client.get(anne, fields=["loyalty.tier"])
    assert masked.loyalty.tier == "gold" and not masked.HasField("person")


def test_lookup_normalises_the_value_and_batch_get_answers_each_ref_in_order(store, connect):
    anne, alias = anne_and_membership(store)
    [(bob, _, _)] = apply(store, crm(2, 20, email="bob@example.com", name="Bob"))
    client = connect(READER)
    assert client.lookup("email", "  Anne@Example.COM ").profile_id == anne
    assert not client.lookup("loyalty_id", "L1", fields=["loyalty"]).HasField("person")
    found = client.batch_get(
        [alias, IdentifierRef("email", "BOB@example.com"), "p_missing",
         IdentifierRef("crm_id", "999"), anne],
        fields=["person"],
    )
    assert [p.profile_id if p else None for p in found] == [anne, bob, None, None, anne]
    assert found[1].person.given_name == "Bob" and not found[1].HasField("contact")
    assert client.batch_get([]) == []


def test_history_iterates_every_page_oldest_first(store, connect):
    anne, alias = anne_and_membership(store)
    apply(store, member("L1", 13, crm_id=1, tier="platinum"))
    client = connect(READER)
    changes = list(client.history(alias, page_size=2))          # three pages
    assert [(c.profile_id, c.kind) for c in changes] == [
        (anne, ChangeKind.CHANGE_KIND_CREATED),
        (alias, ChangeKind.CHANGE_KIND_CREATED),
        (anne, ChangeKind.CHANGE_KIND_MERGED),
        (anne, ChangeKind.CHANGE_KIND_UPDATED),
        (anne, ChangeKind.CHANGE_KIND_UPDATED),
    ]
    assert [c.sequence for c in changes] == all_sequences(store)
    assert list(client.history(anne)) == changes                 # one page, the same changes
    with pytest.raises(ValueError, match="page_size"):
        client.history(anne, page_size=0)
    assert error_of(lambda: list(client.history("p_never"))).code is StatusCode.NOT_FOUND


def test_explain_names_the_candidates_the_rule_and_the_link(store, connect):
    anne, _ = anne_and_membership(store)
    explanation = connect(READER).explain(anne)
    name = next(f for f in explanation.fields if f.path == "person.given_name")
    assert name.rule == "source_priority [crm, loyalty]"
    assert [(c.value.string_value, c.chosen) for c in name.candidates] == [
        ("Anne", True), ("Annie", False)]
    [link] = explanation.links
    assert (link.identifier.type, link.identifier.value) == ("crm_id", "1")


def test_pipeline_status_needs_admin(store, connect):
    anne_and_membership(store)
    status = connect(ADMIN).pipeline_status()
    assert status.change_log_head == store.head_sequence() and status.profiles == 1
    assert error_of(connect(READER).pipeline_status).code is StatusCode.PERMISSION_DENIED


# --- steward ----------------------------------------------------------------------------------


def test_merge_unmerge_and_forget(store, connect):
    [(john, _, _)] = apply(store, crm(4, 10, email="family@example.com", name="John"))
    [(mary, _, _)] = apply(store, crm(5, 11, email="family@example.com", name="Mary"))
    steward, reader = connect(STEWARD), connect(READER)
    merged = steward.merge(mary, john, "same person, two CRM accounts")
    assert merged.profile.profile_id == john
    assert merged.changes[0].kind == ChangeKind.CHANGE_KIND_MERGED
    assert reader.get(mary).profile_id == john
    changes = steward.unmerge(john, 'crm/public.customers/{"id":5}', "two people after all")
    assert changes[0].kind == ChangeKind.CHANGE_KIND_SPLIT
    separated = changes[0].related_profile_id
    assert reader.get(separated).person.given_name == "Mary"
    deleted = steward.forget(separated, "erasure request 2024-17")
    assert (deleted.kind, deleted.profile_id) == (ChangeKind.CHANGE_KIND_DELETED, separated)
    assert error_of(lambda: reader.get(separated)).code is StatusCode.NOT_FOUND
    refused = error_of(lambda: steward.merge(john, separated, "undo"))
    assert refused.code is StatusCode.NOT_FOUND


# --- errors -----------------------------------------------------------------------------------


def test_each_failure_is_one_typed_error_with_the_status_and_the_servers_message(store, server,
                                                                                connect):
    anne, _ = anne_and_membership(store)
    apply(store, crm(7, 30, email="family@example.com"), crm(8, 31, email="family@example.com"))
    reader = connect(READER)

    missing = error_of(lambda: reader.get("p_nobody"))
    assert missing.code is StatusCode.NOT_FOUND and "p_nobody" in missing.message
    assert isinstance(missing.__cause__, grpc.RpcError)            # raised from the transport's
    assert str(missing).startswith("NOT_FOUND: ")

    invalid = error_of(lambda: reader.get("has space"))
    assert invalid.code is StatusCode.INVALID_ARGUMENT and invalid.message.startswith("profile_id:")
    invalid = error_of(lambda: reader.batch_get([anne, IdentifierRef("shoe_size", "42")]))
    assert invalid.message.startswith("refs[1].identifier.type:")

    shared = error_of(lambda: reader.lookup("email", "family@example.com"))
    assert shared.code is StatusCode.FAILED_PRECONDITION

    for token in (None, "not-a-configured-token-at-all"):
        denied = error_of(lambda token=token: connect(token).get(anne))
        assert denied.code is StatusCode.UNAUTHENTICATED and "bearer token" in denied.message

    forbidden = error_of(lambda: reader.merge(anne, "p_other", "no scope"))
    assert forbidden.code is StatusCode.PERMISSION_DENIED and "profiles.steward" in forbidden.message
    forbidden = error_of(lambda: next(reader.watch("earliest")))
    assert forbidden.code is StatusCode.PERMISSION_DENIED and "profiles.subscribe" in forbidden.message


def test_a_read_is_retried_until_the_server_is_up_and_a_steward_call_is_not(store, dsn):
    with socket.socket() as probe:                    # a free port, for a server started later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started: list[ProfileServer] = []
    apply(store, crm(1, 10, email="anne@example.com"))
    retry = RetryConfig(max_attempts=30, initial_backoff=0.1, max_backoff=0.2)
    with ProfileClient(f"127.0.0.1:{port}", token=EVERYTHING, retry=retry, timeout=20) as client:
        began = time.monotonic()
        refused = error_of(lambda: client.forget("p_x", "never retried"))
        assert refused.code is StatusCode.UNAVAILABLE and time.monotonic() - began < 1.0
        starter = threading.Timer(1.0, lambda: started.append(ProfileServer(store, dsn, port)))
        starter.start()
        try:
            began = time.monotonic()
            profile = client.lookup("email", "anne@example.com")    # UNAVAILABLE, then found
            assert profile.person.given_name == "Anne" and time.monotonic() - began >= 0.9
        finally:
            starter.join()
            for server in started:
                server.stop()


def test_the_deadline_bounds_a_call_to_a_server_that_never_answers():
    with socket.socket() as silent:                   # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        with ProfileClient(target, token=READER, timeout=0.5, retry=FAST_RETRY) as client:
            began = time.monotonic()
            late = error_of(lambda: client.get("p_anyone"))
            assert late.code is StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - began < 3.0
            late = error_of(lambda: client.get("p_anyone", timeout=0.2))
            assert late.code is StatusCode.DEADLINE_EXCEEDED


def test_tls_with_the_servers_ca(store, dsn, tmp_path):
    certs = make_certificates(tmp_path)
    anne, _ = anne_and_membership(store)
    server = ProfileServer(store, dsn, tls={"cert_file": str(certs["server.pem"]),
                                            "key_file": str(certs["server.key"])})
    try:
        tls = TlsConfig.from_files(certs["ca.pem"])
        with ProfileClient(server.target, token=READER, tls=tls) as client:
            assert client.get(anne).profile_id == anne
        with ProfileClient(server.target, token=READER, retry=FAST_RETRY) as plaintext:
            assert error_of(lambda: plaintext.get(anne)).code is StatusCode.UNAVAILABLE
    finally:
        server.stop()


# --- watch ------------------------------------------------------------------------------------


def test_watch_replays_then_follows_live_changes_and_heartbeats_are_not_yielded(store, connect):
    anne, _ = anne_and_membership(store)
    client = connect(SUBSCRIBER)
    with client.watch("earliest", heartbeat_seconds=1) as stream:
        replayed = take(stream, 4)
        assert [c.sequence for c in replayed] == all_sequences(store)
        assert stream.last_sequence == replayed[-1].sequence
        # A change committed while the watch waits arrives live, after at least one heartbeat.
        time.sleep(1.5)
        in_background(lambda: apply(store, member("L1", 13, crm_id=1, tier="platinum")))
        [live] = take(stream, 1)
    assert (live.profile_id, live.kind) == (anne, ChangeKind.CHANGE_KIND_UPDATED)
    tier = next(f for f in live.changes if f.path == "loyalty.tier")
    assert (tier.old_value.string_value, tier.new_value.string_value) == ("gold", "platinum")
    assert live.causes[0].source == "loyalty"
    assert stream.head_sequence is not None and stream.head_sequence >= replayed[-1].sequence


def test_watch_filters_and_includes_the_profile(store, connect):
    anne, _ = anne_and_membership(store)
    apply(store, member("L1", 13, crm_id=1, tier="platinum"))
    only_tier = ChangeFilter(kinds=("UPDATED",), field_paths=("loyalty.tier",))
    with connect(SUBSCRIBER).watch("earliest", only_tier, include_profile=True) as stream:
        [change] = take(stream, 1)
    assert [f.path for f in change.changes if f.path.startswith("loyalty.tier")] == ["loyalty.tier"]
    assert change.profile.profile_id == anne and change.profile.loyalty.tier == "platinum"
    with pytest.raises(ValueError, match="unknown change kind"):
        ChangeFilter(kinds=("RENAMED",))  # type: ignore[arg-type]


def test_a_watch_continues_after_an_earlier_streams_last_sequence(store, connect):
    anne_and_membership(store)
    client = connect(SUBSCRIBER)
    with client.watch("earliest") as first:
        seen = take(first, 2)
    with client.watch(first.last_sequence) as second:
        rest = take(second, 2)
    assert [c.sequence for c in seen + rest] == all_sequences(store)
    past_the_head = error_of(lambda: next(client.watch(store.head_sequence() + 100)))
    assert past_the_head.code is StatusCode.OUT_OF_RANGE and "resync" in past_the_head.message
    with pytest.raises(ValueError, match="start"):
        client.watch(-1)


def test_watch_resumes_after_the_server_restarts_on_the_same_port_without_gap_or_duplicate(
    store, dsn
):
    anne_and_membership(store)                                      # four changes
    server = ProfileServer(store, dsn)
    port = server.port
    client = ProfileClient(server.target, token=SUBSCRIBER, retry=FAST_RETRY)
    try:
        stream = client.watch("earliest", heartbeat_seconds=1)
        # Two yielded; the other two were very likely received already, and must come again.
        before = take(stream, 2)
        server.stop()
        # Committed while no server runs: the resumed subscription reads them from the log.
        apply(store, member("L1", 13, crm_id=1, tier="platinum"))
        apply(store, crm(2, 14, email="bob@example.com", name="Bob"))
        server = ProfileServer(store, dsn, port=port)
        after = take(stream, 4)
        # And live again on the new server.
        in_background(lambda: apply(store, member("L1", 15, crm_id=1, tier="silver")))
        after += take(stream, 1)
        stream.close()
    finally:
        client.close()
        server.stop()
    sequences = [c.sequence for c in before + after]
    assert sequences == all_sequences(store)                    # each exactly once, in order
    assert stream.reconnects >= 1
    assert after[-1].changes[0].new_value.string_value == "silver"


def test_closing_a_watch_from_another_thread_ends_its_iteration(store, connect):
    stream = connect(SUBSCRIBER).watch("latest", heartbeat_seconds=1)
    threading.Timer(1.0, stream.close).start()
    began = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - began < 10


# --- profilectl -------------------------------------------------------------------------------


def run_profilectl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = profilectl(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_profilectl_get_lookup_explain_and_history(store, server):
    anne, alias = anne_and_membership(store)
    apply(store, member("L1", 13, crm_id=1, tier="platinum"))
    common = ["--target", server.target, "--token", READER]

    status, out, _ = run_profilectl(*common, "get", alias)
    assert status == 0
    assert out.startswith(f"Profile {anne}  (asked for {alias}: merged into this one)")
    tier_line = next(line for line in out.splitlines() if line.strip().startswith("loyalty.tier"))
    assert '"platinum"' in tier_line and 'loyalty public.members {"member_id":"L1"}' in tier_line
    name_line = next(line for line in out.splitlines() if "person.given_name" in line)
    assert '"Anne"' in name_line and "crm public.customers" in name_line
    assert "email        anne@example.com" in out

    status, out, _ = run_profilectl("get", anne, "--json", *common, "--fields", "loyalty.tier")
    [line] = out.splitlines()
    document = json.loads(line)
    assert document["profile"]["profile_id"] == anne
    assert document["profile"]["loyalty"] == {"tier": "platinum"}

    status, out, _ = run_profilectl(*common, "--json", "lookup", "email", "ANNE@example.com")
    assert status == 0 and json.loads(out)["profile_id"] == anne

    status, out, _ = run_profilectl(*common, "explain", anne)
    assert status == 0
    assert "person.given_name  rule: source_priority [crm, loyalty]" in out
    assert '* "Anne"  crm public.customers {"id":1}' in out
    assert '"Annie"  loyalty public.members' in out
    assert "share crm_id=1" in out

    status, out, _ = run_profilectl(*common, "history", alias, "--json", "--page-size", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [int(c["sequence"]) for c in lines] == all_sequences(store)
    status, out, _ = run_profilectl(*common, "history", anne)
    assert 'loyalty.tier: "gold" → "platinum"' in out
    assert 'by loyalty public.members {"member_id":"L1"} lsn 13' in out
    assert f"MERGED {anne} ← {alias} merged in" in out


def test_profilectl_reports_failures_on_stderr_with_the_status(store, server, monkeypatch):
    monkeypatch.delenv("PROFILECTL_TOKEN", raising=False)
    status, out, err = run_profilectl("--target", server.target, "get", "p_nobody")
    assert (status, out) == (1, "") and err.startswith("profilectl: UNAUTHENTICATED: ")
    monkeypatch.setenv("PROFILECTL_TOKEN", READER)
    status, _, err = run_profilectl("--target", server.target, "get", "p_nobody")
    assert status == 1 and err.startswith("profilectl: NOT_FOUND: ")
    status, _, err = run_profilectl("--target", server.target, "watch", "--kind", "RENAMED")
    assert status == 2 and "argument --kind: one of CREATED, UPDATED" in err


def test_profilectl_watch_prints_one_json_object_per_change_and_readable_text(store, server):
    anne, alias = anne_and_membership(store)
    apply(store, member("L1", 13, crm_id=1, tier="platinum"))
    executable = Path(sys.executable).with_name("profilectl")
    environment = {**os.environ, "PROFILECTL_TOKEN": SUBSCRIBER, "PROFILECTL_TARGET": server.target}
    result = subprocess.run(
        [str(executable), "watch", "--from", "earliest", "--json", "--count", "5"],
        env=environment, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    changes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [int(c["sequence"]) for c in changes] == all_sequences(store)
    assert changes[2]["kind"] == "CHANGE_KIND_MERGED" and changes[2]["related_profile_id"] == alias

    status, out, _ = run_profilectl(
        "--target", server.target, "--token", SUBSCRIBER,
        "watch", "--from", str(changes[3]["sequence"]), "--path", "loyalty.*", "--count", "1",
    )
    assert status == 0
    header, *details = out.splitlines()
    assert header.startswith(f"#{changes[4]['sequence']} ") and f"UPDATED {anne}" in header
    assert '    loyalty.tier: "gold" → "platinum"' in details
    assert '    by loyalty public.members {"member_id":"L1"} lsn 13' in details
