"""The compliance API: waivers, erasure holds, violations and scans, with their role checks
(a non-member gets 404, a member without the role 403) and bad input (400 naming the field)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.platform.policies.compliance_fixtures import (
    dataset_version,
    open_violations,
    run_scan,
    set_policy,
)

pytestmark = pytest.mark.django_db


def base(project) -> str:
    return f"/api/v1/projects/{project.pk}/"


def in_days(days: float) -> str:
    return (timezone.now() + timedelta(days=days)).isoformat()


@pytest.fixture
def gpl(team):
    return dataset_version(team.project, team.owner, licence="GPL-3.0-only")


@pytest.fixture
def violation(team, gpl):
    from controlplane.policies.models import Violation

    set_policy(
        team.project, team.compliance, {"licences": {"enabled": True, "allowed_licences": ["MIT"]}}
    )
    run_scan(team.project, team.compliance)
    return Violation.objects.get(subject_id=gpl.pk)


def waiver_body(version, **changes) -> dict:
    return {
        "rule": "licences",
        "subject_type": "dataset_version",
        "subject_id": version.pk,
        "reason": "legal approved the licence for research",
        "expires_at": in_days(30),
        **changes,
    }


def audit_actions(project) -> list[str]:
    from controlplane.audit.models import AuditEvent

    return list(
        AuditEvent.objects.filter(project_id=project.pk)
        .order_by("seq")
        .values_list("action", flat=True)
    )


# -- waivers ---------------------------------------------------------------------------------


def test_a_compliance_officer_grants_and_revokes_a_waiver_audited(team, api, gpl):
    officer = api(team.compliance)

    granted = officer.post(f"{base(team.project)}waivers/", waiver_body(gpl), format="json")

    assert granted.status_code == 201, granted.json()
    body = granted.json()
    assert body["active"] and body["subject_label"] == f"{gpl.dataset.slug} v1"
    assert body["granted_by"] == "compliance" and body["revoked_at"] is None
    listed = api(team.viewer).get(f"{base(team.project)}waivers/?active=1").json()
    assert [w["id"] for w in listed["results"]] == [body["id"]]

    revoked = officer.post(
        f"{base(team.project)}waivers/{body['id']}/revoke/",
        {"reason": "licence changed"},
        format="json",
    )

    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert revoked.json()["revoked_by"] == "compliance"
    assert api(team.viewer).get(f"{base(team.project)}waivers/?active=1").json()["results"] == []
    assert api(team.viewer).get(f"{base(team.project)}waivers/").json()["count"] == 1
    assert audit_actions(team.project)[-2:] == ["waiver.granted", "waiver.revoked"]
    again = officer.post(f"{base(team.project)}waivers/{body['id']}/revoke/", {}, format="json")
    assert again.status_code == 409


@pytest.mark.parametrize("role", ["owner", "engineer", "viewer"])
def test_only_compliance_officers_grant_waivers(team, api, gpl, role):
    response = api(getattr(team, role)).post(
        f"{base(team.project)}waivers/", waiver_body(gpl), format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_a_waiver_for_a_subject_of_another_project_is_not_found(team, api):
    theirs = dataset_version(team.other_project, team.outsider)
    response = api(team.compliance).post(
        f"{base(team.project)}waivers/", waiver_body(theirs), format="json"
    )
    assert response.status_code == 404


def test_non_members_get_404_for_everything(team, api, violation):
    outsider = api(team.outsider)
    project = base(team.project)
    for path in (
        "waivers/",
        "erasure-holds/",
        "violations/",
        f"violations/{violation.pk}/",
        f"violations/{violation.pk}/comments/",
        "policy-scans/",
    ):
        assert outsider.get(project + path).status_code == 404, path
    for path, body in (
        ("waivers/", waiver_body(violation)),
        (f"violations/{violation.pk}/resolve/", {"resolution": "x"}),
        (f"violations/{violation.pk}/comments/", {"text": "x"}),
        ("policy-scans/", None),
        ("erasure-holds/", {"dataset_version_id": violation.subject_id, "reference": "ER-1"}),
    ):
        assert outsider.post(project + path, body, format="json").status_code == 404, path
    patch = outsider.patch(
        f"{project}violations/{violation.pk}/", {"assignee": None}, format="json"
    )
    assert patch.status_code == 404


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"rule": "speed"}, "rule"),
        ({"subject_type": "project"}, "subject_type"),
        ({"subject_id": "12"}, "subject_id"),
        ({"expires_at": "next week"}, "expires_at"),
        ({"reason": ""}, "reason"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_waiver_input_is_a_400_naming_the_field(team, api, gpl, changes, field):
    response = api(team.compliance).post(
        f"{base(team.project)}waivers/", waiver_body(gpl, **changes), format="json"
    )
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


@pytest.mark.parametrize("expires", [-1, 400])
def test_a_waiver_expires_in_the_future_within_a_year(team, api, gpl, expires):
    response = api(team.compliance).post(
        f"{base(team.project)}waivers/",
        waiver_body(gpl, expires_at=in_days(expires)),
        format="json",
    )
    assert response.status_code == 400
    assert "expires_at" in response.json()["error"]["fields"]


# -- erasure holds ---------------------------------------------------------------------------


def test_owners_place_and_release_erasure_holds(team, api, gpl):
    owner = api(team.owner)
    placed = owner.post(
        f"{base(team.project)}erasure-holds/",
        {"dataset_version_id": gpl.pk, "reference": "GDPR-17"},
        format="json",
    )
    assert placed.status_code == 201, placed.json()
    hold = placed.json()
    assert hold["active"] and hold["dataset_version"] == f"{gpl.dataset.slug} v1"
    assert api(team.viewer).get(f"{base(team.project)}erasure-holds/").json()["count"] == 1
    assert (
        api(team.engineer)
        .post(f"{base(team.project)}erasure-holds/{hold['id']}/release/")
        .status_code
        == 403
    )

    released = owner.post(f"{base(team.project)}erasure-holds/{hold['id']}/release/")

    assert released.status_code == 200 and released.json()["active"] is False
    assert api(team.viewer).get(f"{base(team.project)}erasure-holds/?active=1").json()["count"] == 0
    assert audit_actions(team.project)[-2:] == ["erasure_hold.placed", "erasure_hold.released"]


def test_a_hold_on_another_projects_version_is_not_found(team, api):
    theirs = dataset_version(team.other_project, team.outsider)
    response = api(team.owner).post(
        f"{base(team.project)}erasure-holds/",
        {"dataset_version_id": theirs.pk, "reference": "GDPR-17"},
        format="json",
    )
    assert response.status_code == 404


# -- violations ------------------------------------------------------------------------------


def test_members_list_and_filter_violations(team, api, violation):
    viewer = api(team.viewer)
    listed = viewer.get(f"{base(team.project)}violations/?state=open&rule=licences").json()
    assert [v["id"] for v in listed["results"]] == [violation.pk]
    item = listed["results"][0]
    assert item["rule_number"] == 1 and item["subject"]["type"] == "dataset_version"
    assert item["fix"] and item["policy_version"] == "project v1"
    assert viewer.get(f"{base(team.project)}violations/?rule=compute").json()["count"] == 0
    assert viewer.get(f"{base(team.project)}violations/?state=resolved").json()["count"] == 0
    bad = viewer.get(f"{base(team.project)}violations/?state=closed")
    assert bad.status_code == 400 and "state" in bad.json()["error"]["fields"]


def test_a_violation_is_assigned_commented_and_resolved_audited(team, api, violation):
    path = f"{base(team.project)}violations/{violation.pk}/"
    officer = api(team.compliance)

    assigned = officer.patch(path, {"assignee": team.engineer.pk}, format="json")
    assert assigned.status_code == 200, assigned.json()
    assert assigned.json()["assignee"] == team.engineer.pk
    assert assigned.json()["assignee_name"] == "engineer"

    comment = api(team.engineer).post(f"{path}comments/", {"text": "relicensing"}, format="json")
    assert comment.status_code == 201 and comment.json()["author"] == "engineer"
    comments = api(team.viewer).get(f"{path}comments/").json()
    assert [c["text"] for c in comments["results"]] == ["relicensing"]

    resolved = officer.post(f"{path}resolve/", {"resolution": "dataset withdrawn"}, format="json")
    assert resolved.status_code == 200
    assert resolved.json()["state"] == "resolved" and resolved.json()["resolved_by"] == "compliance"
    assert audit_actions(team.project)[-3:] == [
        "violation.assigned",
        "violation.commented",
        "violation.resolved",
    ]
    assert (
        officer.post(f"{path}resolve/", {"resolution": "again"}, format="json").status_code == 409
    )
    unassigned = officer.patch(path, {"assignee": None}, format="json")
    assert unassigned.status_code == 200 and unassigned.json()["assignee"] is None


def test_engineers_and_viewers_cannot_assign_or_resolve(team, api, violation):
    path = f"{base(team.project)}violations/{violation.pk}/"
    for user in (team.engineer, team.viewer):
        client = api(user)
        assert client.patch(path, {"assignee": None}, format="json").status_code == 403
        assert client.post(f"{path}resolve/", {"resolution": "x"}, format="json").status_code == 403


def test_assigning_to_a_non_member_or_bad_input_is_refused(team, api, violation):
    path = f"{base(team.project)}violations/{violation.pk}/"
    officer = api(team.compliance)
    outsider = officer.patch(path, {"assignee": team.outsider.pk}, format="json")
    assert outsider.status_code == 404 and "assignee" in outsider.json()["error"]["fields"]
    for body, field in (({"assignee": "engineer"}, "assignee"), ({}, "assignee")):
        response = officer.patch(path, body, format="json")
        assert response.status_code == 400 and field in response.json()["error"]["fields"]
    empty = officer.post(f"{path}resolve/", {"resolution": ""}, format="json")
    assert empty.status_code == 400 and "resolution" in empty.json()["error"]["fields"]
    blank = api(team.viewer).post(f"{path}comments/", {"text": ""}, format="json")
    assert blank.status_code == 400 and "text" in blank.json()["error"]["fields"]


def test_a_violation_of_another_project_is_not_found(team, api):
    from controlplane.policies.models import Violation

    theirs = dataset_version(team.other_project, team.outsider, licence="GPL-3.0-only")
    set_policy(team.other_project, team.outsider, {"licences": {"enabled": True}})
    run_scan(team.other_project, team.outsider)
    row = Violation.objects.get(subject_id=theirs.pk)
    assert api(team.owner).get(f"{base(team.project)}violations/{row.pk}/").status_code == 404


# -- scans -----------------------------------------------------------------------------------


def test_starting_a_scan_answers_202_and_the_scan_is_polled(team, api, gpl, sent_jobs):
    set_policy(team.project, team.compliance, {"licences": {"enabled": True}})
    started = api(team.owner).post(f"{base(team.project)}policy-scans/")
    assert started.status_code == 202, started.json()
    scan = started.json()
    assert scan["state"] == "queued" and scan["project_id"] == team.project.pk

    from controlplane.policies.scan import scan_run

    scan_run(scan["id"])
    polled = api(team.viewer).get(f"{base(team.project)}policy-scans/{scan['id']}/").json()
    assert polled["state"] == "succeeded" and polled["counts"]["opened"] == 1
    assert api(team.viewer).get(f"{base(team.project)}policy-scans/").json()["count"] == 1
    assert open_violations(team.project)


@pytest.mark.parametrize("role", ["engineer", "viewer"])
def test_engineers_and_viewers_cannot_start_scans(team, api, role):
    response = api(getattr(team, role)).post(f"{base(team.project)}policy-scans/")
    assert response.status_code == 403


def test_only_staff_scan_every_project(team, api):
    assert api(team.owner).post("/api/v1/policy-scans/").status_code == 403
    assert api(team.owner).get("/api/v1/policy-scans/").status_code == 403
    started = api(team.admin).post("/api/v1/policy-scans/")
    assert started.status_code == 202 and started.json()["project_id"] is None
    assert api(team.admin).get("/api/v1/policy-scans/").json()["count"] == 1
    other = api(team.owner).get(f"{base(team.project)}policy-scans/{started.json()['id']}/")
    assert other.status_code == 404
