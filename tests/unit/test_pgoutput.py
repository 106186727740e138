"""Unit tests for the pgoutput decoder: messages are built by hand with struct.pack."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unified_profile.cdc.errors import DecodeError
from unified_profile.cdc.model import (
    UNCHANGED_TOAST,
    Begin,
    ColumnValue,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    RelationColumn,
    Truncate,
    TypeMessage,
    Update,
)
from unified_profile.cdc.pgoutput import PG_EPOCH_OFFSET_US, decode_message

MAX_U64 = 2**64 - 1
MAX_U32 = 2**32 - 1

# 2024-01-01T00:00:00Z: 757382400 s after the PostgreSQL epoch, 1704067200 s after the Unix epoch.
NEW_YEAR_2024_PG_US = 757_382_400_000_000
NEW_YEAR_2024_UNIX_US = 1_704_067_200_000_000

_US = timedelta(microseconds=1)

MESSAGE_TYPES = (
    Begin, Commit, Origin, Relation, TypeMessage, Insert, Update, Delete, Truncate, LogicalMessage
)


# --- builders ----------------------------------------------------------------------------------


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\0"


def col(value: ColumnValue) -> bytes:
    """One TupleData column: str → 't', bytes → 'b', None → 'n', UNCHANGED_TOAST → 'u'."""
    if value is None:
        return b"n"
    if value is UNCHANGED_TOAST:
        return b"u"
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"t" + struct.pack(">I", len(raw)) + raw
    assert isinstance(value, bytes)
    return b"b" + struct.pack(">I", len(value)) + value


def tuple_data(*values: ColumnValue) -> bytes:
    return struct.pack(">H", len(values)) + b"".join(col(v) for v in values)


def begin(final_lsn: int, ts: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, ts, xid)


def commit(flags: int, commit_lsn: int, end_lsn: int, ts: int) -> bytes:
    return b"C" + struct.pack(">BQQq", flags, commit_lsn, end_lsn, ts)


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack(">Q", lsn) + cstr(name)


def relation(
    oid: int, schema: str, name: str, ident: str, columns: list[tuple[int, str, int, int]]
) -> bytes:
    out = b"R" + struct.pack(">I", oid) + cstr(schema) + cstr(name)
    out += ident.encode("ascii") + struct.pack(">H", len(columns))
    for flags, col_name, type_oid, typmod in columns:
        out += struct.pack(">B", flags) + cstr(col_name) + struct.pack(">Ii", type_oid, typmod)
    return out


def type_msg(oid: int, schema: str, name: str) -> bytes:
    return b"Y" + struct.pack(">I", oid) + cstr(schema) + cstr(name)


def insert(oid: int, *values: ColumnValue) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tuple_data(*values)


def update(
    oid: int, new: tuple[ColumnValue, ...], old: tuple[ColumnValue, ...] | None = None,
    old_kind: bytes = b"K",
) -> bytes:
    out = b"U" + struct.pack(">I", oid)
    if old is not None:
        out += old_kind + tuple_data(*old)
    return out + b"N" + tuple_data(*new)


def delete(oid: int, kind: bytes, *values: ColumnValue) -> bytes:
    return b"D" + struct.pack(">I", oid) + kind + tuple_data(*values)


def truncate(options: int, *oids: int) -> bytes:
    return b"T" + struct.pack(f">IB{len(oids)}I", len(oids), options, *oids)


def message(flags: int, lsn: int, prefix: str, content: bytes) -> bytes:
    head = b"M" + struct.pack(">BQ", flags, lsn) + cstr(prefix)
    return head + struct.pack(">I", len(content)) + content


# One well-formed example of every message type (used for truncation and fuzzing).
SAMPLES: dict[str, bytes] = {
    "begin": begin(0x16B3748, NEW_YEAR_2024_PG_US, 768),
    "commit": commit(0, 0x16B3748, 0x16B3778, NEW_YEAR_2024_PG_US),
    "origin": origin(0xABCDEF, "node-ä"),
    "relation": relation(
        16403, "public", "kundé", "d", [(1, "id", 23, -1), (0, "näme", 25, -1), (0, "n", 1700, 6)]
    ),
    "type": type_msg(16399, "public", "mood"),
    "insert": insert(16403, "1", None, UNCHANGED_TOAST, b"\x00\xff", "héllo ☃"),
    "update": update(16403, ("1", "new"), ("1", "old"), b"O"),
    "delete": delete(16403, b"K", "1", None),
    "truncate": truncate(3, 16403, 16410),
    "message": message(1, 0x16B3748, "pfx☃", b"\x00payload"),
}


# --- each message type -------------------------------------------------------------------------


def test_begin() -> None:
    msg = decode_message(begin(MAX_U64, NEW_YEAR_2024_PG_US, MAX_U32))
    assert isinstance(msg, Begin)
    assert msg.final_lsn == MAX_U64
    assert msg.commit_time_us == NEW_YEAR_2024_UNIX_US
    assert msg.xid == MAX_U32


def test_commit() -> None:
    msg = decode_message(commit(0, 0x16B3748, MAX_U64, NEW_YEAR_2024_PG_US + 123_456))
    assert isinstance(msg, Commit)
    assert msg.flags == 0
    assert msg.commit_lsn == 0x16B3748
    assert msg.end_lsn == MAX_U64
    assert msg.commit_time_us == NEW_YEAR_2024_UNIX_US + 123_456


@pytest.mark.parametrize(
    "when",
    [
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=UTC),
    ],
)
def test_commit_time_is_unix_microseconds(when: datetime) -> None:
    unix_us = (when - datetime(1970, 1, 1, tzinfo=UTC)) // _US
    pg_us = (when - datetime(2000, 1, 1, tzinfo=UTC)) // _US
    msg = decode_message(begin(1, pg_us, 1))
    assert isinstance(msg, Begin)
    assert msg.commit_time_us == unix_us
    assert datetime.fromtimestamp(msg.commit_time_us / 1e6, UTC) == when


def test_epoch_offset() -> None:
    unix_seconds = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    assert unix_seconds * 1_000_000 == PG_EPOCH_OFFSET_US


def test_origin() -> None:
    msg = decode_message(origin(0xABCDEF, "node-ä"))
    assert msg == Origin(commit_lsn=0xABCDEF, name="node-ä")


def test_relation() -> None:
    data = relation(
        16403,
        "schéma",
        "Kunden_Übersicht",
        "f",
        [(1, "id", 23, -1), (0, "näme ☃", 25, -1), (0, "amount", 1700, 655366)],
    )
    msg = decode_message(data)
    assert isinstance(msg, Relation)
    assert msg.oid == 16403
    assert msg.schema == "schéma"
    assert msg.name == "Kunden_Übersicht"
    assert msg.replica_identity == "f"
    assert msg.columns == (
        RelationColumn(flags=1, name="id", type_oid=23, type_modifier=-1),
        RelationColumn(flags=0, name="näme ☃", type_oid=25, type_modifier=-1),
        RelationColumn(flags=0, name="amount", type_oid=1700, type_modifier=655366),
    )


@pytest.mark.parametrize("ident", ["d", "n", "f", "i"])
def test_relation_replica_identity_and_empty_namespace(ident: str) -> None:
    # pgoutput sends an empty namespace for pg_catalog; a table may have no columns.
    msg = decode_message(relation(MAX_U32, "", "t", ident, []))
    assert msg == Relation(oid=MAX_U32, schema="", name="t", replica_identity=ident, columns=())


def test_type() -> None:
    msg = decode_message(type_msg(16399, "public", "stimmung_ä"))
    assert msg == TypeMessage(oid=16399, schema="public", name="stimmung_ä")


def test_insert_every_column_kind() -> None:
    data = insert(16403, "42", None, UNCHANGED_TOAST, b"\x00\x01\xff", "", "héllo ☃ 🎉")
    msg = decode_message(data)
    assert isinstance(msg, Insert)
    assert msg.relation_oid == 16403
    assert msg.new == ("42", None, UNCHANGED_TOAST, b"\x00\x01\xff", "", "héllo ☃ 🎉")
    assert isinstance(msg.new[0], str)
    assert isinstance(msg.new[3], bytes)
    assert msg.new[2] is UNCHANGED_TOAST


def test_insert_binary_columns_are_bytes() -> None:
    msg = decode_message(insert(1, struct.pack(">i", 7), b""))
    assert isinstance(msg, Insert)
    assert msg.new == (b"\x00\x00\x00\x07", b"")


def test_insert_no_columns() -> None:
    assert decode_message(insert(1)) == Insert(relation_oid=1, new=())


def test_update_without_old_tuple() -> None:
    msg = decode_message(update(16403, ("1", "new", UNCHANGED_TOAST)))
    assert isinstance(msg, Update)
    assert msg.relation_oid == 16403
    assert msg.new == ("1", "new", UNCHANGED_TOAST)
    assert msg.old is None
    assert msg.old_kind is None


def test_update_with_key_tuple() -> None:
    msg = decode_message(update(16403, ("2", "x"), ("1", None), b"K"))
    assert isinstance(msg, Update)
    assert msg.new == ("2", "x")
    assert msg.old == ("1", None)
    assert msg.old_kind == "K"


def test_update_with_old_tuple() -> None:
    msg = decode_message(update(16403, ("1", "neu", b"\x01"), ("1", "alt ä", None), b"O"))
    assert isinstance(msg, Update)
    assert msg.new == ("1", "neu", b"\x01")
    assert msg.old == ("1", "alt ä", None)
    assert msg.old_kind == "O"


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(kind: str) -> None:
    msg = decode_message(delete(16403, kind.encode(), "1", None, "ü"))
    assert isinstance(msg, Delete)
    assert msg.relation_oid == 16403
    assert msg.old == ("1", None, "ü")
    assert msg.old_kind == kind


@pytest.mark.parametrize(
    ("options", "cascade", "restart_identity"),
    [(0, False, False), (1, True, False), (2, False, True), (3, True, True)],
)
def test_truncate_flags(options: int, cascade: bool, restart_identity: bool) -> None:
    msg = decode_message(truncate(options, 16403, 16410, MAX_U32))
    assert isinstance(msg, Truncate)
    assert msg.relation_oids == (16403, 16410, MAX_U32)
    assert msg.cascade is cascade
    assert msg.restart_identity is restart_identity


def test_truncate_no_relations() -> None:
    msg = decode_message(truncate(0))
    assert msg == Truncate(relation_oids=(), cascade=False, restart_identity=False)


@pytest.mark.parametrize(("flags", "transactional"), [(0, False), (1, True)])
def test_logical_message(flags: int, transactional: bool) -> None:
    msg = decode_message(message(flags, MAX_U64, "präfix", b"\x00\xffdata"))
    assert isinstance(msg, LogicalMessage)
    assert msg.transactional is transactional
    assert msg.lsn == MAX_U64
    assert msg.prefix == "präfix"
    assert msg.content == b"\x00\xffdata"
    assert type(msg.content) is bytes


def test_logical_message_empty_content() -> None:
    msg = decode_message(message(0, 5, "", b""))
    assert msg == LogicalMessage(transactional=False, lsn=5, prefix="", content=b"")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_memoryview_input_decodes_like_bytes(name: str) -> None:
    data = SAMPLES[name]
    # The way the replication adapter sees it: a view past the 25-byte XLogData header.
    framed = memoryview(b"w" + bytes(24) + data)[25:]
    assert decode_message(framed) == decode_message(data)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cut"),
    [(name, cut) for name, data in sorted(SAMPLES.items()) for cut in range(1, len(data))],
)
def test_truncated_input_raises_decode_error(name: str, cut: int) -> None:
    data = SAMPLES[name]
    with pytest.raises(DecodeError) as info:
        decode_message(data[:cut])
    text = str(info.value)
    assert repr(chr(data[0])) in text
    assert "offset" in text


def test_truncated_error_names_the_offset() -> None:
    data = insert(16403, "abc", "defgh")
    with pytest.raises(DecodeError, match=r"'I' .*Insert.* offset 16: truncated in column 1"):
        decode_message(data[:-2])


def test_truncated_fixed_size_message() -> None:
    with pytest.raises(DecodeError, match=r"'B' .*Begin.* offset 10: truncated"):
        decode_message(SAMPLES["begin"][:10])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_trailing_bytes_raise_decode_error(name: str) -> None:
    data = SAMPLES[name]
    with pytest.raises(DecodeError, match=rf"offset {len(data)}: 1 unexpected trailing bytes"):
        decode_message(data + b"\0")


def test_empty_input() -> None:
    with pytest.raises(DecodeError, match="offset 0: empty"):
        decode_message(b"")


@pytest.mark.parametrize("type_byte", [b"Z", b"\x00", b"\xff", b"S", b"b"])
def test_unknown_message_type(type_byte: bytes) -> None:
    with pytest.raises(DecodeError, match=rf"0x{type_byte[0]:02x}.*offset 0: unknown message type"):
        decode_message(type_byte + b"\0" * 20)


def test_unknown_tuple_column_kind() -> None:
    data = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 2) + col("a") + b"x"
    with pytest.raises(DecodeError, match=r"offset 14: unknown tuple column kind 'x' .*column 1"):
        decode_message(data)


@pytest.mark.parametrize(
    "data",
    [
        b"I" + struct.pack(">I", 1) + b"K" + tuple_data("1"),
        b"U" + struct.pack(">I", 1) + b"X" + tuple_data("1"),
        b"U" + struct.pack(">I", 1) + b"K" + tuple_data("1") + b"K" + tuple_data("1"),
        b"D" + struct.pack(">I", 1) + b"N" + tuple_data("1"),
    ],
)
def test_unknown_tuple_kind(data: bytes) -> None:
    with pytest.raises(DecodeError, match="unknown tuple kind"):
        decode_message(data)


def test_invalid_utf8_in_text_column() -> None:
    bad = b"ok\xff"
    data = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t"
    data += struct.pack(">I", len(bad)) + bad
    # The column's kind byte is at offset 8, its value at 13, the bad byte at 15.
    with pytest.raises(DecodeError, match=r"'I' .*offset 15: invalid UTF-8 in column 0 of the new"):
        decode_message(data)


def test_invalid_utf8_in_old_tuple() -> None:
    data = update(1, ("1",)).replace(b"U\0\0\0\x01", b"U\0\0\0\x01O" + tuple_data("\u00e4"))
    data = data.replace("\u00e4".encode(), b"\xc3\x28")
    with pytest.raises(DecodeError, match="invalid UTF-8 in column 0 of the old tuple"):
        decode_message(data)


@pytest.mark.parametrize(
    "data",
    [
        relation(1, "public", "ok", "d", []).replace(b"ok", b"o\xff"),
        type_msg(1, "\xe4", "t").replace("\xe4".encode(), b"\xe4"),
        origin(1, "ok").replace(b"ok", b"\xc0\xaf"),
        message(0, 1, "ok", b"").replace(b"ok", b"\xed\xa0"),
    ],
)
def test_invalid_utf8_in_names(data: bytes) -> None:
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        decode_message(data)


def test_logical_message_content_need_not_be_utf8() -> None:
    msg = decode_message(message(0, 1, "p", b"\xff\xfe"))
    assert isinstance(msg, LogicalMessage)
    assert msg.content == b"\xff\xfe"


def test_string_without_terminating_nul() -> None:
    with pytest.raises(DecodeError, match="no terminating NUL"):
        decode_message(b"Y" + struct.pack(">I", 1) + b"public")


def test_huge_length_is_truncation_not_allocation() -> None:
    column = b"t" + struct.pack(">I", MAX_U32) + b"abc"
    with pytest.raises(DecodeError, match="truncated"):
        decode_message(b"I" + struct.pack(">IcH", 1, b"N", 1) + column)
    with pytest.raises(DecodeError, match="truncated"):
        decode_message(b"T" + struct.pack(">IB", MAX_U32, 0))


# --- fuzzing -----------------------------------------------------------------------------------

_TYPE_BYTES = [bytes([data[0]]) for data in SAMPLES.values()]


def _mutated_sample() -> st.SearchStrategy[bytes]:
    """A valid sample with one byte replaced, or cut short, or with bytes appended."""

    def mutate(data: bytes, pos: int, byte: int, how: int, tail: bytes) -> bytes:
        pos %= len(data)
        if how == 0:
            return data[:pos] + bytes([byte]) + data[pos + 1 :]
        if how == 1:
            return data[:pos]
        return data + tail

    return st.builds(
        mutate,
        st.sampled_from(list(SAMPLES.values())),
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=255),
        st.integers(min_value=0, max_value=2),
        st.binary(max_size=8),
    )


@given(
    st.one_of(
        st.binary(max_size=64),
        st.builds(bytes.__add__, st.sampled_from(_TYPE_BYTES), st.binary(max_size=64)),
        _mutated_sample(),
    )
)
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except DecodeError:
        return
    assert isinstance(msg, MESSAGE_TYPES)
