"""The compliance pages: the policy (a card per rule, forms for owners and compliance
officers only, a 409 that keeps what was typed), the project's compliance page, the
staff pages, and the waiver shown wherever its subject appears."""

from __future__ import annotations

import re

import pytest

from tests.platform.policies.page_fixtures import (  # noqa: F401 - fixtures
    edit,
    hold_fixture,
    ready_version_fixture,
    violation_fixture,
    waiver_fixture,
)

pytestmark = pytest.mark.django_db

RULE_KEYS = [
    "licences",
    "data_preparation",
    "residency",
    "pending_erasure",
    "promotion",
    "serving",
    "compute",
]


def policy_url(team) -> str:
    return f"/projects/{team.project.slug}/compliance/policy/"


def compliance_url(team, tail: str = "") -> str:
    return f"/projects/{team.project.slug}/compliance/{tail}"


def forms_on(html: str) -> int:
    return len(re.findall(r'<input type="hidden" name="rule"', html))


def rule_post(team, key: str, **fields) -> dict:
    """A complete post of one rule's form as the page renders it (defaults filled in)."""
    from controlplane.policies.forms import rule_form
    from controlplane.policies.selectors import current_number, policy_in_force

    form = rule_form(key, policy_in_force(team.project).rules[key], current_number(team.project))
    data = {"rule": key}
    for name in form.fields:
        value = fields.get(name, form[name].value())
        if isinstance(value, bool):
            if value:
                data[form.add_prefix(name)] = "on"
        elif value is not None:
            data[form.add_prefix(name)] = str(value)
    return data


def test_policy_page_shows_every_rule_with_its_anchor_and_explanation(team, client):
    from django.utils.html import escape

    from controlplane.policies.rules import RULES

    client.force_login(team.viewer)
    html = client.get(policy_url(team)).content.decode()
    for key in RULE_KEYS:
        assert f'id="rule-{key}"' in html
    assert escape(RULES["licences"].explanation) in html and "Rule 7: Compute" in html
    assert "follows the platform default" in html


@pytest.mark.parametrize(
    ("role", "forms"), [("owner", 7), ("compliance", 7), ("engineer", 0), ("viewer", 0)]
)
def test_only_owners_and_compliance_officers_get_the_forms(team, client, role, forms):
    client.force_login(getattr(team, role))
    response = client.get(policy_url(team))
    assert response.status_code == 200
    assert forms_on(response.content.decode()) == forms


def test_readers_cannot_post_a_rule(team, client):
    client.force_login(team.engineer)
    response = client.post(policy_url(team), rule_post(team, "compute", enabled=True, reason="x"))
    assert response.status_code == 403


def test_a_rule_form_post_creates_a_version_shown_in_the_history(team, client):
    from controlplane.policies.selectors import policy_in_force

    client.force_login(team.compliance)
    data = rule_post(
        team, "licences", enabled=True, allowed_licences="MIT\ncc-by-4.0", reason="open data only"
    )
    response = client.post(policy_url(team), data, follow=True)
    assert response.redirect_chain[-1][0].endswith("#rule-licences")
    html = response.content.decode()
    assert "project v1" in html and "open data only" in html and "CC-BY-4.0" in html
    snapshot = policy_in_force(team.project)
    assert snapshot.label == "project v1"
    assert snapshot.rules["licences"]["allowed_licences"] == ["MIT", "CC-BY-4.0"]


def test_a_bad_licence_is_shown_next_to_its_field_with_the_nearest_ids(team, client):
    from controlplane.policies.selectors import current_number

    client.force_login(team.owner)
    data = rule_post(team, "licences", enabled=True, allowed_licences="MIT\nApache-2", reason="x")
    response = client.post(policy_url(team), data)
    html = response.content.decode()
    assert response.status_code == 400
    assert "line 2" in html and "Apache-2.0" in html
    assert current_number(team.project) == 0


