"""The change feed: the change log read once per server process and fanned out to subscriptions.

Changes are read after the last published sequence, converted once and offered to every live
subscription whose :class:`ChangeFilter` matches; a subscription whose buffer is full reads the log
itself until it has caught up (:mod:`.change_feed` explains the ordering).
"""

from .change_feed import ChangeFeed, ChangeFeedConfig, FeedStats, StartAt
from .errors import CursorOutOfRange, FeedClosed, FeedError, FeedUnavailable
from .filters import (
    CHANGE_KINDS,
    STEWARD_SOURCE,
    ChangeFilter,
    ChangeTraits,
    InvalidFilter,
    PathPattern,
    cause_source,
)
from .listener import ListenerConfig
from .subscription import FeedEntry, Heartbeat, Subscription

__all__ = [
    "CHANGE_KINDS",
    "STEWARD_SOURCE",
    "ChangeFeed",
    "ChangeFeedConfig",
    "ChangeFilter",
    "ChangeTraits",
    "CursorOutOfRange",
    "FeedClosed",
    "FeedEntry",
    "FeedError",
    "FeedStats",
    "FeedUnavailable",
    "Heartbeat",
    "InvalidFilter",
    "ListenerConfig",
    "PathPattern",
    "StartAt",
    "Subscription",
    "cause_source",
]
