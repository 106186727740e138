"""Unit tests for server/engine/records.py: keys, their order and canonical JSON."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from unified_profile.server.engine.records import RecordKey, canonical_json, key_order

_TEXT = st.text(alphabet='ab{}":1é', max_size=4)


@given(st.lists(st.builds(RecordKey, _TEXT, _TEXT, _TEXT), max_size=30))
def test_key_order_sorts_like_the_keys(keys: list[RecordKey]) -> None:
    assert sorted(keys, key=key_order) == sorted(keys)


def test_canonical_json_is_compact_sorted_and_keeps_non_ascii() -> None:
    value = {"b": [1, 2.5, None, True], "a": "é", "c": {"y": 1, "x": "\x00"}}
    assert canonical_json(value) == '{"a":"é","b":[1,2.5,null,true],"c":{"x":"\\u0000","y":1}}'
    items = list(value.items())
    random.Random(1).shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)
