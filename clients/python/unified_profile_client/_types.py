"""The client's own request values, and how they become protobuf messages.

Results are the API's protobuf messages themselves (``Profile``, ``ProfileChange``, ...): they are
typed by the generated ``.pyi`` stubs and carry every documented field, so the client does not
copy them into look-alike classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

from google.protobuf import field_mask_pb2

from unified_profile.v1 import profile_pb2, profile_service_pb2

ChangeKindName: TypeAlias = Literal["CREATED", "UPDATED", "MERGED", "SPLIT", "DELETED"]
"""A change kind by name (``ChangeKind.CHANGE_KIND_UPDATED`` is ``"UPDATED"``)."""

CHANGE_KIND_NAMES: tuple[ChangeKindName, ...] = get_args(ChangeKindName)

WatchStart: TypeAlias = Literal["earliest", "latest"] | int
"""Where a watch starts: the oldest retained change, only new changes, or after a sequence."""


@dataclass(frozen=True, slots=True)
class IdentifierRef:
    """A profile named by one of its identifiers, for :meth:`ProfileClient.batch_get`.

    Attributes:
        type: The identifier type (``email``, ``crm_id``, ...).
        value: The value as a system knows it; the server normalises it as ingest does.
    """

    type: str
    value: str


ProfileRefLike: TypeAlias = str | IdentifierRef
"""A profile id (or alias), or an identifier."""


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    """Which changes a watch receives; an empty criterion matches everything.

    Attributes:
        kinds: Only these kinds.
        field_paths: Only changes touching these paths (``loyalty.tier``, ``consent.*``); CREATED,
            MERGED, SPLIT and DELETED match any path filter.
        sources: Only changes caused by these sources (``crm``, ``loyalty``, ``steward``).
    """

    kinds: tuple[ChangeKindName, ...] = ()
    field_paths: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in CHANGE_KIND_NAMES]
        if unknown:
            raise ValueError(
                f"unknown change kind {unknown[0]!r}; one of {', '.join(CHANGE_KIND_NAMES)}"
            )

    def to_proto(self) -> profile_service_pb2.ChangeFilter:
        """The ``ChangeFilter`` message."""
        return profile_service_pb2.ChangeFilter(
            kinds=[profile_pb2.ChangeKind.Value(f"CHANGE_KIND_{k}") for k in self.kinds],
            field_paths=list(self.field_paths),
            sources=list(self.sources),
        )


def change_kind_name(kind: profile_pb2.ChangeKind.ValueType) -> str:
    """``CHANGE_KIND_UPDATED`` → ``"UPDATED"`` (the number itself for a kind newer than us)."""
    try:
        return profile_pb2.ChangeKind.Name(kind).removeprefix("CHANGE_KIND_")
    except ValueError:
        return str(int(kind))


def field_mask(fields: Iterable[str] | None) -> field_mask_pb2.FieldMask | None:
    """A field mask of ``fields``; ``None`` (every field) when not given."""
    if fields is None:
        return None
    if isinstance(fields, str):
        # A lone string would otherwise become a mask of its characters.
        raise TypeError("fields must be a collection of paths, not one string")
    return field_mask_pb2.FieldMask(paths=list(fields))


def profile_ref(ref: ProfileRefLike) -> profile_service_pb2.ProfileRef:
    """The ``ProfileRef`` message of a profile id or an :class:`IdentifierRef`."""
    if isinstance(ref, IdentifierRef):
        return profile_service_pb2.ProfileRef(
            identifier=profile_pb2.Identifier(type=ref.type, value=ref.value)
        )
    if isinstance(ref, str):
        return profile_service_pb2.ProfileRef(profile_id=ref)
    raise TypeError(f"a profile ref is a profile id (str) or an IdentifierRef, not {ref!r}")


CHANGES_PER_MESSAGE = 500
"""How many waiting changes a subscription may receive in one message (the server's limit: 1,000).

Receiving a message costs far more than reading one more change from it, so a subscriber that
falls behind catches up in fewer, larger messages.
"""


def subscribe_request(
    start: WatchStart,
    change_filter: ChangeFilter | None,
    include_profile: bool,
    heartbeat_seconds: int | None,
) -> profile_service_pb2.SubscribeProfileChangesRequest:
    """The ``SubscribeProfileChangesRequest`` for a start and its options."""
    Start = profile_service_pb2.SubscribeProfileChangesRequest.Start
    request = profile_service_pb2.SubscribeProfileChangesRequest(
        include_profile=include_profile,
        heartbeat_seconds=heartbeat_seconds or 0,
        max_changes_per_message=CHANGES_PER_MESSAGE,
    )
    if change_filter is not None:
        request.filter.CopyFrom(change_filter.to_proto())
    if start == "earliest":
        request.start = Start.START_EARLIEST
    elif start == "latest":
        request.start = Start.START_LATEST
    elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        request.start = Start.START_AFTER_SEQUENCE
        request.after_sequence = start
    else:
        raise ValueError(f"start must be 'earliest', 'latest' or a sequence >= 0, not {start!r}")
    return request



__all__ = [
    "CHANGES_PER_MESSAGE",
    "CHANGE_KIND_NAMES",
    "ChangeFilter",
    "ChangeKindName",
    "IdentifierRef",
    "ProfileRefLike",
    "WatchStart",
    "change_kind_name",
    "field_mask",
    "profile_ref",
    "subscribe_request",
]
