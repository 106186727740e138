"""Which changes a subscriber wants: change kinds, field-path patterns and causing sources.

A path pattern is dotted segments; ``*`` stands for any one segment, and a pattern matches a changed
path equal to it or beneath it: ``loyalty.tier`` matches ``loyalty.tier``, ``consent.*`` and
``consent`` match ``consent.push.granted``, ``*.tier`` matches ``loyalty.tier``. Only UPDATED changes
are tested against path patterns: CREATED, MERGED, SPLIT and DELETED concern the whole profile and
match any path filter (as the API promises).

Filters are frozen and hashable on purpose: the feed groups subscriptions with equal filters and
tests each change once per distinct filter, not once per subscriber.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.profile_paths import PROFILE_FIELDS, suggest_path
from ..store.profile_store import LoggedChange

CHANGE_KINDS: tuple[str, ...] = ("CREATED", "UPDATED", "MERGED", "SPLIT", "DELETED")
"""Every change kind the change log holds."""

STEWARD_SOURCE = "steward"
"""The source name of changes a steward's decision caused."""

MAX_FILTER_ITEMS = 100
"""At most this many kinds, path patterns or sources in one filter (matching cost per change)."""

_WHOLE_PROFILE_KINDS = frozenset({"CREATED", "MERGED", "SPLIT", "DELETED"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_SOURCE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_FIXED_PATHS: tuple[tuple[str, ...], ...] = tuple(tuple(p.split(".")) for p in PROFILE_FIELDS)


class InvalidFilter(ValueError):
    """A filter item is malformed.

    Attributes:
        field: The item, relative to the filter (``field_paths[2]``, ``kinds[0]``).
        problem: What is wrong with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def cause_source(cause: Mapping[str, Any]) -> str:
    """The source a change-log cause names: its ``source``, or ``steward`` for a steward's decision."""
    if "steward" in cause:
        return STEWARD_SOURCE
    source = cause.get("source")
    return source if isinstance(source, str) else ""


@dataclass(frozen=True, slots=True)
class ChangeTraits:
    """What filters look at in a change, computed once per change.

    Attributes:
        kind: The change kind (``UPDATED``).
        paths: The changed field paths, each split into segments.
        sources: The sources that caused the change (``steward`` for a steward's decision).
    """

    kind: str
    paths: tuple[tuple[str, ...], ...]
    sources: frozenset[str]

    @classmethod
    def of(cls, change: LoggedChange) -> ChangeTraits:
        """The traits of a change-log entry."""
        return cls(
            kind=change.kind,
            paths=tuple(tuple(path.split(".")) for path in change.changes),
            sources=frozenset(cause_source(c) for c in change.cause) - {""},
        )


@dataclass(frozen=True, slots=True, order=True)
class PathPattern:
    """A field-path pattern (``consent.*``), as segments."""

    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Parse and check a pattern.

        Raises:
            ValueError: The pattern is malformed or can match no profile field; the message says why.
        """
        if not text:
            raise ValueError("empty path pattern")
        segments = tuple(text.split("."))
        for segment in segments:
            if segment != "*" and not _SEGMENT.fullmatch(segment):
                raise ValueError(
                    f"malformed path pattern {text!r}: segments are letters, digits, '_' or '-', "
                    "or '*' for any one segment, separated by single dots"
                )
        pattern = cls(segments)
        # Traits are free-form, so anything under them may exist; fixed fields must exist.
        if segments[0] in ("traits", "*") or any(pattern.matches(p) for p in _FIXED_PATHS):
            return pattern
        suggestion = suggest_path(text)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        raise ValueError(f"path pattern {text!r} matches no profile field{hint}")

    def matches(self, path: tuple[str, ...]) -> bool:
        """Whether the changed ``path`` (as segments) is this pattern's path or beneath it."""
        if len(path) < len(self.segments):
            return False
        return all(s == "*" or s == p for s, p in zip(self.segments, path, strict=False))

    def __str__(self) -> str:
        return ".".join(self.segments)


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    """A subscription's filter; an empty part matches everything.

    Attributes:
        kinds: Only these change kinds.
        patterns: Only UPDATED changes touching a path one of these matches (other kinds pass).
        sources: Only changes caused by one of these sources.
    """

    kinds: frozenset[str] = frozenset()
    patterns: tuple[PathPattern, ...] = ()
    sources: frozenset[str] = frozenset()

    @classmethod
    def parse(
        cls, kinds: Iterable[str] = (), field_paths: Iterable[str] = (), sources: Iterable[str] = ()
    ) -> ChangeFilter:
        """Check and normalise a filter (duplicates and order do not matter).

        Raises:
            InvalidFilter: An item is malformed; names it (``field_paths[1]``).
        """
        kind_list, path_list, source_list = list(kinds), list(field_paths), list(sources)
        for name, items in (("kinds", kind_list), ("field_paths", path_list),
                            ("sources", source_list)):
            if len(items) > MAX_FILTER_ITEMS:
                raise InvalidFilter(name, f"at most {MAX_FILTER_ITEMS} items (got {len(items)})")
        for i, kind in enumerate(kind_list):
            if kind not in CHANGE_KINDS:
                raise InvalidFilter(
                    f"kinds[{i}]", f"unknown change kind {kind!r}; expected one of {CHANGE_KINDS}"
                )
        patterns: set[PathPattern] = set()
        for i, text in enumerate(path_list):
            try:
                patterns.add(PathPattern.parse(text))
            except ValueError as exc:
                raise InvalidFilter(f"field_paths[{i}]", str(exc)) from None
        for i, source in enumerate(source_list):
            if not _SOURCE.fullmatch(source):
                raise InvalidFilter(
                    f"sources[{i}]",
                    f"{source!r} is not a source name (1-100 letters, digits, '_', '.', '-')",
                )
        return cls(frozenset(kind_list), tuple(sorted(patterns)), frozenset(source_list))

    def matches(self, traits: ChangeTraits) -> bool:
        """Whether a change with these traits passes the filter."""
        if self.kinds and traits.kind not in self.kinds:
            return False
        if self.sources and self.sources.isdisjoint(traits.sources):
            return False
        if self.patterns and traits.kind not in _WHOLE_PROFILE_KINDS:
            return any(p.matches(path) for path in traits.paths for p in self.patterns)
        return True

    def __str__(self) -> str:
        parts = [
            f"kinds={','.join(sorted(self.kinds))}" if self.kinds else "",
            f"paths={','.join(map(str, self.patterns))}" if self.patterns else "",
            f"sources={','.join(sorted(self.sources))}" if self.sources else "",
        ]
        return " ".join(p for p in parts if p) or "all"


MATCH_ALL = ChangeFilter()
"""The filter that passes every change."""
