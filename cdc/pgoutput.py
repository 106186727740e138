"""Decode the messages of PostgreSQL's ``pgoutput`` logical replication plugin (protocol version 1).

Pure functions, no I/O: one message's bytes in, one frozen dataclass from :mod:`.model` out. The
layouts are those of the PostgreSQL documentation, "Logical Replication Message Formats". Tuple
columns arrive in text format (``str``) unless the slot was started with ``binary 'true'``
(``bytes``). Anything that is not a well-formed message raises :class:`~.errors.DecodeError`, naming
the message type, the offset and the problem.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .errors import DecodeError
from .model import (
    UNCHANGED_TOAST,
    Begin,
    ColumnValue,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputMessage,
    Relation,
    RelationColumn,
    Truncate,
    TypeMessage,
    Update,
)

__all__ = ["PG_EPOCH_OFFSET_US", "decode_message"]

PG_EPOCH_OFFSET_US = 946_684_800_000_000
"""Microseconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01), both UTC."""

_BEGIN = struct.Struct(">QqI")  # final LSN, commit timestamp, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit timestamp
_ORIGIN_LSN = struct.Struct(">Q")
_OID = struct.Struct(">I")
_OID_KIND = struct.Struct(">IB")  # relation OID, then the first tuple kind ('N', 'K' or 'O')
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_REL_COLUMN_TYPE = struct.Struct(">Ii")  # type OID, atttypmod
_TRUNCATE_HEAD = struct.Struct(">IB")  # number of relations, options
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, LSN

_BEGIN_SIZE = 1 + _BEGIN.size
_COMMIT_SIZE = 1 + _COMMIT.size

_NEW = ord("N")
_KEY = ord("K")
_OLD = ord("O")

_TEXT = ord("t")
_NULL = ord("n")
_UNCHANGED = ord("u")
_BINARY = ord("b")

_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2

_NAMES = {
    ord("B"): "Begin",
    ord("C"): "Commit",
    ord("O"): "Origin",
    ord("R"): "Relation",
    ord("Y"): "Type",
    ord("I"): "Insert",
    ord("U"): "Update",
    ord("D"): "Delete",
    ord("T"): "Truncate",
    ord("M"): "Message",
}

_TUPLE_NAMES = {_NEW: "new tuple", _KEY: "key tuple", _OLD: "old tuple"}


def decode_message(data: bytes | memoryview) -> PgOutputMessage:
    """Decode one pgoutput message.

    Args:
        data: The payload of one XLogData message (what follows its 25-byte header), starting with
            the message type byte.

    Returns:
        The decoded message. Timestamps are converted to microseconds since the Unix epoch.

    Raises:
        DecodeError: ``data`` is empty, truncated, has trailing bytes, has an unknown message type
            or tuple kind, or holds text that is not valid UTF-8.
    """
    # One copy of a memoryview is cheaper than slicing views for every column, and lets the
    # decoders below use bytes.find and bytes.decode directly.
    buf = data if isinstance(data, bytes) else bytes(data)
    if not buf:
        raise DecodeError("pgoutput message at offset 0: empty, no message type byte")
    decoder = _DECODERS.get(buf[0])
    if decoder is None:
        raise _error(buf[0], 0, "unknown message type")
    return decoder(buf)


def _error(msg: int, off: int, problem: str) -> DecodeError:
    name = _NAMES.get(msg, "unknown")
    return DecodeError(
        f"pgoutput message {chr(msg)!r} (0x{msg:02x}, {name}) at offset {off}: {problem}"
    )


def _truncated(buf: bytes, off: int, what: str) -> DecodeError:
    return _error(buf[0], off, f"truncated in {what} (message is {len(buf)} bytes)")


def _check_end(buf: bytes, off: int) -> None:
    if off != len(buf):
        raise _error(buf[0], off, f"{len(buf) - off} unexpected trailing bytes")


def _check_size(buf: bytes, size: int) -> None:
    if len(buf) < size:
        raise _truncated(buf, len(buf), f"a fixed-size message of {size} bytes")
    _check_end(buf, size)


def _string(buf: bytes, off: int, what: str) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``off``; return it and the offset after the NUL."""
    nul = buf.find(b"\0", off)
    if nul < 0:
        raise _truncated(buf, off, f"{what} (no terminating NUL)")
    try:
        return buf[off:nul].decode("utf-8"), nul + 1
    except UnicodeDecodeError as exc:
        raise _error(buf[0], off + exc.start, f"invalid UTF-8 in {what}: {exc.reason}") from exc


