"""ExplainProfile: why a profile looks as it does, recomputed with the pure engine.

Nothing is read from a stored explanation: the profile's stored record images go through
:func:`~..engine.identity.resolve_identities` and :func:`~..engine.survivorship.explain_field`
again, so the answer is what the engine decides from those records now.

- Links come from resolving the profile's own records (with the overrides among them): the
  identifier values, and steward force-links, that hold them together.
- Conflicts come from resolving them together with their neighbours, the other profiles holding
  one of their identifier values: a shared household email that did not merge shows up there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, cast

from unified_profile.v1 import profile_pb2, profile_service_pb2

from ..engine.identity import IdentifierType, LinkOverride, resolve_identities
from ..engine.records import Identifier, RecordKey, SourceRecord
from ..engine.survivorship import Rule, RuleSet, explain_field
from ..store.profile_reads import ExplainInputs
from .convert import profile_to_proto, record_name, timestamp_from_us, to_value

_AGGREGATES = ("sum", "union")


def explain_profile(
    inputs: ExplainInputs, types: Mapping[str, IdentifierType], rules: RuleSet
) -> profile_service_pb2.ExplainProfileResponse:
    """The ExplainProfile answer for one profile's stored inputs.

    Raises:
        TypeError: A stored value does not suit its path's rule (the engine would refuse it too).
    """
    own = {r.key for r in inputs.records}
    overrides = [
        LinkOverride(cast(Literal["force", "never"], kind), a, b)
        for kind, a, b in inputs.overrides
        if kind in ("force", "never") and a != b
    ]
    response = profile_service_pb2.ExplainProfileResponse(
        profile=profile_to_proto(inputs.resolved.profile)
    )
    response.fields.extend(_fields(inputs.records, rules))
    response.records.extend(
        profile_service_pb2.LinkedRecord(
            source=r.key.source,
            table=r.key.table,
            record_key=r.key.key,
            identifiers=[_identifier(i) for i in sorted(r.identifiers)],
        )
        for r in inputs.records
    )
    inside = resolve_identities(
        inputs.records, types, [o for o in overrides if o.a in own and o.b in own]
    )
    for link in inside.links:
        out = profile_service_pb2.RecordLink(
            record_a=record_name(link.a),
            record_b=record_name(link.b),
            steward=not isinstance(link.via, Identifier),
        )
        if isinstance(link.via, Identifier):
            out.identifier.CopyFrom(_identifier(link.via))
        response.links.append(out)
    around = resolve_identities([*inputs.records, *inputs.neighbours], types, overrides)
    for conflict in around.conflicts:
        if not own.intersection(conflict.records):
            continue
        found = profile_service_pb2.IdentityConflict(
            records=[record_name(k) for k in conflict.records], reason=conflict.reason
        )
        if isinstance(conflict.identifier, Identifier):
            found.identifier.CopyFrom(_identifier(conflict.identifier))
        response.conflicts.append(found)
    return response


def _fields(
    records: Iterable[SourceRecord], rules: RuleSet
) -> list[profile_service_pb2.FieldExplanation]:
    records = list(records)
    paths = sorted({p for r in records for p, v in r.fields.items() if v is not None})
    out: list[profile_service_pb2.FieldExplanation] = []
    for path in paths:
        explained = explain_field(records, path, rules)
        rule = explained.rule
        out.append(
            profile_service_pb2.FieldExplanation(
                path=path,
                rule=describe_rule(rule),
                candidates=[
                    profile_service_pb2.FieldCandidate(
                        value=to_value(c.value),
                        provenance=_provenance(c.record, c.version, c.commit_time_us, rule),
                        # Aggregates use every candidate; other rules take the first one.
                        chosen=rule.kind in _AGGREGATES or i == 0,
                    )
                    for i, c in enumerate(explained.candidates)
                ],
            )
        )
    return out


def describe_rule(rule: Rule) -> str:
    """``source_priority [crm, loyalty]``, or the rule's kind alone when it lists no sources."""
    return f"{rule.kind} [{', '.join(rule.order)}]" if rule.order else rule.kind


def _provenance(
    key: RecordKey, version: int | None, commit_time_us: int, rule: Rule
) -> profile_pb2.Provenance:
    return profile_pb2.Provenance(
        source=key.source,
        table=key.table,
        record_key=key.key,
        version=version or 0,
        committed_at=timestamp_from_us(commit_time_us),
        rule=rule.kind,
    )


def _identifier(identifier: Identifier) -> profile_pb2.Identifier:
    return profile_pb2.Identifier(type=identifier.type, value=identifier.value)


__all__ = ["describe_rule", "explain_profile"]
