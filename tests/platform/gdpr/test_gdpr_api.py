"""The subject-request API: filing, the four-eyes review, extensions, who sees what."""

from __future__ import annotations

import pytest

from tests.platform.gdpr.conftest import ANN

pytestmark = pytest.mark.django_db


def url(project_id, *rest):
    tail = "".join(f"{part}/" for part in rest)
    return f"/api/v1/projects/{project_id}/subject-requests/{tail}"


def file_body(**overrides):
    return {
        "kind": "erasure",
        "identifiers": ANN,
        "legal_basis": "Art. 17(1)(b): consent withdrawn",
        **overrides,
    }


def test_an_engineer_files_and_sees_the_identifiers_masked(team, api):
    response = api(team.engineer).post(url(team.project.pk), file_body(), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "pending_review" and body["filed_by"] == "engineer"
    assert [i["value"] for i in body["identifiers"]] == ["A***@example.com", "C***"]
    assert all(len(i["subject_hash"]) == 64 for i in body["identifiers"])
    assert body["progress"] == {} and body["certificate"] == {}


@pytest.mark.parametrize("role", ["owner", "compliance"])
def test_owners_and_compliance_officers_see_identifiers_in_clear(team, api, file_request, role):
    request = file_request()
    body = api(getattr(team, role)).get(url(team.project.pk, request.pk)).json()
    assert [i["value"] for i in body["identifiers"]] == [v["value"] for v in ANN]


def test_the_list_filters_by_state(team, api, file_request):
    from controlplane.gdpr.services import request_reject

    request_reject(request=file_request(), actor=team.owner, reason="duplicate")
    file_request(kind="access")
    client = api(team.viewer)

    assert client.get(url(team.project.pk)).json()["count"] == 2
    pending = client.get(url(team.project.pk), {"state": "pending_review"}).json()
    assert [r["kind"] for r in pending["results"]] == ["access"]
    assert client.get(url(team.project.pk), {"state": "done"}).status_code == 400


def test_a_viewer_cannot_file(team, api):
    response = api(team.viewer).post(url(team.project.pk), file_body(), format="json")
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"identifiers": []}, "identifiers"),
        ({"kind": "rectification"}, "kind"),
        ({"identifiers": [{"type": "email", "value": "nobody"}]}, "identifiers.0.value"),
        ({"received_at": "2999-01-01T00:00:00Z"}, "received_at"),
        ({"scope": "world"}, "scope"),
        ({"legal_basis": ""}, "legal_basis"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_filings_are_400s_naming_the_field(team, api, change, field):
    response = api(team.owner).post(url(team.project.pk), file_body(**change), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_an_unknown_project_or_another_projects_request_is_404(team, api, file_request):
    other = file_request(project=team.other_project, actor=team.outsider)
    mine = file_request()
    client = api(team.owner)

    assert client.get(url(999999)).status_code == 404
    assert client.post(url(999999), file_body(), format="json").status_code == 404
    assert client.get(url(team.project.pk, other.pk)).status_code == 404
    assert client.get(url(team.other_project.pk, mine.pk)).status_code == 404
    assert api(team.outsider).get(url(team.project.pk, mine.pk)).status_code == 404
    response = client.post(url(team.project.pk, other.pk, "approve"), {"reason": "x"})
    assert response.status_code == 404


def test_the_filer_approving_gets_403_with_the_reason(team, api, file_request):
    request = file_request(actor=team.compliance)

    response = api(team.compliance).post(
        url(team.project.pk, request.pk, "approve"), {"reason": "fine"}, format="json"
    )

    assert response.status_code == 403
    assert "you filed this request" in response.json()["error"]["message"]


def test_a_second_reviewer_approves_and_a_repeat_is_409(team, api, file_request):
    request = file_request()
    client = api(team.compliance)

    approved = client.post(
        url(team.project.pk, request.pk, "approve"), {"reason": "identity checked"}, format="json"
    )
    again = api(team.owner).post(
        url(team.project.pk, request.pk, "reject"), {"reason": "no"}, format="json"
    )

    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert approved.json()["reviewed_by"] == "compliance"
    assert again.status_code == 409


def test_an_engineer_cannot_review(team, api, file_request):
    request = file_request(actor=team.owner)
    response = api(team.engineer).post(
        url(team.project.pk, request.pk, "reject"), {"reason": "no"}, format="json"
    )
    assert response.status_code == 403


def test_extension_rules(team, api, file_request):
    request = file_request()
    client = api(team.owner)
    extend = url(team.project.pk, request.pk, "extend")

    assert client.post(extend, {"months": 1}, format="json").status_code == 400
    assert client.post(extend, {"months": 1, "reason": ""}, format="json").status_code == 400
    too_far = client.post(extend, {"months": 3, "reason": "big"}, format="json")
    assert too_far.status_code == 400 and "months" in too_far.json()["error"]["fields"]
    done = client.post(extend, {"months": 2, "reason": "many sources"}, format="json")
    assert done.status_code == 200 and done.json()["extension_months"] == 2
    assert client.post(extend, {"months": 1, "reason": "more"}, format="json").status_code == 400
    engineer = api(team.engineer).post(extend, {"months": 1, "reason": "x"}, format="json")
    assert engineer.status_code == 403