def _tuple(buf: bytes, off: int, kind: int) -> tuple[tuple[ColumnValue, ...], int]:
    """Read TupleData at ``off``; return its values and the offset after it."""
    col = -1
    size = len(buf)
    values: list[ColumnValue] = []
    append = values.append
    try:
        (ncols,) = _U16.unpack_from(buf, off)
        off += 2
        for col in range(ncols):
            # ``off`` stays at the column's kind byte until the column is read, for error offsets.
            column_kind = buf[off]
            if column_kind == _TEXT:
                (length,) = _U32.unpack_from(buf, off + 1)
                start = off + 5
                stop = start + length
                if stop > size:
                    raise _truncated(buf, off, f"column {col} of the {_TUPLE_NAMES[kind]}")
                append(buf[start:stop].decode("utf-8"))
                off = stop
            elif column_kind == _NULL:
                append(None)
                off += 1
            elif column_kind == _UNCHANGED:
                append(UNCHANGED_TOAST)
                off += 1
            elif column_kind == _BINARY:
                (length,) = _U32.unpack_from(buf, off + 1)
                start = off + 5
                stop = start + length
                if stop > size:
                    raise _truncated(buf, off, f"column {col} of the {_TUPLE_NAMES[kind]}")
                append(buf[start:stop])
                off = stop
            else:
                raise _error(
                    buf[0],
                    off,
                    f"unknown tuple column kind {chr(column_kind)!r} (0x{column_kind:02x}) "
                    f"in column {col} of the {_TUPLE_NAMES[kind]}",
                )
    except (struct.error, IndexError) as exc:
        where = "column count" if col < 0 else f"column {col}"
        raise _truncated(buf, off, f"{where} of the {_TUPLE_NAMES[kind]}") from exc
    except UnicodeDecodeError as exc:
        raise _error(
            buf[0],
            off + 5 + exc.start,
            f"invalid UTF-8 in column {col} of the {_TUPLE_NAMES[kind]}: {exc.reason}",
        ) from exc
    return tuple(values), off


def _begin(buf: bytes) -> Begin:
    _check_size(buf, _BEGIN_SIZE)
    final_lsn, timestamp, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn, timestamp + PG_EPOCH_OFFSET_US, xid)


def _commit(buf: bytes) -> Commit:
    _check_size(buf, _COMMIT_SIZE)
    flags, commit_lsn, end_lsn, timestamp = _COMMIT.unpack_from(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, timestamp + PG_EPOCH_OFFSET_US)


def _origin(buf: bytes) -> Origin:
    try:
        (commit_lsn,) = _ORIGIN_LSN.unpack_from(buf, 1)
    except struct.error as exc:
        raise _truncated(buf, 1, "the commit LSN") from exc
    name, off = _string(buf, 9, "the origin name")
    _check_end(buf, off)
    return Origin(commit_lsn, name)


def _relation(buf: bytes) -> Relation:
    off = 1
    try:
        (oid,) = _OID.unpack_from(buf, off)
    except struct.error as exc:
        raise _truncated(buf, off, "the relation OID") from exc
    schema, off = _string(buf, off + 4, "the namespace")
    name, off = _string(buf, off, "the relation name")
    try:
        replica_identity = chr(buf[off])
        (ncols,) = _U16.unpack_from(buf, off + 1)
    except (struct.error, IndexError) as exc:
        raise _truncated(buf, off, "the replica identity and column count") from exc
    off += 3
    columns: list[RelationColumn] = []
    for col in range(ncols):
        if off >= len(buf):
            raise _truncated(buf, off, f"the flags of column {col}")
        flags = buf[off]
        column_name, off = _string(buf, off + 1, f"the name of column {col}")
        try:
            type_oid, type_modifier = _REL_COLUMN_TYPE.unpack_from(buf, off)
        except struct.error as exc:
            raise _truncated(buf, off, f"the type of column {col}") from exc
        off += _REL_COLUMN_TYPE.size
        columns.append(RelationColumn(flags, column_name, type_oid, type_modifier))
    _check_end(buf, off)
    return Relation(oid, schema, name, replica_identity, tuple(columns))


