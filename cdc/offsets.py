"""What the connector remembers between runs, besides the slot itself.

The slot keeps the streaming position (its confirmed flush LSN). What it cannot keep is whether the
initial snapshot finished: a connector killed mid-snapshot must snapshot again on restart rather
than stream from a slot whose earlier rows were never read. That fact lives in an offset store —
a compacted Kafka topic for the Kafka transport, the profile store for the embedded one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Protocol

from .errors import CaptureError


@dataclass(frozen=True, slots=True)
class ConnectorOffset:
    """The connector's durable state for one source.

    Attributes:
        slot: The slot this state belongs to.
        snapshot_completed: Whether every snapshot row of this slot has been acknowledged.
        lsn: The last LSN confirmed to the server (informational: the slot is authoritative).
        tables: The tables (quoted ``schema.table``) whose existing rows are covered: read by a
            snapshot, or left out on purpose (``snapshot = "never"``). A configured table missing
            here was added to the config since, and its rows are read on the next start.
            ``None`` in offsets saved before tables were recorded.
    """

    slot: str
    snapshot_completed: bool
    lsn: int | None = None
    tables: tuple[str, ...] | None = None

    def to_json(self) -> bytes:
        """Serialised form stored in offset topics and tables."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ConnectorOffset:
        """Parse the serialised form.

        Raises:
            CaptureError: The stored offset is unreadable (it names what is wrong).
        """
        try:
            raw = json.loads(data)
            tables = raw.get("tables")
            return cls(
                str(raw["slot"]),
                bool(raw["snapshot_completed"]),
                raw.get("lsn"),
                None if tables is None else tuple(str(t) for t in tables),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CaptureError(f"stored connector offset is unreadable: {data[:200]!r}") from exc


class OffsetStore(Protocol):
    """The port for connector state; one adapter per transport."""

    def load(self, source: str) -> ConnectorOffset | None:
        """The last saved state of ``source``, or ``None`` if it has never been captured."""
        ...

    def save(self, source: str, offset: ConnectorOffset) -> None:
        """Durably record the state of ``source``."""
        ...


class InMemoryOffsetStore:
    """Offsets that live as long as the process (tests, and hosts that persist them elsewhere)."""

    def __init__(self) -> None:
        self._offsets: dict[str, ConnectorOffset] = {}

    def load(self, source: str) -> ConnectorOffset | None:
        """The saved state, if any."""
        return self._offsets.get(source)

    def save(self, source: str, offset: ConnectorOffset) -> None:
        """Remember the state."""
        self._offsets[source] = offset
