"""The ProfileService over a real gRPC server (port 0) on a real PostgreSQL store.

The store is filled through the engine's applier with source record images, as the pipeline
fills it; every call goes through the network, the auth interceptor and the error table.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import field_mask_pb2

from unified_profile.server.rpc.service import ProfileService
from unified_profile.v1 import profile_pb2
from unified_profile.v1 import profile_service_pb2 as pb

from .rpc_support import (
    ADMIN,
    READER,
    RULES,
    STEWARD,
    SUBSCRIBER,
    TYPES,
    ServerThread,
    apply,
    bearer,
    crm,
    grpc_config,
    member,
    rpc_error,
    stub_for,
)

pytestmark = pytest.mark.integration

K = profile_pb2.ChangeKind
ANNE = "crm/public.customers/{\"id\":1}"
ANNES_MEMBERSHIP = "loyalty/public.members/{\"member_id\":\"L1\"}"


@pytest.fixture
def server(store):
    thread = ServerThread(ProfileService(store, TYPES, RULES), grpc_config())
    yield thread
    thread.stop()


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield stub_for(channel)


def anne_and_membership(store) -> tuple[str, str]:
    """Anne's CRM record, then her membership as its own profile, then linked: (anne, alias)."""
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    [(annie, _, _)] = apply(store, member("L1", 11, crm_id=None))
    apply(store, member("L1", 12, crm_id=1))
    return anne, annie


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    error = rpc_error(call)
    return error.code(), error.details()


# --- GetProfile / LookupProfile / BatchGetProfiles --------------------------------------------


def test_get_profile_follows_an_alias_and_returns_every_field_with_provenance(store, stub):
    anne, alias = anne_and_membership(store)
    response = stub.GetProfile(pb.GetProfileRequest(profile_id=alias), metadata=bearer(READER))
    assert response.resolved_from_alias
    profile = response.profile
    assert profile.profile_id == anne
    assert profile.person.given_name == "Anne"                  # CRM wins person.* by priority
    assert profile.contact.email == "anne@example.com"
    assert profile.loyalty.tier == "gold"
    assert profile.loyalty.points_balance == 100.0
    assert profile.consent.push.granted and profile.consent.push.source == "loyalty"
    assert profile.traits["lifetime_spend"].number_value == 12.5
    assert profile.crm.last_interaction_at.ToJsonString() == "2024-05-01T10:00:00Z"
    assert profile.record_count == 2
    assert {(i.type, i.value) for i in profile.identifiers} == {
        ("crm_id", "1"), ("email", "anne@example.com"), ("loyalty_id", "L1")}
    tier = profile.provenance["loyalty.tier"]
    assert (tier.source, tier.table, tier.record_key, tier.rule) == (
        "loyalty", "public.members", '{"member_id":"L1"}', "source_priority")
    direct = stub.GetProfile(pb.GetProfileRequest(profile_id=anne), metadata=bearer(READER))
    assert not direct.resolved_from_alias and direct.profile.sequence == profile.sequence


def test_a_field_mask_returns_only_the_fields_asked_for(store, stub):
    anne, _ = anne_and_membership(store)
    mask = field_mask_pb2.FieldMask(paths=["loyalty.tier", "traits.lifetime_spend"])
    profile = stub.GetProfile(
        pb.GetProfileRequest(profile_id=anne, field_mask=mask), metadata=bearer(READER)
    ).profile
    assert profile.profile_id == anne and profile.loyalty.tier == "gold"
    assert not profile.HasField("person") and not profile.identifiers and not profile.provenance
    assert not profile.loyalty.HasField("points_balance")
    assert dict(profile.traits).keys() == {"lifetime_spend"}
    code, details = code_and_details(lambda: stub.GetProfile(
        pb.GetProfileRequest(profile_id=anne,
                             field_mask=field_mask_pb2.FieldMask(paths=["person", "loyalty.teir"])),
        metadata=bearer(READER)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "field_mask.paths[1]" in details


def test_unknown_and_malformed_profile_ids(store, stub):
    code, details = code_and_details(lambda: stub.GetProfile(
        pb.GetProfileRequest(profile_id="p_nobody"), metadata=bearer(READER)))
    assert code == grpc.StatusCode.NOT_FOUND
    for bad in ("", "has space", "x" * 201):
        code, details = code_and_details(lambda bad=bad: stub.GetProfile(
            pb.GetProfileRequest(profile_id=bad), metadata=bearer(READER)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("profile_id:")


def test_lookup_normalises_the_value_as_ingest_does(store, stub):
    anne, _ = anne_and_membership(store)
    found = stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="email", value="  Anne@Example.COM "),
        metadata=bearer(READER))
    assert found.profile.profile_id == anne
    by_member = stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="loyalty_id", value="L1",
                                field_mask=field_mask_pb2.FieldMask(paths=["loyalty"])),
        metadata=bearer(READER))
    assert by_member.profile.profile_id == anne and not by_member.profile.HasField("person")
    code, _ = code_and_details(lambda: stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="email", value="bob@example.com"),
        metadata=bearer(READER)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = code_and_details(lambda: stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="shoe_size", value="42"), metadata=bearer(READER)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("identifier_type:") and "crm_id, email, loyalty_id" in details
    code, details = code_and_details(lambda: stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="email", value=" Unknown "),
        metadata=bearer(READER)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("value:")