def test_thresholds_are_written_one_a_line(team, client):
    from controlplane.policies.selectors import policy_in_force

    client.force_login(team.owner)
    data = rule_post(team, "promotion", thresholds="val_loss <= 2.5\naccuracy >= 0.9", reason="x")
    assert client.post(policy_url(team), data).status_code == 302
    assert policy_in_force(team.project).rules["promotion"]["thresholds"] == [
        {"metric": "val_loss", "op": "<=", "value": 2.5},
        {"metric": "accuracy", "op": ">=", "value": 0.9},
    ]
    bad = rule_post(team, "promotion", thresholds="val_loss about 2", reason="x")
    response = client.post(policy_url(team), bad)
    assert response.status_code == 400 and "is not &#x27;metric op number&#x27;" in (
        response.content.decode()
    )


def test_a_concurrent_edit_shows_a_409_banner_and_keeps_what_was_typed(team, client):
    from controlplane.policies.selectors import current_number, policy_in_force

    client.force_login(team.owner)
    typed = rule_post(team, "compute", max_gpus_per_job=3, reason="my typed reason")  # saw v0
    edit(team.project, team.compliance, {"compute": {"max_gpus_per_job": 1}}, reason="theirs")
    response = client.post(policy_url(team), typed)
    html = response.content.decode()
    assert response.status_code == 409
    assert "changed meanwhile" in html and "reload" in html and "theirs" in html
    assert "my typed reason" in html and 'value="3"' in html
    assert current_number(team.project) == 1
    assert policy_in_force(team.project).rules["compute"]["max_gpus_per_job"] == 1
    # Submitting again, having seen v1, applies the edit on top of it.
    again = {**typed, "compute-base_version": "1"}
    assert client.post(policy_url(team), again).status_code == 302
    assert policy_in_force(team.project).rules["compute"]["max_gpus_per_job"] == 3


def test_staff_edit_the_default_on_its_page_others_are_refused(team, client):
    from controlplane.policies.selectors import policy_in_force

    client.force_login(team.owner)
    assert client.get("/compliance/policy/").status_code == 403
    assert client.get("/compliance/").status_code == 403
    client.force_login(team.admin)
    html = client.get("/compliance/policy/").content.decode()
    assert forms_on(html) == 7 and "Platform default policy" in html
    data = rule_post(team, "compute", enabled=True, reason="cap for everyone")
    data["compute-base_version"] = "0"
    assert client.post("/compliance/policy/", data).status_code == 302
    assert policy_in_force(team.project).label == "platform v1"


def test_compliance_page_lists_violation_waiver_and_hold(team, client, violation, waiver, hold):
    client.force_login(team.viewer)
    response = client.get(compliance_url(team))
    html = response.content.decode()
    assert response.status_code == 200
    assert f'id="violation-{violation.pk}"' in html and "GPL-3.0-only" in html
    assert "Rule 1: Licences and sources" in html
    assert f'id="waiver-{waiver.pk}"' in html and "cleaned by hand" in html
    assert f'id="hold-{hold.pk}"' in html and "GDPR-2026-17" in html
    # A viewer reads: no forms to resolve, grant, place, release or scan.
    for action in ("resolve/", "waivers/", "holds/", "scans/", "/release/", "/assign/"):
        assert f'{action}"' not in html, action


def test_compliance_officer_gets_every_form(team, client, violation, waiver, hold):
    client.force_login(team.compliance)
    html = client.get(compliance_url(team)).content.decode()
    for action in (
        f"violations/{violation.pk}/resolve/",
        f"violations/{violation.pk}/assign/",
        f"waivers/{waiver.pk}/revoke/",
        f"holds/{hold.pk}/release/",
        "scans/",
        "audit/export/",
    ):
        assert action in html, action
    assert "Grant a waiver" in html


def test_violation_assign_comment_resolve_from_the_page(team, client, violation):
    from controlplane.policies.models import ViolationState

    client.force_login(team.owner)
    base = compliance_url(team, f"violations/{violation.pk}/")
    assert client.post(base + "assign/", {"assignee": team.engineer.pk}).status_code == 302
    client.force_login(team.engineer)
    assert client.post(base + "comment/", {"text": "relicensing it"}).status_code == 302
    assert client.post(base + "resolve/", {"resolution": "done"}).status_code == 403
    client.force_login(team.compliance)
    response = client.post(base + "resolve/", {"resolution": "relicensed"}, follow=True)
    assert "resolved" in response.content.decode()
    violation.refresh_from_db()
    assert violation.assigned_to == team.engineer and violation.state == ViolationState.RESOLVED
    assert violation.comments.get().text == "relicensing it"


