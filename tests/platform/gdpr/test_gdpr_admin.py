"""Subject requests in the admin: read-only, identifiers never in clear, decisions through
the services with the same four-eyes rules."""

from __future__ import annotations

import pytest

from controlplane.gdpr.models import RequestState

pytestmark = pytest.mark.django_db

LIST = "/admin/gdpr/subjectrequest/"


@pytest.fixture
def root(make_user, team):
    """A superuser who is also the project's compliance officer by membership."""
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add

    user = make_user("root", staff=True)
    user.is_superuser = True
    user.save()
    member_add(project=team.project, user=user, role=Role.COMPLIANCE, actor=team.owner)
    return user


def decide(client, request_id, action, reason="identity checked"):
    return client.post(
        LIST,
        {"action": action, "_selected_action": [request_id], "confirm": "yes", "reason": reason},
        follow=True,
    )


def test_requests_are_read_only_and_identifiers_not_in_clear(client, root, file_request):
    request = file_request()
    client.force_login(root)

    listing = client.get(LIST).content.decode()
    detail = client.get(f"{LIST}{request.pk}/change/").content.decode()

    assert "customer_id #" in listing
    for html in (listing, detail):
        assert "Ann.Smith" not in html and "CUST-90210" not in html
    assert client.get(f"{LIST}add/").status_code == 403
    assert client.post(f"{LIST}{request.pk}/delete/").status_code == 403


def test_the_action_asks_for_a_reason_first(client, root, file_request):
    request = file_request()
    client.force_login(root)

    page = client.post(LIST, {"action": "approve", "_selected_action": [request.pk]})

    assert page.status_code == 200 and b"Reason" in page.content
    request.refresh_from_db()
    assert request.state == RequestState.PENDING_REVIEW


def test_a_compliance_member_approves_and_rejects_in_the_admin(client, root, file_request):
    first, second = file_request(), file_request(kind="access")
    client.force_login(root)

    assert b"1 request(s) approved" in decide(client, first.pk, "approve").content
    assert b"1 request(s) rejected" in decide(client, second.pk, "reject").content
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, first.reviewed_by) == (RequestState.APPROVED, root)
    assert second.state == RequestState.REJECTED


def test_the_filer_cannot_approve_in_the_admin(client, root, file_request):
    request = file_request(actor=root)
    client.force_login(root)

    html = decide(client, request.pk, "approve").content.decode()

    assert "you filed this request" in html
    request.refresh_from_db()
    assert request.state == RequestState.PENDING_REVIEW


def test_a_superuser_without_a_reviewer_role_is_refused(client, make_user, file_request):
    bare = make_user("bare", staff=True)
    bare.is_superuser = True
    bare.save()
    request = file_request()
    client.force_login(bare)

    html = decide(client, request.pk, "approve").content.decode()

    assert "owner or compliance role" in html
    request.refresh_from_db()
    assert request.state == RequestState.PENDING_REVIEW
