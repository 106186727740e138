"""A profile's stored field document: its values, and their provenance by reference.

Every field of a profile carries provenance (source, table, record key, version, commit time and
rule), and a profile's fields mostly come from the same few records. Stored inline, every field
repeated its record's ~150 bytes: a twenty-field profile was ~4.4 KB of JSON, most of it repeated,
and the engine parses the stored document of every profile a change reaches (to find which values
changed) as the service does on every read. Since migration 0003 the document is::

    {"values": {path: value, ...},
     "provenance": {path: [index, ...], ...},
     "contributors": [[source, table, record_key, version, commit_time_us, rule], ...]}

``provenance`` lists, for each path, indexes into ``contributors``: the winning record first for a
chosen value, each contributing record for an aggregate. Contributors are sorted by source, table,
record key and rule (code point order), so the same merge always gives the same document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..engine.survivorship import FieldValue, Provenance

CONTRIBUTOR_KEYS = ("source", "table", "record_key", "version", "commit_time_us", "rule")
"""What each contributor entry holds, in order (also the keys of an expanded entry)."""

EMPTY: dict[str, Any] = {"values": {}, "provenance": {}, "contributors": []}
"""The document of a profile without fields."""


def encode(merged: Mapping[str, FieldValue]) -> dict[str, Any]:
    """The stored document of a profile's merged fields."""
    # A merge builds one Provenance per (record, rule) and shares it between the fields it
    # wins: keyed by identity, each is looked at once (hashing the dataclass cost more).
    entries: dict[int, tuple[str, str, str, int | None, int, str]] = {}
    for value in merged.values():
        for p in value.provenance:
            if id(p) not in entries:
                entries[id(p)] = _entry(p)
    ordered = sorted(set(entries.values()), key=_order)
    position = {entry: n for n, entry in enumerate(ordered)}
    index = {identity: position[entry] for identity, entry in entries.items()}
    return {
        "values": {path: value.value for path, value in merged.items()},
        "provenance": {
            path: [index[id(p)] for p in value.provenance] for path, value in merged.items()
        },
        "contributors": [list(entry) for entry in ordered],
    }


def expand(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every field as ``{"value": ..., "provenance": [{source, table, ...}, ...]}``.

    The form tests and reconciliation compare; the hot paths read the document itself.
    """
    contributors = [
        dict(zip(CONTRIBUTOR_KEYS, entry, strict=True)) for entry in _contributors(document)
    ]
    provenance = document.get("provenance", {})
    return {
        path: {"value": value, "provenance": [contributors[i] for i in provenance.get(path, ())]}
        for path, value in document.get("values", {}).items()
    }


def _contributors(document: Mapping[str, Any]) -> list[list[Any]]:
    found: list[list[Any]] = document.get("contributors", [])
    return found


def _entry(p: Provenance) -> tuple[str, str, str, int | None, int, str]:
    return (p.source, p.table, p.record_key, p.version, p.commit_time_us, p.rule)


def _order(
    entry: tuple[str, str, str, int | None, int, str],
) -> tuple[str, str, str, str, bool, int, int]:
    # Source, table, record key and rule are unique within one merge (one Provenance per record
    # and rule); version and commit time only make the order total. Migration 0003 sorts the
    # same way (COLLATE "C" is code point order in UTF-8, and a missing version comes first).
    source, table, record_key, version, commit_time_us, rule = entry
    return (source, table, record_key, rule, version is not None, version or 0, commit_time_us)
