"""Keeping change events within a source's ``max_event_bytes``.

A row of many megabytes cannot simply be handed over. A Kafka broker refuses it
(``message.max.bytes``, 1 MB by default), and since the connector confirms nothing past an
unacknowledged event, it would re-send it after every restart and hold the slot for good. Stored,
it would make every read and change stream of its profile exceed gRPC's message limit.

So an event over the limit first loses its ``before`` image (an update keeps ``after``, from which
the engine reads values; a delete keeps the key columns, as under ``REPLICA IDENTITY DEFAULT``). If
that is still too large, a small marker goes out in its place: same topic, key, op and ``source``
(so the same position), no row images, and an ``oversized`` block with the event's size and the
limit. The engine keeps the marker as a dead letter whose reason says all that; replaying it once
the limit is raised reads the row again from the source.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from .envelope import ChangeEvent, Oversized

_OVERSIZED_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "int64", "optional": False, "field": "bytes"},
        {"type": "int64", "optional": False, "field": "limit"},
    ],
    "optional": True,
    "name": "unified_profile.Oversized",
    "field": "oversized",
}


def event_bytes(event: ChangeEvent) -> int:
    """The event's size as published: its JSON key and value (without the schema wrapper)."""
    size = 0 if event.key is None else len(orjson.dumps(event.key))
    return size + (0 if event.value is None else len(orjson.dumps(event.value)))


def fit_event(event: ChangeEvent, limit: int) -> tuple[ChangeEvent, int]:
    """The event itself if it is within ``limit`` bytes, else a smaller stand-in.

    Returns:
        The event to publish, and the original event's size in bytes.
    """
    value = event.value
    size = event_bytes(event)
    if size <= limit or value is None or value.get("op") not in ("c", "u", "d", "r"):
        # Tombstones, truncates, heartbeats and transaction markers are small by construction.
        return event, size
    before = value.get("before")
    if before is not None:
        if value["op"] == "d":
            key = event.key or {}
            slim = {name: key.get(name) for name in before}
        else:
            slim = None
        smaller = replace(event, value={**value, "before": slim})
        if event_bytes(smaller) <= limit:
            return smaller, size
    marker = {
        **value,
        "before": None,
        "after": None,
        "oversized": Oversized(size, limit).as_payload(),
    }
    schema = event.value_schema
    if schema is not None:
        schema = {**schema, "fields": [*schema.get("fields", ()), _OVERSIZED_SCHEMA]}
    return replace(event, value=marker, value_schema=schema), size


def is_marker(event: ChangeEvent) -> bool:
    """Whether ``event`` is a marker standing in for a too-large event."""
    return event.value is not None and "oversized" in event.value
