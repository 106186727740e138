"""Stored JSON → protobuf messages: profiles, field masks, change-log entries, record names.

A stored profile's document maps profile field paths (``loyalty.tier``) to values, and each path
to its contributors (:mod:`..store.profile_document`); the proto's field names were chosen to be
those paths, so a path is set by walking the message descriptors, with the value converted to the
field's type (text → ``Timestamp`` for instants). ``traits.<name>`` land in the ``traits`` map, and
each field's first contributor in ``provenance`` (ExplainProfile lists every contributor).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from google.protobuf import descriptor, field_mask_pb2, struct_pb2, timestamp_pb2

from unified_profile.v1 import profile_pb2

from ..engine.records import RecordKey, canonical_json
from ..store.profile_store import StoredProfile
from .errors import InvalidArgument

_TRAITS = "traits."
_FD = descriptor.FieldDescriptor
_CHANGE_KINDS = {
    "CREATED": profile_pb2.CHANGE_KIND_CREATED,
    "UPDATED": profile_pb2.CHANGE_KIND_UPDATED,
    "MERGED": profile_pb2.CHANGE_KIND_MERGED,
    "SPLIT": profile_pb2.CHANGE_KIND_SPLIT,
    "DELETED": profile_pb2.CHANGE_KIND_DELETED,
}
# Which related key names the other profile of each kind (see the applier).
_RELATED_KEYS = ("merged", "split_into", "split_from")


class ChangeLike(Protocol):
    """A change-log entry: :class:`~..store.rows.LoggedChange`."""

    @property
    def sequence(self) -> int: ...
    @property
    def profile_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def changes(self) -> dict[str, Any]: ...
    @property
    def related(self) -> dict[str, Any]: ...
    @property
    def cause(self) -> list[dict[str, Any]]: ...


# --- values -----------------------------------------------------------------------------------


def to_value(value: Any) -> struct_pb2.Value:
    """A JSON-compatible value as a ``google.protobuf.Value``."""
    out = struct_pb2.Value()
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        out.number_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, Mapping):
        out.struct_value.update(value)
    elif isinstance(value, list | tuple):
        out.list_value.extend(value)
    else:
        out.string_value = str(value)
    return out


def timestamp_from_us(micros: int) -> timestamp_pb2.Timestamp:
    """µs since 1970 → ``Timestamp``."""
    seconds, rest = divmod(int(micros), 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def timestamp_from_datetime(moment: datetime) -> timestamp_pb2.Timestamp:
    """An aware ``datetime`` → ``Timestamp``."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _set_from_datetime(out: timestamp_pb2.Timestamp, moment: datetime) -> None:
    # Timestamp.FromDatetime as integer arithmetic (it is pure Python, ~4x slower); a naive
    # datetime is UTC, as FromDatetime takes it.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds, micros = divmod((moment - _EPOCH) // _MICROSECOND, 1_000_000)
    out.seconds = seconds
    out.nanos = micros * 1000


def _timestamp_from_text(text: str) -> timestamp_pb2.Timestamp | None:
    out = timestamp_pb2.Timestamp()
    # datetime's C parser first (FromJsonString parses with strptime, ~10x slower), unless the
    # text has sub-microsecond digits, which fromisoformat would drop and FromJsonString keeps.
    _, dot, fraction = text.partition(".")
    if not dot or len(fraction) - len(fraction.lstrip("0123456789")) <= 6:
        try:
            _set_from_datetime(out, datetime.fromisoformat(text))
            return out
        except ValueError:
            pass
    try:
        out.FromJsonString(text)
    except ValueError:
        try:
            out.FromDatetime(datetime.fromisoformat(text))
        except ValueError:
            return None
    return out


# --- profiles ---------------------------------------------------------------------------------


_ProvenanceFields = tuple[str, str, str, int, int, str]


