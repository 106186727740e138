"""Method handlers built around the registered ones, once per method and handler.

Interceptors run for every call; what they wrap a handler in is built the first time and reused.
Keyed by the inner handler's id, the entry holds that handler too, so the id stays its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MAX_ENTRIES = 10_000


class WrappedHandlers:
    """A bounded map (method, inner handler) → the handler built around it."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, build: Callable[[Any], Any]) -> Any:
        """``build(handler)``, built on the first call for this method and handler."""
        key = (method, id(handler))
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= _MAX_ENTRIES:  # handlers are few and long-lived; stay bounded
                self._entries.clear()
            entry = self._entries[key] = (handler, build(handler))
        return entry[1]
