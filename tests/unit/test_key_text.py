"""Unit tests for the text steward overrides store record keys as (server/store/rows.py).

Stored overrides are matched by this text, so the fast path must write exactly what the
standard library wrote when they were stored: the same escapes, every character.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from unified_profile.server.engine.records import RecordKey
from unified_profile.server.store.rows import key_text, parse_key_text

# Plain ASCII (the fast path), its edges (controls, quotes, backslash, DEL), and beyond ASCII.
_TEXT = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12),
    st.text(alphabet='a"\\\x00\x1f\x7f\x80é€😀', max_size=6),
    st.text(max_size=8),
)


@given(_TEXT, _TEXT, _TEXT)
def test_key_text_is_the_standard_librarys_compact_ascii_json(
    source: str, table: str, key: str
) -> None:
    record_key = RecordKey(source, table, key)
    text = key_text(record_key)
    assert text == json.dumps([source, table, key], separators=(",", ":"))
    assert parse_key_text(text) == record_key


def test_a_lone_surrogate_is_escaped_not_refused() -> None:
    assert key_text(RecordKey("crm", "t", "\ud800")) == '["crm","t","\\ud800"]'