def _provenance_fields(entry: list[Any]) -> _ProvenanceFields:
    """What a ``Provenance`` holds of a stored contributor entry (source, table, record key,
    version, commit time in µs, rule: see :mod:`..store.profile_document`), each converted to
    its proto type."""
    source, table, record_key, version, commit_time_us, rule = entry
    return (
        str(source), str(table), str(record_key), int(version or 0), int(commit_time_us or 0),
        str(rule),
    )


def _provenance_message(fields: _ProvenanceFields) -> profile_pb2.Provenance:
    source, table, record_key, version, commit_time_us, rule = fields
    out = profile_pb2.Provenance(
        source=source, table=table, record_key=record_key, version=version, rule=rule
    )
    seconds, rest = divmod(commit_time_us, 1_000_000)
    out.committed_at.seconds = seconds
    out.committed_at.nanos = rest * 1000
    return out


_CONSENT_PATHS = tuple(
    (channel, (f"consent.{channel}.granted", f"consent.{channel}.updated_at"))
    for channel in ("email_marketing", "sms_marketing", "push")
)


def profile_to_proto(stored: StoredProfile) -> profile_pb2.Profile:
    """A stored profile as a ``Profile`` message (every field; see :func:`apply_field_mask`)."""
    profile = profile_pb2.Profile()
    fill_profile(profile, stored)
    return profile


def fill_profile(
    profile: profile_pb2.Profile, stored: StoredProfile, mask: ProfileMask | None = None
) -> None:
    """Write a stored profile, reduced to ``mask``, into ``profile`` (an empty message).

    Meant for a response's own ``profile`` field: the message is built where it is sent, not
    built and then copied into the response (a copy costs ~6 µs for a typical profile).
    """
    if mask is not None:
        mask_into(profile, profile_to_proto(stored), mask)
        return
    profile.profile_id = stored.profile_id
    profile.sequence = stored.updated_sequence
    profile.record_count = stored.record_count
    add_identifier = profile.identifiers.add
    for typ, value in stored.identifiers:
        add_identifier(type=typ, value=value)
    # A profile's fields mostly come from the same few records: each contributor's Provenance
    # is built once and copied (a copy is ~4x cheaper than a build).
    document = stored.document
    contributors = document.get("contributors", [])
    indexes_of: dict[str, list[int]] = document.get("provenance", {})
    built: dict[int, profile_pb2.Provenance] = {}
    provenance = profile.provenance
    for path, indexes in indexes_of.items():
        if indexes:
            message = built.get(indexes[0])
            if message is None:
                message = built[indexes[0]] = _provenance_message(
                    _provenance_fields(contributors[indexes[0]])
                )
            provenance[path].CopyFrom(message)
    for path, value in document.get("values", {}).items():
        if value is None:
            continue
        if path.startswith(_TRAITS):
            profile.traits[path[len(_TRAITS):]].CopyFrom(to_value(value))
        else:
            _set_path(profile, path, value)
    for channel, leaves in _CONSENT_PATHS:
        # Consent.source: the source whose value won (of the choice, else of its time).
        for leaf in leaves:
            if chosen := indexes_of.get(leaf):
                getattr(profile.consent, channel).source = str(contributors[chosen[0]][0])
                break


def _set_path(profile: profile_pb2.Profile, path: str, value: Any) -> None:
    """Set ``a.b.c`` on ``profile``; paths or values the proto cannot hold are skipped."""
    plan = _path_plan(path)
    if plan is None:
        return
    parent, name, kind = plan
    message = parent(profile)
    if kind == "string":
        try:
            setattr(message, name, value if isinstance(value, str) else json.dumps(value))
        except (TypeError, ValueError):
            return  # a value the mapping should not have produced: left out rather than failing
    elif kind == "timestamp":
        if isinstance(value, str):
            moment = _timestamp_from_text(value)
            if moment is not None:
                getattr(message, name).CopyFrom(moment)
    elif kind == "strings":
        items = value if isinstance(value, list) else [value]
        getattr(message, name).extend(str(v) for v in items if v is not None)
    else:
        try:
            setattr(message, name, float(value) if kind == "double" else bool(value))
        except (TypeError, ValueError):
            return  # likewise


