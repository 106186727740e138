"""A stand-in for a module's structlog logger, for tests that check what a component warns.

The process configures structlog once (level and cached loggers), so tests replace the module's
``log`` with this instead of capturing through structlog.
"""

from __future__ import annotations

from typing import Any


class LogRecorder:
    """Keeps the warnings logged through it; drops debug and info lines."""

    def __init__(self) -> None:
        self.warnings: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append({"event": event, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        pass

    def info(self, event: str, **fields: Any) -> None:
        pass
