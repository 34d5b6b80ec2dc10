"""Organisation-wide data-subject requests: filed and approved by the organisation's
admins, fanned out to one request per project, carried out by the per-project machinery
(the real job handler, run in-process), and followed by the parent to its end.

Acme has two projects (acme-one, acme-two); Other has one (elsewhere). Each has a support
dataset in which four of twelve tickets are Ann's."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from tests.platform.gdpr.test_gdpr_erasure import ANN, _everything_stored_about, _support_log

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

SUBJECT = [{"type": "email", "value": ANN}]


@pytest.fixture
def acme(make_user, make_ready_version):
    from controlplane.datasets.services import dataset_create
    from controlplane.orgs.models import OrgMembership, OrgRole
    from controlplane.orgs.services import org_create
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add, project_create

    class Acme:
        pass

    a = Acme()
    a.filer = make_user("org-filer")  # admin of Acme, owner of acme-one
    a.approver = make_user("org-approver")  # admin of Acme, viewer of acme-one
    a.engineer = make_user("acme-engineer")  # member of Acme: engineer in one, viewer in two
    a.compliance = make_user("acme-compliance")  # compliance officer of acme-one only
    a.owner_two = make_user("owner-two")  # member of Acme, owner of acme-two
    a.stranger = make_user("stranger")  # admin of Other
    a.org = org_create(name="Acme", slug="acme", actor=a.filer)
    OrgMembership.objects.create(organisation=a.org, user=a.approver, role=OrgRole.ADMIN)
    a.one = project_create(name="Acme one", slug="acme-one", actor=a.filer, organisation=a.org)
    a.two = project_create(name="Acme two", slug="acme-two", actor=a.owner_two, organisation=a.org)
    for user, role in ((a.approver, Role.VIEWER), (a.engineer, Role.ENGINEER)):
        member_add(project=a.one, user=user, role=role, actor=a.filer)
    member_add(project=a.one, user=a.compliance, role=Role.COMPLIANCE, actor=a.filer)
    member_add(project=a.two, user=a.engineer, role=Role.VIEWER, actor=a.owner_two)
    a.other_org = org_create(name="Other", slug="other", actor=a.stranger)
    a.elsewhere = project_create(
        name="Elsewhere", slug="elsewhere", actor=a.stranger, organisation=a.other_org
    )
    a.versions = {}
    for project, owner in ((a.one, a.filer), (a.two, a.owner_two), (a.elsewhere, a.stranger)):
        dataset = dataset_create(
            project=project,
            actor=owner,
            name="Support",
            slug="support",
            kind="text",
            subject_field="customer",
        )
        a.versions[project.slug] = make_ready_version(dataset, owner, _support_log())
    return a


def _file(acme, kind="erasure", actor=None):
    from controlplane.gdpr.services import request_file

    return request_file(
        project=acme.one,
        actor=actor or acme.filer,
        kind=kind,
        identifiers=SUBJECT,
        legal_basis="Art. 17(1)(b): consent withdrawn" if kind == "erasure" else "Art. 15",
        scope="organisation",
    )


def _approved(acme, capture, kind="erasure"):
    from controlplane.gdpr.services import request_approve

    parent = _file(acme, kind)
    with capture(execute=True):
        request_approve(request=parent, actor=acme.approver, reason="checked the identity")
    parent.refresh_from_db()
    return parent


def _children(parent) -> dict[str, object]:
    return {c.project.slug: c for c in parent.children.select_related("project")}


def _run_child(child, run_on_worker) -> None:
    from controlplane.jobs.models import Job

    job = run_on_worker(Job.objects.get(pk=child.progress["job_id"]))
    assert job.state == "succeeded", job.error


def _api_url(project_id, *rest) -> str:
    return f"/api/v1/projects/{project_id}/subject-requests/" + "".join(f"{p}/" for p in rest)


@pytest.mark.slow
def test_an_organisation_erasure_erases_the_subject_in_every_project_of_it_and_nowhere_else(
    acme, django_capture_on_commit_callbacks, run_on_worker, client
):
    from controlplane.audit.models import AuditEvent
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.gdpr.models import SubjectRequest
    from controlplane.gdpr.organisation import parent_advance
    from controlplane.storage import object_store
    from controlplane.subject_keys import subject_hash

    parent = _approved(acme, django_capture_on_commit_callbacks)

    assert parent.state == "in_progress" and not parent.progress.get("job_id")
    children = _children(parent)
    assert set(children) == {"acme-one", "acme-two"}
    for child in children.values():
        assert child.state == "in_progress" and child.progress["job_id"]
        assert (child.scope, child.kind, child.deadline_at) == (
            "project",
            "erasure",
            parent.deadline_at,
        )
        assert (child.reviewed_by, child.legal_basis) == (acme.approver, parent.legal_basis)
        # Re-hashed with the child's own project key: what that project's indexes hold.
        (row,) = child.identifiers.all()
        assert row.subject_hash == subject_hash(child.project, ANN)
    assert children["acme-one"].identifiers.get().subject_hash != (
        children["acme-two"].identifiers.get().subject_hash
    )
    fanned = AuditEvent.objects.get(project_id=acme.two.pk, action="subject_request.fanned_out")
    assert fanned.payload["parent"] == parent.pk
    assert fanned.payload["request"] == children["acme-two"].pk
    assert not SubjectRequest.objects.filter(project=acme.elsewhere).exists()

    _run_child(children["acme-one"], run_on_worker)
    assert erasure_advance(children["acme-one"]) == "completed"
    # One project done, the other not yet: the parent waits.
    assert parent_advance(parent) == "waiting for 1 of 2 projects"
    parent.refresh_from_db()
    assert parent.state == "in_progress"

    _run_child(children["acme-two"], run_on_worker)
    assert erasure_advance(children["acme-two"]) == "completed"
    assert parent_advance(parent) == "completed"
    parent.refresh_from_db()
    assert parent.state == "completed"

    for slug in ("acme-one", "acme-two"):
        old = acme.versions[slug]
        old.refresh_from_db()
        assert old.state == "erased" and old.erasure_request_id == children[slug].pk
        new = old.dataset.versions.get(number=2)
        assert ANN not in object_store().get_bytes(new.files.get().object_key).decode()
    untouched = acme.versions["elsewhere"]
    untouched.refresh_from_db()
    assert untouched.state == "ready"
    assert ANN in object_store().get_bytes(untouched.files.get().object_key).decode()

    certificate = parent.certificate
    assert certificate["request"]["scope"] == "organisation"
    assert certificate["organisation"]["slug"] == "acme"
    rows = {row["project"]: row for row in certificate["projects"]}
    assert set(rows) == {acme.one.pk, acme.two.pk}
    for child in children.values():
        row = rows[child.project_id]
        assert (row["request"], row["state"], row["found"]) == (child.pk, "completed", 4)
        assert (row["rewritten"], row["deleted"], row["models_flagged"]) == (1, 1, 0)
        assert row["residue_scan"]["clean"] is True
        assert row["chain_head"]["length"] > 0
    assert certificate["audit_events"] and certificate["chain_head"]["length"] > 0
    assert ANN not in _everything_stored_about(parent)

    client.force_login(acme.approver)
    page = client.get(f"/projects/{acme.one.pk}/subject-requests/{parent.pk}/certificate/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "every project of the organisation" in html and "Acme two" in html
    assert f"#{children['acme-two'].pk}" in html


def test_a_failing_child_fails_the_parent_with_its_reason(
    acme, django_capture_on_commit_callbacks, run_on_worker
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.gdpr.tasks import gdpr_erasures_advance
    from controlplane.jobs.models import Job

    parent = _approved(acme, django_capture_on_commit_callbacks)
    children = _children(parent)
    broken = children["acme-two"]
    Job.objects.filter(pk=broken.progress["job_id"]).update(
        state="failed", error="the worker ran out of disk"
    )
    assert erasure_advance(broken) == "failed"
    _run_child(children["acme-one"], run_on_worker)

    # The beat's pass: the first child completes, then the parent follows both.
    outcome = gdpr_erasures_advance()

    assert outcome[children["acme-one"].pk] == "completed"
    assert outcome[parent.pk] == "failed"
    parent.refresh_from_db()
    assert parent.state == "failed" and not parent.certificate
    assert f"project Acme two (request #{broken.pk})" in parent.failure_reason
    assert "the worker ran out of disk" in parent.failure_reason
    assert "Acme one" not in parent.failure_reason


def test_an_organisation_access_request_is_one_export_with_a_folder_per_project(
    acme, django_capture_on_commit_callbacks, run_on_worker, api, client
):
    from controlplane.gdpr.access import access_advance
    from controlplane.gdpr.organisation import parent_advance
    from controlplane.storage import object_store

    parent = _approved(acme, django_capture_on_commit_callbacks, kind="access")
    children = _children(parent)
    _run_child(children["acme-one"], run_on_worker)
    assert access_advance(children["acme-one"]) == "waiting for the download"
    assert parent_advance(parent) == "waiting for 1 of 2 projects"
    _run_child(children["acme-two"], run_on_worker)
    assert access_advance(children["acme-two"]) == "waiting for the download"

    assert parent_advance(parent) == "waiting for the download"

    child_keys = []
    for child in children.values():
        child.refresh_from_db()
        assert child.progress["export"]["combined_into"] == parent.pk
        child_keys.append(child.progress["export"]["key"])
    # The children's exports live on only inside the parent's.
    assert not [key for key in child_keys if object_store().exists(key)]
    parent_page = f"/projects/{acme.one.pk}/subject-requests/{parent.pk}/"
    client.force_login(acme.engineer)
    html = client.get(parent_page).content.decode()
    assert f"{acme.approver.username}, who approved the request, downloads it" in html
    client.force_login(acme.approver)
    assert "Download the export (once)" in client.get(parent_page).content.decode()
    client.force_login(acme.owner_two)
    child_page = f"/projects/{acme.two.pk}/subject-requests/{children['acme-two'].pk}/"
    html = client.get(child_page).content.decode()
    assert f"Combined into the export of organisation request #{parent.pk}" in html
    assert "Download the export" not in html
    # A project's owner cannot take that project's part on its own.
    refused = api(acme.filer).get(_api_url(acme.one.pk, children["acme-one"].pk, "export"))
    assert refused.status_code == 409
    assert f"organisation request #{parent.pk}" in refused.json()["error"]["message"]
    # The parent's export is for the organisation's admins, not a project engineer.
    assert api(acme.engineer).get(_api_url(acme.one.pk, parent.pk, "export")).status_code == 403
    # Nor another admin of the organisation: the one who approved it downloads it.
    refused = api(acme.filer).get(_api_url(acme.one.pk, parent.pk, "export"))
    assert refused.status_code == 403
    assert "who approved this request" in refused.json()["error"]["message"]

    response = api(acme.approver).get(_api_url(acme.one.pk, parent.pk, "export"))

    assert response.status_code == 200, response.content
    with zipfile.ZipFile(io.BytesIO(response.content)) as export:
        names = set(export.namelist())
        manifest = json.loads(export.read("manifest.json"))
        records = [
            json.loads(line)
            for line in export.read("acme-two/datasets/support-v1.jsonl").decode().splitlines()
        ]
    for folder in ("acme-one", "acme-two"):
        assert {f"{folder}/manifest.json", f"{folder}/inference_archive.jsonl"} <= names
        assert f"{folder}/datasets/support-v1.jsonl" in names
    assert not any(name.startswith("elsewhere/") for name in names)
    assert len(records) == 4 and all(r["record"]["customer"] == ANN for r in records)
    assert {p["folder"]: p["request"] for p in manifest["projects"]} == {
        slug: child.pk for slug, child in children.items()
    }
    assert api(acme.approver).get(_api_url(acme.one.pk, parent.pk, "export")).status_code == 410
    parent.refresh_from_db()
    assert parent.state == "completed"
    assert not object_store().exists(parent.certificate["export"]["key"])
    assert {row["exported"] for row in parent.certificate["projects"]} == {4}
    for child in children.values():
        child.refresh_from_db()
        assert child.state == "completed"
        assert child.certificate["export"]["downloaded_by"] == acme.approver.username


def test_only_the_organisations_admins_file_and_another_one_approves(
    acme, api, make_user, django_capture_on_commit_callbacks
):
    staff = make_user("platform-staff", staff=True)
    body = {"kind": "erasure", "identifiers": SUBJECT, "legal_basis": "Art. 17(1)(b)"}
    org_body = {**body, "scope": "organisation"}

    refused = api(acme.engineer).post(_api_url(acme.one.pk), org_body, format="json")
    assert refused.status_code == 403
    assert "admin of organisation Acme" in refused.json()["error"]["message"]
    assert api(staff).post(_api_url(acme.one.pk), org_body, format="json").status_code == 201
    filed = api(acme.filer).post(_api_url(acme.one.pk), org_body, format="json")
    assert filed.status_code == 201 and filed.json()["scope"] == "organisation"
    parent_id = filed.json()["id"]

    approve = _api_url(acme.one.pk, parent_id, "approve")
    own = api(acme.filer).post(approve, {"reason": "ok"}, format="json")
    assert own.status_code == 403 and "you filed this request" in own.json()["error"]["message"]
    # A project's compliance officer decides project requests, not the organisation's;
    # neither does a platform admin without the organisation's admin role.
    for user in (acme.compliance, staff):
        response = api(user).post(approve, {"reason": "ok"}, format="json")
        assert response.status_code == 403
        assert "admin role in organisation Acme" in response.json()["error"]["message"]

    with django_capture_on_commit_callbacks(execute=True):
        approved = api(acme.approver).post(approve, {"reason": "identity checked"}, format="json")

    assert approved.status_code == 200, approved.content
    body = api(acme.engineer).get(_api_url(acme.one.pk, parent_id)).json()
    assert body["state"] == "in_progress" and body["parent"] is None
    assert {(c["project"], c["state"]) for c in body["children"]} == {
        (acme.one.pk, "in_progress"),
        (acme.two.pk, "in_progress"),
    }
    child = next(c for c in body["children"] if c["project"] == acme.two.pk)
    shown = api(acme.owner_two).get(_api_url(acme.two.pk, child["id"])).json()
    assert shown["parent"]["id"] == parent_id and shown["parent"]["project"] == acme.one.pk
    assert shown["children"] == []


def test_the_fan_out_is_idempotent_and_a_crash_half_way_leaves_no_child(
    acme, django_capture_on_commit_callbacks, monkeypatch
):
    from django.db import IntegrityError, transaction

    from controlplane.gdpr import organisation
    from controlplane.gdpr.errors import Conflict
    from controlplane.gdpr.models import RequestState, SubjectRequest
    from controlplane.gdpr.services import request_approve

    parent = _file(acme)
    with django_capture_on_commit_callbacks(execute=False):  # the hooks never ran
        request_approve(request=parent, actor=acme.approver, reason="checked the identity")
    real_audit = organisation.audit_append

    def crash_on_the_second_child(**kwargs):
        if kwargs["action"] == organisation.FANNED_OUT and kwargs["project"] == acme.two:
            raise RuntimeError("the control worker died")
        return real_audit(**kwargs)

    monkeypatch.setattr(organisation, "audit_append", crash_on_the_second_child)
    with pytest.raises(RuntimeError):
        organisation.fan_out(parent)
    parent.refresh_from_db()
    assert parent.state == RequestState.APPROVED and not parent.children.exists()

    monkeypatch.setattr(organisation, "audit_append", real_audit)
    outcome = organisation.parents_advance_all()  # the beat takes it up
    organisation.fan_out(parent)
    organisation.parents_advance_all()

    assert outcome[parent.pk] == "waiting for 2 of 2 projects"
    assert sorted(parent.children.values_list("project_id", flat=True)) == sorted(
        [acme.one.pk, acme.two.pk]
    )
    with pytest.raises(Conflict):
        request_approve(request=parent, actor=acme.approver, reason="again")
    child = parent.children.get(project=acme.two)
    with pytest.raises(IntegrityError), transaction.atomic():
        SubjectRequest.objects.create(
            project=acme.two,
            parent=parent,
            kind=child.kind,
            legal_basis=child.legal_basis,
            filed_by=child.filed_by,
            received_at=child.received_at,
            deadline_at=child.deadline_at,
        )


def test_extending_the_parent_extends_its_children_and_a_child_alone_is_refused(
    acme, django_capture_on_commit_callbacks
):
    from controlplane.gdpr.errors import Conflict
    from controlplane.gdpr.services import request_extend

    parent = _approved(acme, django_capture_on_commit_callbacks)
    child = parent.children.get(project=acme.two)

    extended = request_extend(
        request=parent, actor=acme.approver, months=2, reason="many projects to search"
    )

    child.refresh_from_db()
    assert child.deadline_at == extended.deadline_at and child.extension_months == 2
    with pytest.raises(Conflict) as refused:
        request_extend(request=child, actor=acme.owner_two, months=1, reason="more time")
    assert f"organisation request #{parent.pk}" in refused.value.message


def test_the_pages_link_parent_and_children_where_the_viewer_may_open_them(
    acme, django_capture_on_commit_callbacks, client
):
    parent = _approved(acme, django_capture_on_commit_callbacks)
    children = _children(parent)
    one, two = children["acme-one"], children["acme-two"]
    parent_url = f"/projects/{acme.one.pk}/subject-requests/{parent.pk}/"
    child_url = f"/projects/{acme.two.pk}/subject-requests/{two.pk}/"

    client.force_login(acme.approver)  # a member of acme-one only
    html = client.get(parent_url).content.decode()
    assert f'href="/projects/{acme.one.pk}/subject-requests/{one.pk}/"' in html
    assert f"#{two.pk}" in html and f'href="{child_url}"' not in html
    assert "Acme two" in html

    client.force_login(acme.engineer)  # a member of both
    html = client.get(child_url).content.decode()
    assert "Fanned out from organisation request" in html
    assert f'href="{parent_url}">#{parent.pk} in project Acme one</a>' in html

    client.force_login(acme.owner_two)  # a member of acme-two only
    html = client.get(child_url).content.decode()
    assert f"#{parent.pk} in project Acme one" in html and f'href="{parent_url}"' not in html


def test_the_review_queue_lets_an_organisation_admin_decide(
    acme, client, django_capture_on_commit_callbacks
):
    parent = _file(acme)
    queue = f"/projects/{acme.one.pk}/subject-requests/review/"

    client.force_login(acme.compliance)
    assert "an admin of the organisation decides" in client.get(queue).content.decode()
    client.force_login(acme.approver)
    html = client.get(queue).content.decode()
    assert f"/subject-requests/{parent.pk}/review/" in html

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            f"/projects/{acme.one.pk}/subject-requests/{parent.pk}/review/",
            {"decision": "approve", "reason": "identity checked", "next": "queue"},
        )

    parent.refresh_from_db()
    assert parent.state == "in_progress" and parent.children.count() == 2


def test_another_organisation_never_sees_the_children(
    acme, django_capture_on_commit_callbacks, api, client
):
    parent = _approved(acme, django_capture_on_commit_callbacks)
    stranger = api(acme.stranger)

    for child in parent.children.all():
        assert stranger.get(_api_url(child.project_id, child.pk)).status_code == 404
        client.force_login(acme.stranger)
        page = client.get(f"/projects/{child.project_id}/subject-requests/{child.pk}/")
        assert page.status_code == 404
    assert stranger.get(_api_url(acme.one.pk, parent.pk)).status_code == 404
    assert stranger.get(_api_url(acme.elsewhere.pk)).json()["count"] == 0


def test_the_file_form_files_the_organisation_scope_for_its_admins_only(acme, client):
    from controlplane.gdpr.models import SubjectRequest

    form = {
        "kind": "erasure",
        "identifiers": f"email: {ANN}",
        "legal_basis": "Art. 17(1)(b): consent withdrawn",
        "scope": "organisation",
    }
    new = f"/projects/{acme.one.pk}/subject-requests/new/"

    client.force_login(acme.engineer)
    refused = client.post(new, form)
    assert refused.status_code == 403
    assert "filed by an admin of organisation Acme" in refused.content.decode()
    client.force_login(acme.approver)  # a viewer of acme-one, an admin of Acme
    assert client.post(new, form).status_code == 302

    filed = SubjectRequest.objects.get(project=acme.one)
    assert (filed.scope, filed.filed_by) == ("organisation", acme.approver)


def test_the_admin_actions_follow_the_organisations_rules(
    acme, client, make_user, django_capture_on_commit_callbacks
):
    from controlplane.orgs.models import OrgMembership, OrgRole
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add
    from tests.platform.gdpr.test_gdpr_admin import decide

    root = make_user("org-root", staff=True)
    root.is_superuser = True
    root.save()
    member_add(project=acme.one, user=root, role=Role.COMPLIANCE, actor=acme.filer)
    parent = _file(acme)
    client.force_login(root)

    html = decide(client, parent.pk, "approve").content.decode()

    assert "admin role in organisation Acme" in html
    parent.refresh_from_db()
    assert parent.state == "pending_review"
    OrgMembership.objects.filter(organisation=acme.org, user=root).update(role=OrgRole.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        html = decide(client, parent.pk, "approve").content.decode()
    assert "1 request(s) approved" in html
    parent.refresh_from_db()
    assert parent.state == "in_progress" and parent.children.count() == 2


def test_an_organisation_export_not_taken_in_time_fails_the_parent_and_its_children(
    acme, django_capture_on_commit_callbacks, run_on_worker
):
    import datetime as dt

    from django.utils import timezone

    from controlplane.gdpr.access import access_advance, exports_expire
    from controlplane.gdpr.organisation import parent_advance
    from controlplane.storage import object_store

    parent = _approved(acme, django_capture_on_commit_callbacks, kind="access")
    for child in _children(parent).values():
        _run_child(child, run_on_worker)
        access_advance(child)
    assert parent_advance(parent) == "waiting for the download"
    parent.refresh_from_db()
    key = parent.progress["export"]["key"]

    expired = exports_expire(timezone.now() + dt.timedelta(days=30))

    assert expired == [parent.pk]  # the children's parts expire with it, not on their own
    parent.refresh_from_db()
    assert parent.state == "failed" and "not downloaded within" in parent.failure_reason
    assert not object_store().exists(key)
    for child in parent.children.all():
        assert child.state == "failed"
        assert f"organisation request #{parent.pk} expired" in child.failure_reason