def test_waivers_are_granted_by_compliance_officers_only(team, client, ready_version):
    from controlplane.policies.selectors import waivers_for_subject

    post = {
        "rule": "licences",
        "subject_type": "dataset_version",
        "subject_id": ready_version.pk,
        "reason": "licence cleared by legal",
        "expires_at": "2099-01-01",
    }
    client.force_login(team.owner)
    assert client.post(compliance_url(team, "waivers/"), post).status_code == 403
    client.force_login(team.compliance)
    response = client.post(compliance_url(team, "waivers/"), post)
    assert response.status_code == 400 and "at most 366 days" in response.content.decode()
    from datetime import timedelta

    from django.utils import timezone

    post["expires_at"] = (timezone.now() + timedelta(days=10)).strftime("%Y-%m-%d")
    assert client.post(compliance_url(team, "waivers/"), post).status_code == 302
    [waiver] = waivers_for_subject("dataset_version", ready_version.pk)
    assert waiver.granted_by == team.compliance
    assert client.post(compliance_url(team, f"waivers/{waiver.pk}/revoke/")).status_code == 302
    assert not waivers_for_subject("dataset_version", ready_version.pk).exists()


def test_holds_are_placed_and_released_from_the_page(team, client, ready_version):
    from controlplane.policies.selectors import holds_of

    client.force_login(team.owner)
    post = {"dataset_version": ready_version.pk, "reference": "GDPR-1", "reason": ""}
    assert client.post(compliance_url(team, "holds/"), post).status_code == 302
    [hold] = holds_of(team.project)
    assert hold.reference == "GDPR-1"
    assert client.post(compliance_url(team, f"holds/{hold.pk}/release/")).status_code == 302
    assert not holds_of(team.project).exists()


def test_recent_denials_are_listed(team, client):
    from controlplane.audit.services import audit_append

    audit_append(
        project=team.project,
        actor=team.engineer,
        action="policy.denied",
        artifact=("project", team.project.pk),
        payload={
            "gate": "job.create",
            "policy": "project v2",
            "denials": [{"rule": "compute", "subject": {"label": "job"}, "reason": "8 GPUs > 2"}],
        },
    )
    client.force_login(team.viewer)
    html = client.get(compliance_url(team)).content.decode()
    assert "8 GPUs &gt; 2" in html and "Rule 7: Compute" in html and "engineer" in html


def test_waiver_badge_shows_on_the_dataset_version_page(team, client, waiver, ready_version):
    client.force_login(team.viewer)
    url = f"/projects/{team.project.pk}/datasets/{ready_version.dataset_id}/v1/"
    html = client.get(url).content.decode()
    assert "Rule 2: Data preparation before training waived until" in html
    assert "by compliance: cleaned by hand, report follows" in html


