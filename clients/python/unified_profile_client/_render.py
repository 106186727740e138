"""Text for people, and JSON for programs, of the API's messages (``profilectl``'s output).

Human output answers what a person running the tool asks: whose profile, which fields with which
values, where each value came from (the source that won); for a change, which fields went from
what to what, and which source change caused it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from unified_profile.v1 import profile_pb2, profile_service_pb2

from ._types import change_kind_name

# Shown in their own sections (or not at all), not as fields.
_NOT_FIELDS = frozenset({"profile_id", "identifiers", "provenance", "sequence", "record_count"})
ARROW = "→"
NONE = "(none)"


def to_json(message: Message) -> str:
    """One line of JSON: the proto3 JSON mapping with the proto's field names.

    int64 values (sequences, LSNs) are strings, as the mapping prescribes.
    """
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True),
        ensure_ascii=False,
        separators=(",", ":"),
    )


def value_text(value: struct_pb2.Value | None) -> str:
    """A ``google.protobuf.Value`` as compact JSON (``"gold"``, ``12.5``, ``true``), or (none)."""
    if value is None or value.WhichOneof("kind") in (None, "null_value"):
        return NONE
    return _json(json_format.MessageToDict(value))


def timestamp_text(timestamp: timestamp_pb2.Timestamp) -> str:
    """RFC 3339, or empty when unset."""
    return timestamp.ToJsonString() if timestamp.seconds or timestamp.nanos else ""


def profile_fields(profile: profile_pb2.Profile) -> dict[str, Any]:
    """The profile's set fields by path (``loyalty.tier``), in the API's order."""
    data = json_format.MessageToDict(profile, preserving_proto_field_name=True)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NOT_FIELDS:
            continue
        if key == "traits":
            # Trait names are data, not structure: ``traits.a.b`` must not look nested.
            flat.update({f"traits.{name}": v for name, v in value.items()})
        else:
            _flatten(key, value, flat)
    return flat


def provenance_of(profile: profile_pb2.Profile, path: str) -> profile_pb2.Provenance | None:
    """The provenance of ``path``, or of the nearest enclosing path that has one."""
    parts = path.split(".")
    while parts:
        found = profile.provenance.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


def provenance_text(provenance: profile_pb2.Provenance) -> str:
    """``loyalty public.members {"member_id":"L1"} (source_priority)``."""
    text = f"{provenance.source} {provenance.table} {provenance.record_key}"
    return f"{text} ({provenance.rule})" if provenance.rule else text


def render_profile(profile: profile_pb2.Profile, asked_for: str | None = None) -> Iterator[str]:
    """A profile as lines: header, fields with the source that won each, identifiers."""
    header = f"Profile {profile.profile_id}"
    if asked_for and asked_for != profile.profile_id:
        header += f"  (asked for {asked_for}: merged into this one)"
    yield header
    yield f"  {profile.record_count} source records · last change #{profile.sequence}"
    fields = profile_fields(profile)
    if fields:
        width = min(max(len(p) for p in fields), 40)
        values = {path: _json(value) for path, value in fields.items()}
        value_width = min(max(len(v) for v in values.values()), 40)
        yield ""
        yield f"  {'FIELD':<{width}}  {'VALUE':<{value_width}}  SOURCE"
        for path, text in values.items():
            provenance = provenance_of(profile, path)
            source = provenance_text(provenance) if provenance is not None else ""
            yield f"  {path:<{width}}  {text:<{value_width}}  {source}".rstrip()
    if profile.identifiers:
        yield ""
        yield "  Identifiers"
        for identifier in profile.identifiers:
            yield f"    {identifier.type:<12} {identifier.value}"


def render_change(change: profile_pb2.ProfileChange) -> Iterator[str]:
    """A change as lines: what happened to whom, old → new per field, what caused it."""
    kind = change_kind_name(change.kind)
    subject = change.profile_id
    if change.related_profile_id:
        relation = {
            "MERGED": f"← {change.related_profile_id} merged in (now an alias)",
            "SPLIT": f"{ARROW} {change.related_profile_id} split off",
            "CREATED": f"(split from {change.related_profile_id})",
        }.get(kind, f"(related: {change.related_profile_id})")
        subject = f"{subject} {relation}"
    stamp = timestamp_text(change.committed_at)
    yield " ".join(part for part in (f"#{change.sequence}", stamp, kind, subject) if part)
    for field in change.changes:
        yield (
            f"    {field.path}: {value_text(field.old_value)} {ARROW} {value_text(field.new_value)}"
        )
    for cause in change.causes:
        yield f"    by {cause_text(cause)}"


def cause_text(cause: profile_pb2.ChangeCause) -> str:
    """``loyalty public.members {"member_id":"L1"} lsn 13``, or ``steward``."""
    parts = [cause.source, cause.table, cause.record_key]
    if cause.lsn:
        parts.append(f"lsn {cause.lsn}")
    return " ".join(p for p in parts if p) or "unknown"


def render_explanation(explanation: profile_service_pb2.ExplainProfileResponse) -> Iterator[str]:
    """Why a profile looks as it does: candidates per field, records, links, conflicts."""
    profile = explanation.profile
    yield f"Profile {profile.profile_id} · {len(explanation.records)} source records"
    if explanation.fields:
        yield ""
        yield "Fields (* = the value chosen)"
        for field in explanation.fields:
            yield f"  {field.path}  rule: {field.rule}"
            for candidate in field.candidates:
                mark = "*" if candidate.chosen else " "
                origin = candidate.provenance
                where = f"{origin.source} {origin.table} {origin.record_key}"
                extra = [f"v{origin.version}"] if origin.version else []
                if timestamp_text(origin.committed_at):
                    extra.append(timestamp_text(origin.committed_at))
                yield f"    {mark} {value_text(candidate.value)}  {where} {' '.join(extra)}".rstrip()
    if explanation.records:
        yield ""
        yield "Records"
        for record in explanation.records:
            name = f"{record.source}/{record.table}/{record.record_key}"
            identifiers = ", ".join(f"{i.type}={i.value}" for i in record.identifiers)
            yield f"  {name}  {identifiers}".rstrip()
    if explanation.links:
        yield ""
        yield "Links (why these records are one person)"
        for link in explanation.links:
            if link.steward:
                why = "steward force-link"
            else:
                why = f"share {link.identifier.type}={link.identifier.value}"
            yield f"  {link.record_a} ↔ {link.record_b}  {why}"
    if explanation.conflicts:
        yield ""
        yield "Conflicts (shared identifiers that did not merge)"
        for conflict in explanation.conflicts:
            identifier = f"{conflict.identifier.type}={conflict.identifier.value}"
            yield f"  {identifier}: {', '.join(conflict.records)}"
            yield f"    {conflict.reason}"


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, into)
    else:
        into[prefix] = value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


__all__ = [
    "cause_text",
    "profile_fields",
    "provenance_of",
    "render_change",
    "render_explanation",
    "render_profile",
    "timestamp_text",
    "to_json",
    "value_text",
]
