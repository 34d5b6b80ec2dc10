"""Filing, four-eyes review, extension and the job's hand-off; identifiers encrypted at rest
and never in clear in the audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from controlplane.audit.models import AuditEvent
from controlplane.gdpr import services
from controlplane.gdpr.errors import Conflict, InvalidRequest, NotAllowed
from controlplane.gdpr.identifiers import keyed_hash
from controlplane.gdpr.models import RequestState
from controlplane.gdpr.selectors import identifiers_clear, identifiers_shown, requests_for_subject
from tests.platform.gdpr.conftest import ANN

pytestmark = pytest.mark.django_db

RAW = ["Ann.Smith@example.com", "ann.smith@example.com", "CUST-90210", "cust-90210"]


@pytest.mark.parametrize("role", ["owner", "engineer", "compliance"])
def test_owners_engineers_and_compliance_officers_file(team, file_request, role):
    request = file_request(actor=getattr(team, role))

    assert request.state == RequestState.PENDING_REVIEW
    assert request.filed_by == getattr(team, role)
    assert [i.type for i in identifiers_clear(request)] == ["email", "customer_id"]
    event = AuditEvent.objects.get(action="subject_request.filed")
    assert event.payload["subjects"] == [keyed_hash(team.project, v["value"]) for v in ANN]


@pytest.mark.parametrize("role", ["viewer", "outsider", "admin"])
def test_viewers_outsiders_and_bare_admins_cannot_file(team, file_request, role):
    with pytest.raises(NotAllowed):
        file_request(actor=getattr(team, role))


@pytest.mark.parametrize(
    ("identifiers", "field"),
    [
        ([], "identifiers"),
        ([{"type": "email", "value": "not-an-address"}], "identifiers.0.value"),
        ([{"type": "email", "value": "   "}], "identifiers.0.value"),
        ([{"type": "E Mail!", "value": "x@y.org"}], "identifiers.0.type"),
        (
            [{"type": "email", "value": "a@b.org"}, {"type": "email", "value": " A@B.org"}],
            "identifiers.1.value",
        ),
    ],
)
def test_bad_identifiers_are_refused_with_the_field(file_request, identifiers, field):
    with pytest.raises(InvalidRequest) as refused:
        file_request(identifiers=identifiers)
    assert field in refused.value.fields


def test_a_bad_kind_or_scope_is_refused(file_request):
    with pytest.raises(InvalidRequest) as refused:
        file_request(kind="rectification")
    assert "kind" in refused.value.fields
    with pytest.raises(InvalidRequest) as refused:
        file_request(scope="world")
    assert "scope" in refused.value.fields


def test_received_earlier_sets_the_deadline_and_the_future_is_refused(file_request):
    letter = timezone.now() - timedelta(days=20)
    request = file_request(received_at=letter)
    assert request.received_at == letter
    assert request.deadline_at.month != letter.month or request.deadline_at.year != letter.year
    with pytest.raises(InvalidRequest) as refused:
        file_request(received_at=timezone.now() + timedelta(days=2))
    assert "received_at" in refused.value.fields


def test_a_legal_basis_that_names_the_subject_is_refused(file_request):
    with pytest.raises(InvalidRequest) as refused:
        file_request(legal_basis="Ann.Smith@Example.com wrote to us")
    assert "legal_basis" in refused.value.fields


def test_identifiers_are_encrypted_at_rest(team, file_request):
    request = file_request()
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM gdpr_subjectidentifier t")
        rows = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT t::text FROM gdpr_subjectrequest t")
        rows += " ".join(row[0] for row in cursor.fetchall())
    assert rows and not any(raw.lower() in rows.lower() for raw in RAW)
    assert [i.value for i in identifiers_clear(request)] == [v["value"] for v in ANN]
    # The keyed hash finds the request (as the job and the archive index look subjects up).
    found = requests_for_subject(team.project, keyed_hash(team.project, " ann.smith@EXAMPLE.com"))
    assert list(found) == [request]


def test_engineers_see_identifiers_masked(file_request):
    shown = identifiers_shown(file_request(), clear=False)
    assert [s["value"] for s in shown] == ["A***@example.com", "C***"]


def test_the_filer_cannot_review_their_own_request(team, file_request):
    request = file_request(actor=team.compliance)
    with pytest.raises(NotAllowed) as refused:
        services.request_approve(request=request, actor=team.compliance, reason="fine")
    assert "you filed this request" in refused.value.message
    request.refresh_from_db()
    assert request.state == RequestState.PENDING_REVIEW


@pytest.mark.parametrize("role", ["engineer", "viewer", "admin"])
def test_only_owner_or_compliance_members_review(team, file_request, role):
    request = file_request(actor=team.owner)
    with pytest.raises(NotAllowed):
        services.request_reject(request=request, actor=getattr(team, role), reason="no")


def test_a_review_needs_a_reason_and_is_final(team, file_request):
    request = file_request()
    with pytest.raises(InvalidRequest):
        services.request_approve(request=request, actor=team.owner, reason="  ")
    rejected = services.request_reject(request=request, actor=team.owner, reason="not ours")
    assert rejected.state == RequestState.REJECTED and rejected.reviewed_by == team.owner
    with pytest.raises(Conflict):
        services.request_approve(request=request, actor=team.compliance, reason="yes")


def test_approval_calls_the_on_approved_hooks_after_commit(
    team, file_request, monkeypatch, django_capture_on_commit_callbacks
):
    seen = []
    monkeypatch.setattr(services, "on_approved", [seen.append])
    request = file_request()
    with django_capture_on_commit_callbacks(execute=True):
        services.request_approve(request=request, actor=team.compliance, reason="verified")
        assert seen == []  # not before the approval commits
    assert [r.pk for r in seen] == [request.pk]
    assert seen[0].state == RequestState.APPROVED


def test_a_rejection_calls_no_hook(
    team, file_request, monkeypatch, django_capture_on_commit_callbacks
):
    seen = []
    monkeypatch.setattr(services, "on_approved", [seen.append])
    with django_capture_on_commit_callbacks(execute=True):
        services.request_reject(request=file_request(), actor=team.owner, reason="duplicate")
    assert seen == []


def test_extensions_add_up_to_two_months_with_a_reason(team, file_request):
    request = file_request(received_at=timezone.now() - timedelta(days=3))
    first = request.deadline_at
    with pytest.raises(InvalidRequest) as refused:
        services.request_extend(request=request, actor=team.owner, months=1, reason="")
    assert "reason" in refused.value.fields
    with pytest.raises(NotAllowed):
        services.request_extend(request=request, actor=team.engineer, months=1, reason="busy")

    extended = services.request_extend(
        request=request, actor=team.compliance, months=1, reason="many datasets to search"
    )
    assert extended.extension_months == 1 and extended.deadline_at > first
    with pytest.raises(InvalidRequest) as refused:
        services.request_extend(request=request, actor=team.owner, months=2, reason="more")
    assert "three months" in refused.value.message
    extended = services.request_extend(request=request, actor=team.owner, months=1, reason="more")
    assert extended.extension_months == 2
    assert extended.extended_by == team.owner and extended.extension_reason == "more"


def test_the_job_moves_an_approved_request_to_completed(team, file_request):
    request = file_request()
    with pytest.raises(Conflict):
        services.request_mark_in_progress(request=request)  # not approved yet
    services.request_approve(request=request, actor=team.compliance, reason="verified")

    started = services.request_mark_in_progress(request=request)
    again = services.request_mark_in_progress(request=request)  # a resumed run
    assert started.state == again.state == RequestState.IN_PROGRESS
    services.request_record_progress(request=request, progress={"steps": [{"name": "find"}]})
    done = services.request_complete(request=request, certificate={"found": 0, "scan": "clean"})

    assert done.state == RequestState.COMPLETED and done.certificate["scan"] == "clean"
    assert done.progress == {"steps": [{"name": "find"}]}
    assert AuditEvent.objects.filter(action="subject_request.in_progress").count() == 1
    with pytest.raises(Conflict):
        services.request_fail(request=request, reason="late")


def test_a_failure_reason_is_redacted(team, file_request):
    request = file_request()
    services.request_approve(request=request, actor=team.owner, reason="verified")
    services.request_mark_in_progress(request=request)
    failed = services.request_fail(
        request=request, reason="residue: ann.smith@example.com in raw/v1/part-0.jsonl"
    )
    assert failed.state == RequestState.FAILED
    assert failed.failure_reason == "residue: [subject] in raw/v1/part-0.jsonl"


def test_no_audit_payload_of_a_request_holds_an_identifier_in_clear(team, file_request):
    request = file_request()
    services.request_extend(request=request, actor=team.owner, months=2, reason="complex")
    services.request_approve(request=request, actor=team.compliance, reason="identity checked")
    services.request_mark_in_progress(request=request)
    services.request_record_progress(request=request, progress={"steps": []})
    services.request_fail(request=request, reason="store down while deleting CUST-90210's rows")
    other = file_request(kind="access", actor=team.owner)
    services.request_reject(request=other, actor=team.compliance, reason="not verified")

    events = AuditEvent.objects.filter(action__startswith="subject_request.")
    assert sorted({e.action for e in events}) == [
        "subject_request.approved",
        "subject_request.extended",
        "subject_request.failed",
        "subject_request.filed",
        "subject_request.in_progress",
        "subject_request.rejected",
    ]
    text = " ".join(str(e.payload) for e in AuditEvent.objects.all()).lower()
    assert not any(raw.lower() in text for raw in RAW)
    assert keyed_hash(team.project, "ann.smith@example.com") in text
