"""The Node.js client (clients/node) against our Python server: a read, then the change stream.

The node test (``node --test``, clients/node/test) runs as a child process; this side starts the
server over a real store, tells the node side what to expect through its environment, and makes
each change only once the node side reports (in a progress file) that it is ready for it: the
first change while its stream is open, the second while the server is down, so that the node
client must reconnect and resume to see it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .rpc_support import apply, member
from .test_python_client import EVERYTHING, ProfileServer, anne_and_membership, dsn, store

pytestmark = pytest.mark.integration

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
NODE_TEST = "test/profile_client.test.js"

__all__ = ["dsn", "store"]  # the fixtures, shared with the Python client's tests


def wait_for(progress: Path, prefix: str, count: int, node: subprocess.Popen[str],
             timeout: float = 60) -> list[str]:
    """The progress file's lines starting with ``prefix`` once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = progress.read_text().splitlines() if progress.exists() else []
        found = [line for line in lines if line.startswith(prefix)]
        if len(found) >= count:
            return found
        if node.poll() is not None:
            output, _ = node.communicate()
            pytest.fail(f"node exited ({node.returncode}) before {prefix!r}:\n{output}")
        time.sleep(0.05)
    node.kill()
    output, _ = node.communicate()
    pytest.fail(f"no {prefix!r} from node within {timeout} s:\n{output}")


def test_the_node_client_reads_a_profile_and_follows_the_change_stream(store, dsn, tmp_path):
    node_binary = shutil.which("node")
    assert node_binary, "Node.js is needed for the node client's test"
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node has no node_modules: run `make node-deps` (npm ci)")
    anne, _ = anne_and_membership(store)
    server = ProfileServer(store, dsn)
    port = server.port
    progress = tmp_path / "progress"
    expected = [
        {"path": "loyalty.tier", "old": "gold", "new": "platinum"},
        {"path": "loyalty.tier", "old": "platinum", "new": "silver"},
    ]
    environment = {
        **os.environ,
        "UP_TARGET": server.target,
        "UP_TOKEN": EVERYTHING,
        "UP_PROFILE_ID": anne,
        "UP_EMAIL": "anne@example.com",
        "UP_EXPECT_CHANGES": json.dumps(expected),
        "UP_EXPECT_RECONNECTS": "1",
        "UP_PROGRESS_FILE": str(progress),
    }
    node = subprocess.Popen(
        [node_binary, "--test", NODE_TEST], cwd=NODE_CLIENT, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(progress, "ready", 1, node)
        apply(store, member("L1", 13, crm_id=1, tier="platinum"))
        wait_for(progress, "change", 1, node)
        server.stop()
        # Committed while no server runs: only a resumed subscription can deliver it.
        apply(store, member("L1", 14, crm_id=1, tier="silver"))
        server = ProfileServer(store, dsn, port=port)
        output, _ = node.communicate(timeout=120)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
        server.stop()
    assert node.returncode == 0, output
    assert "# pass 4" in output and "# fail 0" in output, output
    changes = [line.split() for line in progress.read_text().splitlines()
               if line.startswith("change")]
    tier_changes = [row.sequence for row in store.read_changes_after(0)
                    if "loyalty.tier" in row.changes and row.profile_id == anne][-2:]
    assert [int(fields[1]) for fields in changes] == tier_changes
    assert f"change {tier_changes[0]} {anne} loyalty.tier" in output     # printed by the node side
    assert changes[0][3:6] == ["loyalty.tier", '"gold"', "->"] and changes[0][6] == '"platinum"'
    assert changes[1][6] == '"silver"' and int(changes[1][7].removeprefix("reconnects=")) >= 1
