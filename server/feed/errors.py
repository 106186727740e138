"""Errors of the change feed (the rpc edge maps them to status codes)::

    FeedError
    ├── CursorOutOfRange     the start is older than retention, or beyond the head
    └── FeedUnavailable      the change log cannot be read now; retry with backoff
        └── FeedClosed       the feed is shutting down; resume after the last sequence received
"""

from __future__ import annotations


class FeedError(Exception):
    """The change feed cannot serve a subscription."""


class CursorOutOfRange(FeedError):
    """A subscription cannot start (or continue) after this sequence.

    Attributes:
        after: The requested position (the last sequence the subscriber has).
        oldest: The oldest sequence the change log still holds (``head + 1`` when it holds none).
        head: The newest sequence committed.
    """

    def __init__(self, after: int, oldest: int, head: int) -> None:
        self.after = after
        self.oldest = oldest
        self.head = head
        self.expired = after < oldest - 1
        if self.expired:
            retained = (
                f"the oldest retained change is {oldest}"
                if oldest <= head
                else f"the change log retains none; its head is {head}"
            )
            reason = f"changes after sequence {after} are no longer retained ({retained})"
        else:
            reason = f"sequence {after} is beyond the change log's head ({head})"
        super().__init__(reason)


class FeedUnavailable(FeedError):
    """The change log cannot be read now (the store is unreachable); retry with backoff."""


class FeedClosed(FeedUnavailable):
    """The feed is shutting down."""
