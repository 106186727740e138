"""Request field checks: profile ids are opaque, but never blank, overlong, or spaced."""

from __future__ import annotations

import pytest

from unified_profile.server.rpc.errors import InvalidArgument
from unified_profile.server.rpc.validation import MAX_ID_LENGTH, validate_profile_id


@pytest.mark.parametrize("value", ["p_6fc0a9b46a225288a0fd3fcf", "p-ü-中", "x" * MAX_ID_LENGTH])
def test_a_profile_id_is_taken_as_given(value):
    assert validate_profile_id(value, "profile_id") == value


@pytest.mark.parametrize(
    "value",
    [
        "", "p 1", " p1", "p1\t", "p\n1", "p\r1", "p\x0b1", "p\x0c1", "p\x1c1", "p\x851",
        "p\u00a01", "p\u20031", "p\u30001", "p\u20281", "p\u20291", "p\x001", "p\u200b1",
        "x" * (MAX_ID_LENGTH + 1),
    ],
)
def test_a_profile_id_with_any_whitespace_or_control_character_is_refused(value):
    with pytest.raises(InvalidArgument) as info:
        validate_profile_id(value, "profile_id")
    assert "profile_id" in str(info.value)
