"""JSON for the store's ``jsonb`` values: orjson (C, fast) with the standard library behind it.

orjson refuses integers beyond 64 bits, which JSON (and a source's ``numeric`` column) allows; only
those values take the slow path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """Compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text (what psycopg hands a ``json``/``jsonb`` loader)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