def test_staff_overview_lists_every_project(team, client, violation, waiver, hold):
    client.force_login(team.admin)
    response = client.get("/compliance/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "Alpha" in html and "Beta" in html
    assert "Rule 1: Licences and sources: <strong>1</strong>" in html
    assert f"/projects/{team.project.slug}/compliance/" in html


def test_project_tabs_link_the_compliance_page(team, client):
    client.force_login(team.viewer)
    html = client.get(f"/projects/{team.project.pk}/").content.decode()
    assert f'href="/projects/{team.project.slug}/compliance/"' in html


def test_outsiders_get_404_on_every_page(team, client, violation, waiver, hold):
    client.force_login(team.outsider)
    for url in [
        policy_url(team),
        compliance_url(team),
        "/projects/no-such-project/compliance/",
    ]:
        assert client.get(url).status_code == 404, url
    for tail in [
        f"violations/{violation.pk}/assign/",
        f"violations/{violation.pk}/comment/",
        f"violations/{violation.pk}/resolve/",
        "waivers/",
        f"waivers/{waiver.pk}/revoke/",
        "holds/",
        f"holds/{hold.pk}/release/",
        "scans/",
    ]:
        assert client.post(compliance_url(team, tail)).status_code == 404, tail
    assert client.post(policy_url(team), rule_post(team, "compute", reason="x")).status_code == 404


def test_another_projects_violation_is_404(team, client, violation):
    """An id from another project, under a project the caller is in, is not found."""
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add

    member_add(
        project=team.other_project, user=team.compliance, role=Role.COMPLIANCE, actor=team.outsider
    )
    client.force_login(team.compliance)
    url = f"/projects/{team.other_project.slug}/compliance/violations/{violation.pk}/resolve/"
    assert client.post(url, {"resolution": "x"}).status_code == 404


def test_scan_now_queues_a_scan_shown_on_the_page(team, client):
    from controlplane.policies.selectors import scans_of

    client.force_login(team.viewer)
    assert client.post(compliance_url(team, "scans/")).status_code == 403
    client.force_login(team.compliance)
    response = client.post(compliance_url(team, "scans/"), follow=True)
    assert "Scan queued" in response.content.decode()
    [scan] = scans_of(team.project)
    assert scan.state == "queued" and scan.requested_by == team.compliance
    assert "by compliance" in response.content.decode()


def test_waiver_badge_shows_on_the_job_page(team, client, make_upload):
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.jobs.services import job_create
    from controlplane.policies.waivers import waiver_grant

    upload = make_upload(team.project, team.engineer, b"a\n")
    job = job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )
    waiver_grant(
        project=team.project,
        actor=team.compliance,
        rule="compute",
        subject_type="job",
        subject_id=job.pk,
        reason="one-off benchmark on 16 GPUs",
        expires_at=timezone.now() + timedelta(days=2),
    )
    client.force_login(team.viewer)
    html = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "Rule 7: Compute waived until" in html and "one-off benchmark on 16 GPUs" in html


def test_admin_shows_policy_rows_read_only(team, client, violation, waiver, hold):
    edit(team.project, team.owner, {"compute": {"enabled": True}})
    team.admin.is_superuser = True
    team.admin.save()
    client.force_login(team.admin)
    for model in ("policy", "policyversion", "waiver", "violation", "erasurehold", "policyscan"):
        assert client.get(f"/admin/policies/{model}/").status_code == 200, model
        assert client.get(f"/admin/policies/{model}/add/").status_code == 403, model
    page = client.get(f"/admin/policies/violation/{violation.pk}/change/")
    assert page.status_code == 200 and "GPL-3.0-only" in page.content.decode()


def test_help_text_from_the_catalogue_is_escaped(team, client):
    client.force_login(team.owner)
    html = client.get(policy_url(team)).content.decode()
    assert "LicenseRef-&lt;name&gt;" in html and "LicenseRef-<name>" not in html


@pytest.mark.parametrize(
    ("role", "resolve", "grant", "hold_form", "scan"),
    [
        ("owner", True, False, True, True),
        ("compliance", True, True, True, True),
        ("engineer", False, False, False, False),
        ("viewer", False, False, False, False),
    ],
)
def test_compliance_page_forms_follow_the_role(
    team, client, violation, role, resolve, grant, hold_form, scan
):
    client.force_login(getattr(team, role))
    response = client.get(compliance_url(team))
    html = response.content.decode()
    assert response.status_code == 200
    assert (f"violations/{violation.pk}/resolve/" in html) is resolve
    assert ("Grant a waiver" in html) is grant
    assert ("Place the hold" in html) is hold_form
    assert ("Scan now" in html) is scan
    assert f"violations/{violation.pk}/comment/" in html  # every member may explain a fix


def test_compliance_page_costs_the_same_queries_for_more_violations(team, client, violation):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from controlplane.policies.decide import Finding
    from controlplane.policies.models import SubjectType
    from controlplane.policies.rules import RuleKey
    from controlplane.policies.subjects import SubjectRef
    from controlplane.policies.violations import record_findings, violation_comment

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(compliance_url(team)).status_code == 200
        return len(captured)

    client.force_login(team.owner)
    violation_comment(violation=violation, actor=team.owner, text="looking")
    few = queries()
    findings = [
        Finding(RuleKey.COMPUTE, SubjectRef(SubjectType.JOB, 1000 + n, f"job {n}"), "8 GPUs", "")
        for n in range(5)
    ]
    record_findings(project=team.project, findings=findings, policy_label="project v1")
    assert queries() == few