_Kind = Literal["strings", "timestamp", "string", "double", "bool"]
_SCALAR_KINDS: dict[int, _Kind] = {
    _FD.TYPE_STRING: "string", _FD.TYPE_DOUBLE: "double", _FD.TYPE_BOOL: "bool"
}
_PathPlan = tuple[Callable[[profile_pb2.Profile], Any], str, _Kind]


@functools.lru_cache(maxsize=4096)
def _path_plan(path: str) -> _PathPlan | None:
    """How a ``Profile`` field path is set: a getter of its parent message, the field, its kind.

    Walks the descriptors once per path (paths come from the mapping, so there are few);
    ``None`` for a path the proto cannot hold (no such field, or through a repeated field).
    """
    parts = path.split(".")
    descriptor_: Any = profile_pb2.Profile.DESCRIPTOR
    for parent in parts[:-1]:
        field = descriptor_.fields_by_name.get(parent)
        if field is None or field.type != _FD.TYPE_MESSAGE or _is_repeated(field):
            return None
        descriptor_ = field.message_type
    name = parts[-1]
    field = descriptor_.fields_by_name.get(name)
    if field is None:
        return None
    kind: _Kind | None = None
    if _is_repeated(field):
        kind = "strings" if field.type == _FD.TYPE_STRING else None
    elif field.type == _FD.TYPE_MESSAGE:
        message_type = field.message_type
        is_timestamp = (
            message_type is not None and message_type.full_name == "google.protobuf.Timestamp"
        )
        kind = "timestamp" if is_timestamp else None
    else:
        kind = _SCALAR_KINDS.get(field.type)
    if kind is None:
        return None
    parents = ".".join(parts[:-1])
    return (operator.attrgetter(parents) if parents else _itself), name, kind


def _itself(profile: profile_pb2.Profile) -> profile_pb2.Profile:
    return profile


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


# --- field masks ------------------------------------------------------------------------------


MAX_MASK_PATHS = 1000
"""Paths in one field mask. A mask is applied to every profile a call returns, so its length
multiplies the call's work on the server's event loop: 200,000 paths (a 3 MiB request, within
the message limit) on a batch of 400 profiles held every other call for 15 s."""


@dataclass(frozen=True, slots=True)
class ProfileMask:
    """A validated field mask: message paths, and trait names picked out of the ``traits`` map."""

    paths: tuple[str, ...]
    traits: tuple[str, ...]


def compile_field_mask(mask: field_mask_pb2.FieldMask, field: str) -> ProfileMask | None:
    """Validate a request's mask against ``Profile``; ``None`` when it is empty (every field).

    Paths are ``Profile`` field paths (``person``, ``loyalty.tier``, ``provenance``) or
    ``traits.<name>`` for one trait. ``profile_id`` is always returned.

    Raises:
        InvalidArgument: A path names no field (the error names ``<field>.paths[i]``), or the
            mask has more than :data:`MAX_MASK_PATHS` paths.
    """
    if not mask.paths:
        return None
    if len(mask.paths) > MAX_MASK_PATHS:
        raise InvalidArgument(
            f"{field}.paths", f"at most {MAX_MASK_PATHS} paths, got {len(mask.paths)}"
        )
    paths: list[str] = []
    traits: list[str] = []
    for i, path in enumerate(mask.paths):
        if path.startswith(_TRAITS) and len(path) > len(_TRAITS):
            traits.append(path[len(_TRAITS):])
        elif field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
            profile_pb2.Profile.DESCRIPTOR
        ):
            paths.append(path)
        else:
            raise InvalidArgument(
                f"{field}.paths[{i}]",
                f"{path!r} is not a Profile field (use paths such as person, loyalty.tier, "
                "consent.email_marketing, traits.<name>)",
            )
    # Each distinct path once: a repeated path would be applied again to every profile.
    return ProfileMask(tuple(dict.fromkeys(paths)), tuple(dict.fromkeys(traits)))


