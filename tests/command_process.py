"""A ``unified-profile`` command as a child process, its JSON log lines appended to a file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CommandProcess:
    """``python -m unified_profile.server.cli --log-format json <args>``, killable and restartable.

    Args:
        args: The command and its options (``["run", "--config", path]``).
        env: Its environment.
        log: The file its standard error (the log) is appended to, across restarts.
        name: What failure messages call it.
        stop_timeout: How long a SIGTERM may take before the process is killed.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        log: Path,
        name: str,
        stop_timeout: float = 90.0,
    ) -> None:
        self.args = list(args)
        self.env = env
        self.log = log
        self.name = name
        self.stop_timeout = stop_timeout
        self.kills = 0
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "unified_profile.server.cli", "--log-format", "json",
                 *self.args],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, connections drop mid-transaction."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.kills += 1

    def restart(self) -> None:
        assert self.process.poll() is not None
        self.process = self._spawn()

    def stop(self) -> int:
        """SIGTERM; the command finishes what it holds and exits (killed after the timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode

    def died(self) -> str | None:
        """Why the process is not running (its exit code and last log lines), or ``None``."""
        if self.process.poll() is None:
            return None
        return f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def log_events(self, *events: str) -> list[dict[str, Any]]:
        """The JSON log entries whose ``event`` is one of ``events``, in order."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") in events:
                found.append(entry)
        return found
