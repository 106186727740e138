"""Stored profiles as ``Profile`` messages: every kind of field, provenance, masks, in place."""

from __future__ import annotations

from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2

from unified_profile.server.rpc import convert
from unified_profile.server.store.profile_document import CONTRIBUTOR_KEYS
from unified_profile.server.store.profile_store import StoredProfile
from unified_profile.v1 import profile_pb2, profile_service_pb2

CRM = {
    "source": "crm", "table": "public.customers", "record_key": '{"id":1}',
    "version": 7, "commit_time_us": 1_700_000_000_250_000, "rule": "source_priority",
}
LOYALTY = {
    "source": "loyalty", "table": "public.members", "record_key": '{"id":"L1"}',
    "version": 0, "commit_time_us": 1_700_000_100_000_000, "rule": "last_writer_wins",
}


def field(value, *provenance):
    return {"value": value, "provenance": list(provenance)}


def document(fields):
    """Fields written inline (as above) as the stored document: each contributor once."""
    contributors: list[list[object]] = []
    provenance = {}
    for path, f in fields.items():
        provenance[path] = []
        for entry in f["provenance"]:
            row = [entry[k] for k in CONTRIBUTOR_KEYS]
            if row not in contributors:
                contributors.append(row)
            provenance[path].append(contributors.index(row))
    return {
        "values": {path: f["value"] for path, f in fields.items()},
        "provenance": provenance,
        "contributors": contributors,
    }


STORED = StoredProfile(
    "p_1",
    document({
        "person.given_name": field("Anne", CRM),
        "person.family_name": field("Smith", CRM),
        "contact.email": field("anne@example.com", {**CRM, "rule": "last_writer_wins"}, LOYALTY),
        "contact.address.lines": field(["1 Main St", None, 2]),
        "loyalty.points_balance": field(120, LOYALTY),
        "loyalty.enrolled_at": field("2024-01-02T03:04:05.123456789Z", LOYALTY),
        "crm.last_interaction_at": field("not a time", CRM),
        "consent.email_marketing.granted": field(False, LOYALTY),
        "consent.sms_marketing.updated_at": field(None, CRM),
        "traits.vip": field({"since": 2020}, LOYALTY),
        "no.such_field": field("x", CRM),
    }),
    [["crm_id", "1"], ["email", "anne@example.com"]],
    2,
    5,
    42,
)


def provenance(entry):
    out = profile_pb2.Provenance(
        source=entry["source"], table=entry["table"], record_key=entry["record_key"],
        version=entry["version"], rule=entry["rule"],
    )
    out.committed_at.CopyFrom(convert.timestamp_from_us(entry["commit_time_us"]))
    return out


def expected_profile() -> profile_pb2.Profile:
    out = profile_pb2.Profile(profile_id="p_1", sequence=42, record_count=2)
    out.identifiers.add(type="crm_id", value="1")
    out.identifiers.add(type="email", value="anne@example.com")
    out.person.given_name = "Anne"
    out.person.family_name = "Smith"
    out.contact.email = "anne@example.com"
    out.contact.address.lines.extend(["1 Main St", "2"])
    out.loyalty.points_balance = 120.0
    out.loyalty.enrolled_at.CopyFrom(timestamp_pb2.Timestamp(seconds=1704164645, nanos=123456789))
    out.consent.email_marketing.granted = False
    out.consent.email_marketing.source = "loyalty"
    out.consent.sms_marketing.source = "crm"
    out.traits["vip"].CopyFrom(struct_pb2.Value(struct_value={"since": 2020}))
    for path, entry in [
        ("person.given_name", CRM), ("person.family_name", CRM),
        ("contact.email", {**CRM, "rule": "last_writer_wins"}),
        ("loyalty.points_balance", LOYALTY), ("loyalty.enrolled_at", LOYALTY),
        ("crm.last_interaction_at", CRM), ("consent.email_marketing.granted", LOYALTY),
        ("consent.sms_marketing.updated_at", CRM), ("traits.vip", LOYALTY),
        ("no.such_field", CRM),
    ]:
        out.provenance[path].CopyFrom(provenance(entry))
    return out


def test_a_stored_profile_converts_field_by_field_with_each_fields_own_provenance():
    profile = convert.profile_to_proto(STORED)
    assert profile == expected_profile()
    # Fields from the same record share equal provenance, yet each is a message of its own.
    assert profile.provenance["person.given_name"] == profile.provenance["person.family_name"]
    profile.provenance["person.given_name"].rule = "changed"
    assert profile.provenance["person.family_name"].rule == "source_priority"
    assert profile.provenance["contact.email"].rule == "last_writer_wins"


def test_a_profile_filled_into_a_response_is_the_converted_profile_with_or_without_a_mask():
    response = profile_service_pb2.GetProfileResponse(resolved_from_alias=True)
    convert.fill_profile(response.profile, STORED)
    assert response.profile == expected_profile()
    assert response.resolved_from_alias

    mask = convert.compile_field_mask(
        field_mask_pb2.FieldMask(paths=["person", "traits.vip", "loyalty.points_balance"]), "m"
    )
    masked = profile_service_pb2.LookupProfileResponse()
    convert.fill_profile(masked.profile, STORED, mask)
    assert masked.profile == convert.apply_field_mask(expected_profile(), mask)
    assert masked.profile.person.given_name == "Anne"
    assert not masked.profile.HasField("contact")
    assert list(masked.profile.traits) == ["vip"]
