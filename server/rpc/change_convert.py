"""Change-log entries as ``SubscribeProfileChanges`` stream content, converted once.

The change feed converts each change once with :func:`subscribe_response` (a ``ProfileChange``
and its encoding) and shares it between every subscriber it goes to; so what is returned here is
never mutated afterwards, and a subscriber that wants the profile gets a copy
(:func:`with_profile`). Stream messages are assembled from the encodings
(:mod:`.change_encoding`). The field-level conversions (``ProfileChange``, ``Profile``) are the
service's own, in :mod:`.convert`, so a change reads the same in GetProfileHistory and in a
subscription.
"""

from __future__ import annotations

from dataclasses import dataclass

from unified_profile.v1 import profile_pb2

from ..store.profile_store import StoredProfile
from .convert import ChangeLike, change_to_proto, fill_profile


@dataclass(frozen=True, slots=True)
class EncodedChange:
    """A change converted once for every subscriber.

    Attributes:
        message: The change (shared: never mutate it).
        encoded: ``message`` serialized.
    """

    message: profile_pb2.ProfileChange
    encoded: bytes


def subscribe_response(change: ChangeLike) -> EncodedChange:
    """A change as subscribers receive it (the change feed's converter).

    Pure and thread-safe: the feed calls it in a worker thread.
    """
    message = change_to_proto(change)
    return EncodedChange(message, message.SerializeToString())


def with_profile(shared: EncodedChange, profile: StoredProfile | None) -> bytes:
    """The shared change, encoded with ``profile`` attached (as it is when ``None``)."""
    if profile is None:
        return shared.encoded
    change = profile_pb2.ProfileChange()
    change.CopyFrom(shared.message)
    fill_profile(change.profile, profile)
    return change.SerializeToString()
