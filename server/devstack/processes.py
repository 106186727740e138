"""Child processes for the local services: free ports, start, stop, logs, lifecycle.

Shared by :mod:`.postgres` and :mod:`.kafka_broker`; the services are children of the current
Python process, in their own process group, and die with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_LOG_TAIL_LINES = 40


class PortTaken(Exception):
    """The picked port was taken before the server bound it."""


class ManagedService:
    """Lifecycle shared by the local services: state, ``restart``, use as a context manager."""

    _proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the service (subclasses)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the service (subclasses)."""
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again on the same address."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def pick_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is only free at the moment of the call: another process may take it before
    the caller binds it. Servers started on a picked port retry with a new one when that
    happens (see :meth:`EmbeddedPostgres.start` and ``TansuBroker.start``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note when it cannot be read."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    tail = "\n".join(text.splitlines()[-lines:])
    return tail or f"<{path} is empty>"


def _other_threads_running() -> bool:
    """Whether this process has any thread but the calling one (Python's or a library's own).

    A ``preexec_fn`` makes the child run Python after ``fork``, which is unsafe while other
    threads exist (a lock one of them held stays held in the child). Then the hook is left
    out and the ``atexit`` handlers are the only safety net. (gRPC's own at-fork handlers,
    which crashed such children, are turned off in ``unified_profile.server``.)
    """
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        return True


def _parent_death_hook(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``). The kernel sends the signal when the *thread*
    that forked the child exits, so the hook is only used from the main thread, and only
    while no other thread runs (see :func:`_other_threads_running`); otherwise the ``atexit``
    handlers are the only safety net. It runs after the child switched user,
    which matters: changing credentials clears the setting.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread() or _other_threads_running():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return hook


def spawn(
    argv: list[str],
    *,
    log_file: IO[bytes],
    death_signal: int,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session/process group with output appended to ``log_file``.

    Its own process group keeps a Ctrl-C in the terminal from reaching it (we stop it
    ourselves, in order); ``death_signal`` is delivered to it if this process dies.
    """
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        user=user,
        group=group,
        extra_groups=[] if user is not None else None,
        start_new_session=True,
        preexec_fn=_parent_death_hook(death_signal),
    )


def wait_or_signal(proc: subprocess.Popen[bytes], steps: list[tuple[int, float]]) -> None:
    """Send each ``(signal, timeout)`` in turn until ``proc`` has exited; reap it."""
    for sig, timeout in steps:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
