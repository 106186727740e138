"""The demo's terminal view: profile changes as they stream, and a summary line.

:class:`LiveView` subscribes with the project's own client (:meth:`ProfileClient.watch`, from the
oldest retained change, with the profile attached) and prints one line per change — who, which
fields went from what to what, and which source's value won::

    #812 UPDATED Sally Smith [p_3f…] loyalty.tier: "gold" → "platinum" (loyalty)

Below them a summary line is redrawn every second: profiles, merges, changes per second, lag
(source commit → this view), the last sequence and what the simulator did. Headless (no
terminal, or ``--headless``) the summary is printed as its own line every few seconds instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from google.protobuf import json_format, struct_pb2
from unified_profile_client import ProfileChange, ProfileClient, ProfileServiceError

from unified_profile.v1 import profile_pb2

_KIND_NAMES = {
    profile_pb2.CHANGE_KIND_CREATED: "CREATED",
    profile_pb2.CHANGE_KIND_UPDATED: "UPDATED",
    profile_pb2.CHANGE_KIND_MERGED: "MERGED",
    profile_pb2.CHANGE_KIND_SPLIT: "SPLIT",
    profile_pb2.CHANGE_KIND_DELETED: "DELETED",
}
_KIND_COLOURS = {"CREATED": "32", "UPDATED": "33", "MERGED": "35", "SPLIT": "36", "DELETED": "31"}
_MAX_FIELDS_SHOWN = 4
_MAX_VALUE_CHARS = 40
_WINDOW_S = 5.0
_HEADLESS_SUMMARY_EVERY_S = 5.0
_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def format_change(change: ProfileChange, colour: bool = False) -> str:
    """One line for a change: ``#seq KIND who [profile] path: old → new (winning source); …``.

    The winning source of a field is its provenance in the attached profile; a field the change
    emptied has none (``-``). CREATED lists how many fields each source contributed.
    """
    kind = _KIND_NAMES.get(change.kind, str(int(change.kind)))
    profile = change.profile
    who = _who(profile)
    causes = sorted({c.source for c in change.causes if c.source})
    by = f" by {', '.join(causes)}" if causes else ""
    head = f"#{change.sequence} {_paint(kind, _KIND_COLOURS.get(kind, '0'), colour)} {who}"
    head += f" {_paint(f'[{change.profile_id}]', '2', colour)}"
    if kind == "MERGED":
        return f"{head} ← {change.related_profile_id} merged in{by}"
    if kind == "SPLIT":
        return f"{head} → {change.related_profile_id} split off{by}"
    if kind == "DELETED":
        return f"{head} deleted{by}"
    if kind == "CREATED":
        winners: dict[str, int] = {}
        for field in change.changes:
            source = _winner(profile, field.path)
            winners[source] = winners.get(source, 0) + 1
        parts = ", ".join(f"{source} {n}" for source, n in sorted(winners.items()))
        return f"{head} {len(change.changes)} fields ({parts}){by}"
    shown = [
        f"{field.path}: {_value(field.old_value)} → {_value(field.new_value)}"
        f" ({_winner(profile, field.path)})"
        for field in change.changes[:_MAX_FIELDS_SHOWN]
    ]
    more = len(change.changes) - _MAX_FIELDS_SHOWN
    if more > 0:
        shown.append(f"+{more} more")
    return f"{head} {'; '.join(shown)}"


def _who(profile: profile_pb2.Profile) -> str:
    if profile.person.HasField("full_name"):
        return profile.person.full_name
    if profile.contact.HasField("email"):
        return profile.contact.email
    if profile.loyalty.HasField("member_id"):
        return profile.loyalty.member_id
    return "(someone)"


def _winner(profile: profile_pb2.Profile, path: str) -> str:
    if path not in profile.provenance:
        return "-"
    return profile.provenance[path].source or "-"


def _value(value: struct_pb2.Value) -> str:
    python: object = json_format.MessageToDict(value)
    if isinstance(python, float) and python.is_integer():
        python = int(python)
    if isinstance(python, str) and _INSTANT.match(python):
        return python[:10] + " " + python[11:19]  # seconds are enough to follow along
    text = json.dumps(python, ensure_ascii=False, default=str)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


class LiveView:
    """Prints the change stream and a summary line until stopped.

    Args:
        client: A client whose token has ``profiles.subscribe`` and ``profiles.read``, and
            ``admin`` for the profile count.
        out: Where to print.
        interactive: Redraw the summary in place with terminal codes, in colour; otherwise print
            plain lines and the summary every few seconds.
        activity: What the simulator did so far, by kind (shown in the summary).
        simulator_rate: The simulator's rate, for the summary.
    """

    def __init__(
        self,
        client: ProfileClient,
        out: TextIO,
        *,
        interactive: bool,
        activity: Callable[[], dict[str, int]] | None = None,
        simulator_rate: float | None = None,
    ) -> None:
        self._client = client
        self._out = out
        self._interactive = interactive
        self._activity = activity
        self._simulator_rate = simulator_rate
        self._lock = threading.Lock()
        self._stream = client.watch("earliest", include_profile=True, heartbeat_seconds=1)
        self._thread = threading.Thread(target=self._follow, name="demo-live-view", daemon=True)
        self._recent: deque[tuple[float, float | None]] = deque()
        self._changes = 0
        self._merges = 0
        self._last_sequence = 0
        self._lag_s: float | None = None
        self._profiles: int | None = None
        self._summary = ""
        self._last_printed_summary = 0.0
        self.failure: Exception | None = None

    def start(self) -> None:
        """Start following the change stream in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """End the subscription and print the last summary."""
        self._stream.close()
        self._thread.join(10)
        self.refresh(final=True)

    @property
    def last_sequence(self) -> int:
        """The sequence of the last change printed."""
        with self._lock:
            return self._last_sequence

    def refresh(self, final: bool = False) -> None:
        """Fetch the profile count and redraw (or, headless, print now and then) the summary."""
        # On failure keep the last count; the stream's own errors surface through ``failure``.
        with contextlib.suppress(ProfileServiceError):
            self._profiles = self._client.pipeline_status(timeout=2).profiles
        with self._lock:
            self._summary = self._summary_text()
            if self._interactive:
                end = "\n" if final else ""
                self._out.write(f"\r\x1b[K{self._summary}{end}")
            else:
                now = time.monotonic()
                if final or now - self._last_printed_summary >= _HEADLESS_SUMMARY_EVERY_S:
                    self._last_printed_summary = now
                    self._out.write(f"summary: {self._summary}\n")
            self._out.flush()

    def _follow(self) -> None:
        try:
            for change in self._stream:
                self._show(change)
        except ProfileServiceError as exc:
            self.failure = exc

    def _show(self, change: ProfileChange) -> None:
        now = time.time()
        committed = [c.committed_at.ToMicroseconds() / 1e6 for c in change.causes]
        lag = now - max(committed) if committed and max(committed) > 0 else None
        line = format_change(change, colour=self._interactive)
        with self._lock:
            self._changes += 1
            if change.kind == profile_pb2.CHANGE_KIND_MERGED:
                self._merges += 1
            self._last_sequence = change.sequence
            self._recent.append((time.monotonic(), lag))
            if lag is not None:
                self._lag_s = lag
            if self._interactive:
                self._out.write(f"\r\x1b[K{line}\n{self._summary}")
            else:
                self._out.write(f"{line}\n")
            self._out.flush()

    def _summary_text(self) -> str:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - _WINDOW_S:
            self._recent.popleft()
        rate = len(self._recent) / _WINDOW_S
        lags = sorted(lag for _, lag in self._recent if lag is not None)
        lag = lags[len(lags) // 2] if lags else self._lag_s
        parts = [
            f"profiles {self._profiles:,}" if self._profiles is not None else "profiles ?",
            f"merges {self._merges:,}",
            f"{rate:,.1f} changes/s",
            f"lag {lag * 1000:,.0f} ms" if lag is not None else "lag -",
            f"seq {self._last_sequence:,}",
        ]
        if self._activity is not None:
            done = sum(self._activity().values())
            rate_text = f" at {self._simulator_rate:g}/s" if self._simulator_rate else ""
            parts.append(f"simulator{rate_text}: {done:,} activities")
        return " │ ".join(parts)


__all__ = ["LiveView", "format_change"]
