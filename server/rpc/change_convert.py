"""Change-log entries as ``SubscribeProfileChanges`` stream messages.

The change feed converts each change once with :func:`subscribe_response` and shares the message
between every subscriber it goes to; so a message returned here is never mutated afterwards, and a
subscriber that wants the profile gets a copy (:func:`with_profile`). The field-level conversions
(``ProfileChange``, ``Profile``) are the service's own, in :mod:`.convert`, so a change reads the same
in GetProfileHistory and in a subscription.
"""

from __future__ import annotations

from typing import TypeAlias

from unified_profile.v1 import profile_service_pb2

from ..store.profile_store import StoredProfile
from .convert import ChangeLike, change_to_proto, fill_profile

Response: TypeAlias = profile_service_pb2.SubscribeProfileChangesResponse


def subscribe_response(change: ChangeLike) -> Response:
    """A change as the stream message subscribers receive (the change feed's converter).

    Pure and thread-safe: the feed calls it in a worker thread.
    """
    return profile_service_pb2.SubscribeProfileChangesResponse(change=change_to_proto(change))


def with_profile(shared: Response, profile: StoredProfile | None) -> Response:
    """A copy of a shared change message with ``profile`` attached (unchanged copy when ``None``)."""
    response = profile_service_pb2.SubscribeProfileChangesResponse()
    response.change.CopyFrom(shared.change)
    if profile is not None:
        fill_profile(response.change.profile, profile)
    return response