def test_a_shared_household_email_is_not_answered_with_one_of_the_people(store, stub):
    apply(store, crm(4, 10, email="family@example.com", name="John"))
    apply(store, crm(5, 11, email="family@example.com", name="Mary"))
    code, details = code_and_details(lambda: stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="email", value="family@example.com"),
        metadata=bearer(READER)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "2 profiles" in details
    assert "family@example.com" not in details       # no personal data echoed back


def test_batch_get_answers_each_ref_in_order(store, stub):
    anne, alias = anne_and_membership(store)
    [(bob, _, _)] = apply(store, crm(2, 20, email="bob@example.com", name="Bob"))
    refs = [
        pb.ProfileRef(profile_id=alias),
        pb.ProfileRef(identifier=profile_pb2.Identifier(type="email", value="BOB@example.com")),
        pb.ProfileRef(profile_id="p_missing"),
        pb.ProfileRef(identifier=profile_pb2.Identifier(type="crm_id", value="999")),
        pb.ProfileRef(profile_id=anne),
    ]
    response = stub.BatchGetProfiles(
        pb.BatchGetProfilesRequest(refs=refs,
                                   field_mask=field_mask_pb2.FieldMask(paths=["person"])),
        metadata=bearer(READER))
    assert [r.found for r in response.results] == [True, True, False, False, True]
    assert [r.profile.profile_id for r in response.results] == [anne, bob, "", "", anne]
    assert [r.ref for r in response.results] == refs
    assert response.results[1].profile.person.given_name == "Bob"
    assert not response.results[1].profile.HasField("contact")
    too_many = [pb.ProfileRef(profile_id=f"p_{i}") for i in range(1001)]
    code, details = code_and_details(lambda: stub.BatchGetProfiles(
        pb.BatchGetProfilesRequest(refs=too_many), metadata=bearer(READER)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("refs:")
    bad = [pb.ProfileRef(profile_id=anne),
           pb.ProfileRef(identifier=profile_pb2.Identifier(type="nope", value="x"))]
    code, details = code_and_details(lambda: stub.BatchGetProfiles(
        pb.BatchGetProfilesRequest(refs=bad), metadata=bearer(READER)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("refs[1].identifier.type:")
    code, details = code_and_details(lambda: stub.BatchGetProfiles(
        pb.BatchGetProfilesRequest(refs=[pb.ProfileRef()]), metadata=bearer(READER)))
    assert details.startswith("refs[0]:")


# --- history and explain ----------------------------------------------------------------------


def test_history_pages_through_the_profile_and_the_profiles_merged_into_it(store, stub):
    anne, alias = anne_and_membership(store)
    apply(store, member("L1", 13, crm_id=1, tier="platinum"))
    seen, token = [], ""
    while True:
        page = stub.GetProfileHistory(
            pb.GetProfileHistoryRequest(profile_id=alias, page_size=2, page_token=token),
            metadata=bearer(READER))
        seen += page.changes
        token = page.next_page_token
        if not token:
            break
    assert [(c.profile_id, c.kind) for c in seen] == [
        (anne, K.CHANGE_KIND_CREATED),
        (alias, K.CHANGE_KIND_CREATED),          # the membership's own profile, before the merge
        (anne, K.CHANGE_KIND_MERGED),
        (anne, K.CHANGE_KIND_UPDATED),
        (anne, K.CHANGE_KIND_UPDATED),
    ]
    assert [c.sequence for c in seen] == sorted(c.sequence for c in seen)
    assert seen[2].related_profile_id == alias
    tier = next(f for f in seen[4].changes if f.path == "loyalty.tier")
    assert (tier.old_value.string_value, tier.new_value.string_value) == ("gold", "platinum")
    cause = seen[4].causes[0]
    assert (cause.source, cause.table, cause.record_key, cause.lsn) == (
        "loyalty", "public.members", '{"member_id":"L1"}', 13)
    assert seen[0].committed_at.seconds > 0
    for request, field in (
        (pb.GetProfileHistoryRequest(profile_id=anne, page_size=1001), "page_size"),
        (pb.GetProfileHistoryRequest(profile_id=anne, page_size=-1), "page_size"),
        (pb.GetProfileHistoryRequest(profile_id=anne, page_token="garbage!"), "page_token"),
    ):
        code, details = code_and_details(
            lambda request=request: stub.GetProfileHistory(request, metadata=bearer(READER)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:")
    first = stub.GetProfileHistory(
        pb.GetProfileHistoryRequest(profile_id=anne, page_size=1), metadata=bearer(READER))
    code, details = code_and_details(lambda: stub.GetProfileHistory(
        pb.GetProfileHistoryRequest(profile_id="p_other", page_token=first.next_page_token),
        metadata=bearer(READER)))
    assert details.startswith("page_token:")
    code, _ = code_and_details(lambda: stub.GetProfileHistory(
        pb.GetProfileHistoryRequest(profile_id="p_never"), metadata=bearer(READER)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_explain_lists_candidates_links_and_the_conflict_that_kept_a_record_out(store, stub):
    anne, _ = anne_and_membership(store)
    # A second CRM customer with Anne's email: one crm_id per person, so it stays apart.
    apply(store, crm(7, 30, email="anne@example.com", name="Other Anne"))
    response = stub.ExplainProfile(pb.ExplainProfileRequest(profile_id=anne),
                                   metadata=bearer(READER))
    assert response.profile.profile_id == anne
    assert {r.record_key for r in response.records} == {'{"id":1}', '{"member_id":"L1"}'}
    name = next(f for f in response.fields if f.path == "person.given_name")
    assert name.rule == "source_priority [crm, loyalty]"
    assert [(c.value.string_value, c.provenance.source, c.chosen) for c in name.candidates] == [
        ("Anne", "crm", True), ("Annie", "loyalty", False)]
    assert name.candidates[1].provenance.version == 12_000
    [link] = response.links
    assert {link.record_a, link.record_b} == {ANNE, ANNES_MEMBERSHIP}
    assert (link.identifier.type, link.identifier.value, link.steward) == ("crm_id", "1", False)
    [conflict] = response.conflicts
    assert (conflict.identifier.type, conflict.identifier.value) == ("email", "anne@example.com")
    assert "crm/public.customers/{\"id\":7}" in conflict.records
    assert "crm_id max_per_profile 1" in conflict.reason


# --- steward ----------------------------------------------------------------------------------


def test_merge_force_links_two_profiles_and_the_older_id_survives(store, stub):
    [(john, _, _)] = apply(store, crm(4, 10, email="family@example.com", name="John"))
    [(mary, _, _)] = apply(store, crm(5, 11, email="family@example.com", name="Mary"))
    request = pb.MergeProfilesRequest(profile_id=mary, other_profile_id=john,
                                      reason="same person, two CRM accounts")
    response = stub.MergeProfiles(request, metadata=bearer(STEWARD))
    assert response.profile.profile_id == john
    assert response.changes[0].kind == K.CHANGE_KIND_MERGED
    assert response.changes[0].related_profile_id == mary
    assert response.changes[0].causes[0].source == "steward"
    assert [c.sequence for c in response.changes] == list(
        range(response.changes[0].sequence, response.changes[0].sequence + len(response.changes)))
    assert store.head_sequence() == response.changes[-1].sequence
    moved = stub.GetProfile(pb.GetProfileRequest(profile_id=mary), metadata=bearer(READER))
    assert moved.resolved_from_alias and moved.profile.profile_id == john
    again = stub.MergeProfiles(request, metadata=bearer(STEWARD))   # a retry changes nothing
    assert again.profile.profile_id == john and not again.changes
    for bad, field in (
        (pb.MergeProfilesRequest(profile_id=john, other_profile_id=john, reason="x"),
         "other_profile_id"),
        (pb.MergeProfilesRequest(profile_id=john, other_profile_id=mary, reason=" "), "reason"),
        (pb.MergeProfilesRequest(profile_id=john, reason="x"), "other_profile_id"),
    ):
        code, details = code_and_details(
            lambda bad=bad: stub.MergeProfiles(bad, metadata=bearer(STEWARD)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:")
    code, _ = code_and_details(lambda: stub.MergeProfiles(
        pb.MergeProfilesRequest(profile_id=john, other_profile_id="p_gone", reason="x"),
        metadata=bearer(STEWARD)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_unmerge_separates_a_record_for_good_and_a_merge_then_is_refused(store, stub):
    anne, _ = anne_and_membership(store)
    response = stub.UnmergeProfiles(
        pb.UnmergeProfilesRequest(profile_id=anne, record=ANNES_MEMBERSHIP,
                                  reason="two different Annes"),
        metadata=bearer(STEWARD))
    kinds = [c.kind for c in response.changes]
    assert kinds[0] == K.CHANGE_KIND_SPLIT and K.CHANGE_KIND_CREATED in kinds
    separated = response.changes[0].related_profile_id
    # The membership still names crm_id 1, and a new change to it does not undo the decision.
    apply(store, member("L1", 40, crm_id=1, tier="silver"))
    assert sorted(store.all_profiles()) == sorted([anne, separated])
    code, details = code_and_details(lambda: stub.MergeProfiles(
        pb.MergeProfilesRequest(profile_id=anne, other_profile_id=separated, reason="undo"),
        metadata=bearer(STEWARD)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "never-link" in details
    for record in ("nonsense", "crm/public.customers/not-json", ANNES_MEMBERSHIP):
        code, details = code_and_details(lambda record=record: stub.UnmergeProfiles(
            pb.UnmergeProfilesRequest(profile_id=anne, record=record, reason="x"),
            metadata=bearer(STEWARD)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("record:")
    code, _ = code_and_details(lambda: stub.UnmergeProfiles(
        pb.UnmergeProfilesRequest(profile_id=anne, record=ANNE, reason="x"),
        metadata=bearer(STEWARD)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION       # its only record now


def test_forget_erases_the_profile_and_every_value_of_it_from_the_change_log(store, stub):
    [(anne, _, _)] = apply(store, crm(1, 10, email="anne@example.com"))
    apply(store, member("L9", 11, crm_id=1, tier="platinum", name="Annabel"))
    # The membership splits off into its own profile: the person to forget.
    changes = apply(store, member("L9", 12, crm_id=None, tier="platinum", name="Annabel"))
    split = next(related["split_into"] for _, kind, related in changes if kind == "SPLIT")
    response = stub.ForgetProfile(
        pb.ForgetProfileRequest(profile_id=split, reason="erasure request 2024-17"),
        metadata=bearer(STEWARD))
    assert response.change.kind == K.CHANGE_KIND_DELETED
    assert response.change.profile_id == split
    assert response.change.sequence == store.head_sequence()
    code, _ = code_and_details(lambda: stub.GetProfile(
        pb.GetProfileRequest(profile_id=split), metadata=bearer(READER)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_and_details(lambda: stub.LookupProfile(
        pb.LookupProfileRequest(identifier_type="loyalty_id", value="L9"), metadata=bearer(READER)))
    assert code == grpc.StatusCode.NOT_FOUND
    log = json.dumps([(c.kind, c.changes, c.cause) for c in store.read_changes_after(0)])
    assert "Annabel" not in log and "platinum" not in log and "L9" not in log
    # Anne's own history is intact; the forgotten profile keeps sequence and kind only.
    anne_created = store.read_changes_after(0)[0]
    assert anne_created.profile_id == anne
    assert anne_created.changes["person.given_name"]["new"] == "Anne"
    history = stub.GetProfileHistory(pb.GetProfileHistoryRequest(profile_id=split),
                                     metadata=bearer(READER)).changes
    assert [c.kind for c in history] == [K.CHANGE_KIND_CREATED, K.CHANGE_KIND_DELETED]
    assert all(not f.new_value.string_value for f in history[0].changes)
    # A redelivery of an event already applied does not bring the person back.
    assert apply(store, member("L9", 12, crm_id=None, tier="platinum", name="Annabel")) == []
    code, _ = code_and_details(lambda: stub.ForgetProfile(
        pb.ForgetProfileRequest(profile_id=split, reason="again"), metadata=bearer(STEWARD)))
    assert code == grpc.StatusCode.NOT_FOUND


# --- status and subscriptions -----------------------------------------------------------------


def test_pipeline_status_reports_positions_head_and_counts(store, stub):
    anne_and_membership(store)
    with store.batch() as batch:
        batch.save_positions("embedded", {"source:crm": 4242})
        batch.save_positions("profile-engine", {"kafka:crm.public.customers:0": 17})
    status = stub.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=bearer(ADMIN))
    assert [(s.name, s.applied_lsn) for s in status.sources] == [("crm", 4242)]
    [consumer] = status.consumers
    assert consumer.group == "profile-engine"
    assert dict(consumer.positions) == {"kafka:crm.public.customers:0": 17}
    assert status.change_log_head == store.head_sequence() and status.change_log_oldest == 1
    assert status.profiles == 1 and status.dead_letters == 0 and status.at.seconds > 0


def test_subscriptions_are_unimplemented_until_a_change_feed_is_given(stub):
    stream = stub.SubscribeProfileChanges(
        pb.SubscribeProfileChangesRequest(start=pb.SubscribeProfileChangesRequest.START_LATEST),
        metadata=bearer(SUBSCRIBER))
    error = rpc_error(lambda: next(iter(stream)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