def apply_field_mask(
    profile: profile_pb2.Profile, mask: ProfileMask | None
) -> profile_pb2.Profile:
    """``profile`` reduced to ``mask`` (the same message when there is no mask)."""
    if mask is None:
        return profile
    out = profile_pb2.Profile()
    mask_into(out, profile, mask)
    return out


def mask_into(out: profile_pb2.Profile, profile: profile_pb2.Profile, mask: ProfileMask) -> None:
    """Copy what ``mask`` selects of ``profile`` (and its id) into ``out``, an empty message."""
    out.profile_id = profile.profile_id
    if mask.paths:
        field_mask_pb2.FieldMask(paths=list(mask.paths)).MergeMessage(profile, out)
    for name in mask.traits:
        if name in profile.traits:
            out.traits[name].CopyFrom(profile.traits[name])


# --- changes ----------------------------------------------------------------------------------


def change_to_proto(
    change: ChangeLike, committed_at: datetime | None = None
) -> profile_pb2.ProfileChange:
    """A change-log entry as a ``ProfileChange`` (``committed_at`` from the entry if it has it)."""
    out = profile_pb2.ProfileChange(
        sequence=change.sequence,
        profile_id=change.profile_id,
        kind=_CHANGE_KINDS.get(change.kind, profile_pb2.CHANGE_KIND_UNSPECIFIED),
    )
    for path in sorted(change.changes):
        values = change.changes[path] or {}
        out.changes.append(
            profile_pb2.FieldChange(
                path=path,
                old_value=to_value(values.get("old")),
                new_value=to_value(values.get("new")),
            )
        )
    for key in _RELATED_KEYS:
        if isinstance(related := change.related.get(key), str):
            out.related_profile_id = related
            break
    out.causes.extend(cause_to_proto(cause) for cause in change.cause)
    moment = committed_at or getattr(change, "committed_at", None)
    if isinstance(moment, datetime):
        out.committed_at.CopyFrom(timestamp_from_datetime(moment))
    return out


def cause_to_proto(cause: Mapping[str, Any]) -> profile_pb2.ChangeCause:
    """One stored cause: a source change (pipeline) or a steward decision."""
    if "steward" in cause:
        return profile_pb2.ChangeCause(source="steward")
    key = cause.get("key")
    lsn = cause.get("lsn")
    out = profile_pb2.ChangeCause(
        source=str(cause.get("source") or ""),
        table=str(cause.get("table") or ""),
        record_key=key if isinstance(key, str) else canonical_json(key) if key else "",
        lsn=lsn if isinstance(lsn, int) and not isinstance(lsn, bool) else 0,
    )
    if isinstance(micros := cause.get("commit_time_us"), int) and micros:
        out.committed_at.CopyFrom(timestamp_from_us(micros))
    return out


# --- record names -----------------------------------------------------------------------------


def record_name(key: RecordKey) -> str:
    """``source/table/key`` as ExplainProfile shows records and UnmergeProfiles takes them."""
    return str(key)


def parse_record_name(text: str, field: str) -> RecordKey:
    """Parse :func:`record_name` output (the key's JSON may be written in any key order).

    Raises:
        InvalidArgument: ``text`` is not ``source/table/{json key}``.
    """
    parts = text.split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise InvalidArgument(field, "must be source/table/key as ExplainProfile lists records")
    try:
        key = json.loads(parts[2])
    except ValueError:
        raise InvalidArgument(field, "the key part must be the record's JSON primary key") from None
    if not isinstance(key, dict) or not key:
        raise InvalidArgument(field, "the key part must be a JSON object such as {\"id\":42}")
    return RecordKey(parts[0], parts[1], canonical_json(key))


__all__ = [
    "MAX_MASK_PATHS",
    "ChangeLike",
    "ProfileMask",
    "apply_field_mask",
    "cause_to_proto",
    "change_to_proto",
    "compile_field_mask",
    "fill_profile",
    "mask_into",
    "parse_record_name",
    "profile_to_proto",
    "record_name",
    "timestamp_from_datetime",
    "timestamp_from_us",
    "to_value",
]
