"""What the gRPC abuse tests share: the service's memory and metrics as a client sees them, and
HTTP/2 connections written by hand.

grpcio manages its windows and reads its socket by itself, and cancels its calls politely when a
channel closes. The abusive clients here do what it never does: hold the HTTP/2 receive window
shut while reading everything else, stop reading the socket altogether, or drop the TCP
connection in the middle of a stream (a FIN, or a RST with no goodbye at all).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from unified_profile_client import ProfileClient, ProfileServiceError

from unified_profile.server.devstack import pick_free_port

from ..command_process import CommandProcess
from ..waiting import wait_for
from .support import TOKEN, DemoSources, RunProcess, head, service_env, write_config

SUBSCRIBE = "/unified_profile.v1.ProfileService/SubscribeProfileChanges"

_DATA, _HEADERS, _SETTINGS, _PING, _WINDOW_UPDATE = 0, 1, 4, 6, 8
_ACK, _END_STREAM, _END_HEADERS = 0x1, 0x1, 0x4
_INITIAL_WINDOW_SIZE = 0x4
_MAX_WINDOW = 2**31 - 1
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def rss_bytes(pid: int) -> int:
    """A process's resident memory (``VmRSS``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match[1]) * 1024


def metric(port: int, name: str) -> float:
    """One unlabelled sample from the service's ``/metrics`` endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match[1])


class RawConnection:
    """One plaintext HTTP/2 connection to the gRPC server, frames written by hand.

    Args:
        port: The server's port.
        reading: ``"window"``: a thread reads every frame (and answers SETTINGS and PING, so the
            connection stays healthy) but no WINDOW_UPDATE is ever sent: once the 64 KiB the
            server may send are used up, HTTP/2 flow control alone holds it back.
            ``"never"``: the client grants the largest windows HTTP/2 allows, acknowledges the
            server's settings, then never reads its socket again: only TCP holds the server back.
            ``"none"``: nothing is read (for connections that are only dropped).
    """

    def __init__(self, port: int, reading: Literal["window", "never", "none"] = "none") -> None:
        self.received = 0  # DATA bytes received ("window" only)
        self._lock = threading.Lock()
        self._next_stream = 1
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if reading == "never":
            # A small receive buffer: the kernel on our side soaks up little, so the server's
            # own socket buffer fills and its writes must stop.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._sock.connect(("127.0.0.1", port))
        self._authority = f"127.0.0.1:{port}".encode()
        settings = b""
        if reading == "never":
            settings = struct.pack(">HI", _INITIAL_WINDOW_SIZE, _MAX_WINDOW)
        self._send(_PREFACE + _frame(_SETTINGS, 0, 0, settings))
        if reading == "never":
            self._send(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - 65535)))
            # The server's settings come first on a new connection; acknowledging them keeps it
            # from closing the connection as unresponsive. Nothing is read after them.
            while True:
                kind, flags, _ = self._read_frame()
                if kind == _SETTINGS and not flags & _ACK:
                    self._send(_frame(_SETTINGS, _ACK, 0))
                    break
        self._reader: threading.Thread | None = None
        if reading == "window":
            self._reader = threading.Thread(target=self._read_all, daemon=True)
            self._reader.start()

    def open_stream(self, path: str, request: bytes, token: str = TOKEN) -> int:
        """Start a call (request headers and the one request message); returns its stream id."""
        headers = b"".join(
            _literal(name, value)
            for name, value in [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                (b":authority", self._authority), (b"content-type", b"application/grpc"),
                (b"te", b"trailers"), (b"authorization", f"Bearer {token}".encode()),
            ]
        )
        message = b"\x00" + struct.pack(">I", len(request)) + request
        with self._lock:
            stream = self._next_stream
            self._next_stream += 2
            self._sock.sendall(
                _frame(_HEADERS, _END_HEADERS, stream, headers)
                + _frame(_DATA, _END_STREAM, stream, message)
            )
        return stream

    def close(self, reset: bool = True) -> None:
        """Drop the connection mid-stream: a TCP RST (``reset``) or a FIN, and no GOAWAY."""
        if reset:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if self._reader is not None:
            # A socket closed while a thread waits in recv() stays open until that recv returns,
            # which nothing would make it do: shutting the reading side down ends it first.
            self._sock.shutdown(socket.SHUT_RD)
            self._reader.join()
        self._sock.close()

    def closed_by_server(self, within_s: float = 1.0) -> bool:
        """Whether the server has closed this connection (reads what it sent, for ``within_s``).

        For a ``"never"`` connection, at the end of a test: reading lets the server send again.
        """
        self._sock.settimeout(within_s)
        try:
            while self._sock.recv(1 << 16):
                pass
            return True
        except TimeoutError:
            return False
        except OSError:
            return True  # reset by the server

    def _send(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)

    def _read_frame(self) -> tuple[int, int, bytes]:
        """The next frame's type, flags and payload."""
        header = self._read_exactly(9)
        return header[3], header[4], self._read_exactly(int.from_bytes(header[:3], "big"))

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def _read_all(self) -> None:
        try:
            while True:
                kind, flags, payload = self._read_frame()
                if kind == _DATA:
                    self.received += len(payload)
                elif kind == _SETTINGS and not flags & _ACK:
                    self._send(_frame(_SETTINGS, _ACK, 0))
                elif kind == _PING and not flags & _ACK:
                    self._send(_frame(_PING, _ACK, 0, payload))
        except OSError:
            return  # closed by either side


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    header = struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)
    return header + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK "literal header field without indexing, new name", no Huffman coding."""
    return b"\x00" + _length(len(name)) + name + _length(len(value)) + value


def _length(value: int) -> bytes:
    # HPACK integer with a 7-bit prefix (the H bit, 0, is the prefix byte's top bit).
    if value < 127:
        return bytes([value])
    out, value = [127], value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


# --- the service under abuse -------------------------------------------------------------------


@dataclass
class ServedStack:
    """``unified-profile serve`` (the process under abuse) beside the ``run`` that fills its store.

    The served process carries only the gRPC service, so its memory is the service's: ``run``'s
    connectors and engine allocate with every change they apply, which would blur the figure.
    """

    sources: DemoSources
    store_dsn: str
    pipeline: RunProcess
    served: CommandProcess
    metrics_port: int
    port: int

    @classmethod
    def start(cls, sources: DemoSources, store_dsn: str, directory: Path, suffix: str) -> ServedStack:
        """Start ``run`` and, once it applied the demo's snapshot, ``serve`` with ``/metrics``."""
        deployment = write_config(directory, suffix)
        env = service_env(store_dsn, sources)
        pipeline = RunProcess(deployment, env, directory / "run.log")
        try:
            wait_for(lambda: head(store_dsn) > 300, "the snapshot to be applied",
                     died=[pipeline.died])
            metrics_port = port = pick_free_port()
            while port == metrics_port:
                port = pick_free_port()
            config = directory / "serve.toml"
            config.write_text(
                deployment.config.read_text()
                + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
            )
            served = CommandProcess(
                ["--log-level", "warning", "serve", "--config", str(config),
                 "--listen", f"127.0.0.1:{port}"],
                env, directory / "serve.log", "serve",
            )
        except BaseException:
            pipeline.stop()
            raise
        stack = cls(sources, store_dsn, pipeline, served, metrics_port, port)
        try:
            wait_for(stack._answers, "serve to answer", died=stack.died)
        except BaseException:
            stack.stop()
            raise
        return stack

    def stop(self) -> None:
        self.served.stop()
        self.pipeline.stop()

    @property
    def died(self) -> list[Callable[[], str | None]]:
        return [self.served.died, self.pipeline.died]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss(self) -> int:
        """The served process's resident memory."""
        return rss_bytes(self.served.process.pid)

    def subscribers(self) -> int:
        """``up_subscribers``: its open SubscribeProfileChanges streams."""
        return int(metric(self.metrics_port, "up_subscribers"))

    def client(self) -> ProfileClient:
        return ProfileClient(self.target, token=TOKEN, timeout=60)

    def profile_ids(self) -> list[str]:
        with psycopg.connect(self.store_dsn) as conn:
            return [r[0] for r in conn.execute("SELECT profile_id FROM up_profiles ORDER BY 1")]

    def write_changes(self, rounds: int, notes_bytes: int = 4096) -> int:
        """Each round rewrites every live CRM customer's notes (one UPDATED change each); returns
        the change log's head once the pipeline has applied them all."""
        with psycopg.connect(self.sources.dsns["crm"], autocommit=True) as conn:
            for _ in range(rounds):
                conn.execute(
                    "UPDATE crm.customers SET notes = repeat(md5(random()::text), %s),"
                    " updated_at = clock_timestamp() WHERE deleted_at IS NULL",
                    (notes_bytes // 32,),
                )
                # Applied before the next round: rounds applied in one batch would make one
                # change per profile, not one per round.
                targets = self.sources.wal_positions()
                wait_for(
                    lambda: self.sources.confirmed_past(self.pipeline.deployment.slots, targets),
                    "the changes to be applied", died=self.died,
                )
        return head(self.store_dsn)

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                client.pipeline_status(timeout=5)
            self.subscribers()
        except (ProfileServiceError, OSError):
            return False
        return True
