"""Stream messages assembled from changes encoded once read back as the changes, in order."""

from __future__ import annotations

import random

import pytest

from unified_profile.server.rpc.change_encoding import (
    accepting_encoded,
    batch_messages,
    single_message,
)
from unified_profile.v1 import profile_pb2, profile_service_pb2

Response = profile_service_pb2.SubscribeProfileChangesResponse


def change(sequence: int, value_bytes: int) -> profile_pb2.ProfileChange:
    message = profile_pb2.ProfileChange(
        sequence=sequence, profile_id=f"p-{sequence}", kind=profile_pb2.CHANGE_KIND_UPDATED
    )
    field = message.changes.add(path="traits.note")
    field.new_value.string_value = "x" * value_bytes
    return message


# Sizes either side of each varint length boundary (1, 2 and 3 bytes of length).
SIZES = (0, 100, 127, 128, 16_383, 16_384, 70_000)


@pytest.mark.parametrize("value_bytes", SIZES)
def test_a_single_message_reads_back_as_its_change(value_bytes):
    original = change(7, value_bytes)
    response = Response.FromString(single_message(original.SerializeToString()))
    assert response.WhichOneof("message") == "change"
    assert response.change == original


def test_batches_read_back_as_every_change_in_order():
    rng = random.Random(5)
    originals = [change(i, rng.choice(SIZES)) for i in range(1, 120)]
    messages = list(batch_messages([c.SerializeToString() for c in originals], max_bytes=200_000))
    received = []
    for raw in messages:
        response = Response.FromString(raw)
        assert response.WhichOneof("message") == "changes"
        received.extend(response.changes.changes)
    assert received == originals
    assert len(messages) > 1


def test_a_batch_is_cut_before_it_exceeds_the_limit():
    encoded = [change(i, 1_000).SerializeToString() for i in range(50)]
    limit = 10_000
    messages = list(batch_messages(encoded, max_bytes=limit))
    per_message = [len(Response.FromString(m).changes.changes) for m in messages]
    assert sum(per_message) == 50
    # The limit counts the changes; the message adds its own few header bytes.
    assert all(len(m) <= limit + 8 for m in messages)
    assert min(per_message[:-1]) > 1  # full messages, not one change each


def test_a_change_larger_than_the_limit_goes_alone():
    small, large = change(1, 10), change(2, 50_000)
    messages = list(batch_messages(
        [small.SerializeToString(), large.SerializeToString(), small.SerializeToString()],
        max_bytes=1_000,
    ))
    assert [list(Response.FromString(m).changes.changes) for m in messages] == [
        [small], [large], [small]
    ]


def test_the_serializer_passes_encoded_messages_through_and_serializes_the_rest():
    serialize = accepting_encoded(Response.SerializeToString)
    heartbeat = Response(heartbeat=profile_service_pb2.Heartbeat(head_sequence=9))
    assert serialize(b"\x0a\x00") == b"\x0a\x00"
    assert Response.FromString(serialize(heartbeat)) == heartbeat