def _type(buf: bytes) -> TypeMessage:
    try:
        (oid,) = _OID.unpack_from(buf, 1)
    except struct.error as exc:
        raise _truncated(buf, 1, "the type OID") from exc
    schema, off = _string(buf, 5, "the namespace")
    name, off = _string(buf, off, "the type name")
    _check_end(buf, off)
    return TypeMessage(oid, schema, name)


def _oid_kind(buf: bytes) -> tuple[int, int]:
    try:
        oid, kind = _OID_KIND.unpack_from(buf, 1)
    except struct.error as exc:
        raise _truncated(buf, 1, "the relation OID and tuple kind") from exc
    return oid, kind


def _bad_tuple_kind(buf: bytes, off: int, kind: int, expected: str) -> DecodeError:
    return _error(
        buf[0], off, f"unknown tuple kind {chr(kind)!r} (0x{kind:02x}), expected {expected}"
    )


def _insert(buf: bytes) -> Insert:
    oid, kind = _oid_kind(buf)
    if kind != _NEW:
        raise _bad_tuple_kind(buf, 5, kind, "'N'")
    new, off = _tuple(buf, 6, kind)
    _check_end(buf, off)
    return Insert(oid, new)


def _update(buf: bytes) -> Update:
    oid, kind = _oid_kind(buf)
    off = 6
    old: tuple[ColumnValue, ...] | None = None
    old_kind: str | None = None
    if kind in (_KEY, _OLD):
        old, off = _tuple(buf, off, kind)
        old_kind = chr(kind)
        if off >= len(buf):
            raise _truncated(buf, off, "the new tuple kind")
        kind = buf[off]
        off += 1
        if kind != _NEW:
            raise _bad_tuple_kind(buf, off - 1, kind, "'N'")
    elif kind != _NEW:
        raise _bad_tuple_kind(buf, 5, kind, "'N', 'K' or 'O'")
    new, off = _tuple(buf, off, kind)
    _check_end(buf, off)
    return Update(oid, new, old, old_kind)


def _delete(buf: bytes) -> Delete:
    oid, kind = _oid_kind(buf)
    if kind not in (_KEY, _OLD):
        raise _bad_tuple_kind(buf, 5, kind, "'K' or 'O'")
    old, off = _tuple(buf, 6, kind)
    _check_end(buf, off)
    return Delete(oid, old, chr(kind))


def _truncate(buf: bytes) -> Truncate:
    try:
        count, options = _TRUNCATE_HEAD.unpack_from(buf, 1)
    except struct.error as exc:
        raise _truncated(buf, 1, "the relation count and options") from exc
    # Check the length before unpacking: a garbage count must not build a huge struct format.
    off = 1 + _TRUNCATE_HEAD.size
    end = off + 4 * count
    if end > len(buf):
        raise _truncated(buf, off, f"the {count} relation OIDs")
    _check_end(buf, end)
    oids = struct.unpack_from(f">{count}I", buf, off)
    return Truncate(
        oids,
        bool(options & _TRUNCATE_CASCADE),
        bool(options & _TRUNCATE_RESTART_IDENTITY),
    )


def _logical_message(buf: bytes) -> LogicalMessage:
    try:
        flags, lsn = _MESSAGE_HEAD.unpack_from(buf, 1)
    except struct.error as exc:
        raise _truncated(buf, 1, "the flags and LSN") from exc
    prefix, off = _string(buf, 1 + _MESSAGE_HEAD.size, "the prefix")
    try:
        (length,) = _U32.unpack_from(buf, off)
    except struct.error as exc:
        raise _truncated(buf, off, "the content length") from exc
    start = off + 4
    end = start + length
    if end > len(buf):
        raise _truncated(buf, start, f"the content of {length} bytes")
    _check_end(buf, end)
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[start:end])


_DECODERS: dict[int, Callable[[bytes], PgOutputMessage]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _logical_message,
}
