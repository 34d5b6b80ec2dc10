"""The request pages per role: list with countdown, the file form, detail, review queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.gdpr.models import RequestState, SubjectRequest

pytestmark = pytest.mark.django_db


def pages(project_id, *rest):
    tail = "".join(f"{part}/" for part in rest)
    return f"/projects/{project_id}/subject-requests/{tail}"


def test_the_list_shows_state_and_countdown_with_overdue_in_red(team, client, file_request):
    fresh = file_request(received_at=timezone.now() - timedelta(days=1))
    late = file_request(kind="access", received_at=timezone.now() - timedelta(days=45))
    client.force_login(team.viewer)

    html = client.get(pages(team.project.pk)).content.decode()

    assert f'href="/projects/{team.project.pk}/subject-requests/{fresh.pk}/"' in html
    assert "days left" in html and "Pending review" in html
    row = html.split(f'id="request-{late.pk}"')[1].split("</tr>")[0]
    assert 'class="error overdue"' in row and "overdue" in row
    # The viewer may not file: no link to the form.
    assert "File a request" not in html


def test_the_project_navigation_links_the_review_queue(team, client):
    client.force_login(team.engineer)
    html = client.get(f"/projects/{team.project.pk}/").content.decode()
    assert pages(team.project.pk, "review") in html


def test_an_engineer_files_from_the_form(team, client):
    client.force_login(team.engineer)
    assert client.get(pages(team.project.pk, "new")).status_code == 200

    response = client.post(
        pages(team.project.pk, "new"),
        {
            "kind": "erasure",
            "identifiers": "email: bo@example.org\n\ncustomer_id: C-77\n",
            "legal_basis": "Art. 17(1)(a)",
            "received_on": (timezone.localdate() - timedelta(days=3)).isoformat(),
        },
    )

    filed = SubjectRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == pages(team.project.pk, filed.pk)
    assert [i.type for i in filed.identifiers.all()] == ["email", "customer_id"]
    assert filed.received_at.date() <= timezone.localdate() - timedelta(days=2)


@pytest.mark.parametrize(
    ("identifiers", "message"),
    [("", "This field is required"), ("bo@example.org", "write `type: value`")],
)
def test_the_form_explains_bad_identifiers(team, client, identifiers, message):
    client.force_login(team.owner)
    response = client.post(
        pages(team.project.pk, "new"),
        {"kind": "access", "identifiers": identifiers, "legal_basis": "Art. 15"},
    )
    assert response.status_code == 400 and message in response.content.decode()
    assert not SubjectRequest.objects.exists()


def test_a_viewer_gets_403_on_the_form_and_an_outsider_404(team, client):
    client.force_login(team.viewer)
    assert client.get(pages(team.project.pk, "new")).status_code == 403
    client.force_login(team.outsider)
    assert client.get(pages(team.project.pk)).status_code == 404


def test_the_detail_shows_identifiers_per_role_and_not_started(team, client, file_request):
    request = file_request()
    client.force_login(team.engineer)
    engineer_view = client.get(pages(team.project.pk, request.pk)).content.decode()
    client.force_login(team.compliance)
    officer_view = client.get(pages(team.project.pk, request.pk)).content.decode()

    assert "A***@example.com" in engineer_view and "Ann.Smith@example.com" not in engineer_view
    assert "Ann.Smith@example.com" in officer_view and "CUST-90210" in officer_view
    assert 'name="decision" value="approve"' in officer_view  # not the filer
    assert 'name="decision"' not in engineer_view
    assert "Not started" in officer_view


def test_the_filer_sees_no_review_form(team, client, file_request):
    request = file_request(actor=team.owner)
    client.force_login(team.owner)
    html = client.get(pages(team.project.pk, request.pk)).content.decode()
    assert "You filed this request" in html and 'name="decision"' not in html


def test_the_detail_renders_what_the_job_records(team, client, file_request):
    from controlplane.gdpr.erasure import search_wording
    from controlplane.gdpr.services import (
        request_approve,
        request_complete,
        request_mark_in_progress,
        request_record_progress,
    )

    request = file_request()
    request_approve(request=request, actor=team.owner, reason="checked")
    request_mark_in_progress(request=request)
    # What the job's success writes for a dataset with no subject field (gdpr/erasure.py).
    scanned = {"method": "scan", "bytes_scanned": 4_200_000, "scan_budget_bytes": 2**30}
    request_record_progress(
        request=request,
        progress={
            "steps": [{"name": "find", "state": "done", "detail": "2 versions"}, "rewrite"],
            "findings": [
                {"source": "support v3", "records": 4},
                {"source": "notes v1", "records": 2, "detail": search_wording(scanned)},
            ],
        },
    )
    request_complete(request=request, certificate={"scan": {"hits": 0}, "versions": ["v4"]})
    client.force_login(team.engineer)

    html = client.get(pages(team.project.pk, request.pk)).content.decode()

    assert "support v3" in html and "2 versions" in html and "rewrite" in html
    notes = html.split("<td>notes v1</td>")[1].split("</tr>")[0]
    assert "not indexed — searched by a full-text scan (4.2 MB of 1.1 GB budget)" in notes
    assert "&#x27;hits&#x27;: 0" in html and "Completed" in html
    assert "Not started" not in html


def test_a_reviewer_decides_from_the_queue(team, client, file_request):
    request = file_request()
    client.force_login(team.compliance)
    queue = client.get(pages(team.project.pk, "review")).content.decode()
    assert "Ann.Smith@example.com" in queue

    response = client.post(
        pages(team.project.pk, request.pk, "review"),
        {"decision": "approve", "reason": "identity checked", "next": "queue"},
    )

    assert response.status_code == 302 and response["Location"] == pages(team.project.pk, "review")
    request.refresh_from_db()
    assert request.state == RequestState.APPROVED


def test_the_filer_reviewing_by_post_is_refused_with_the_reason(team, client, file_request):
    request = file_request(actor=team.owner)
    client.force_login(team.owner)
    response = client.post(
        pages(team.project.pk, request.pk, "review"),
        {"decision": "approve", "reason": "mine"},
        follow=True,
    )
    assert "you filed this request" in response.content.decode()
    request.refresh_from_db()
    assert request.state == RequestState.PENDING_REVIEW


def test_the_extend_form_extends_and_refuses_beyond_three_months(team, client, file_request):
    request = file_request()
    client.force_login(team.owner)
    extend = pages(team.project.pk, request.pk, "extend")
    client.post(extend, {"months": "2", "reason": "many sources"})
    response = client.post(extend, {"months": "1", "reason": "more"}, follow=True)

    request.refresh_from_db()
    assert request.extension_months == 2
    assert "at most 2 months" in response.content.decode()
