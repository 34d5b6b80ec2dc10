"""An approved access request (GDPR Art. 15), end to end without a broker: the find-only
job, the export in the object store, its one download (then 410), its expiry; and the
printable certificate of a completed request."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import pytest

from tests.platform.gdpr.test_gdpr_erasure import (
    ANN,
    _approve,
    _everything_stored_about,
    _support_log,
)
from tests.platform.serving.archive_helpers import archive, make_deployment, record

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them


@pytest.fixture
def support(team, make_ready_version):
    """A text dataset with a subject field: four of its twelve tickets are Ann's."""
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Support",
        slug="support",
        kind="text",
        subject_field="customer",
    )
    return make_ready_version(dataset, team.engineer, _support_log())


def _export_url(request) -> str:
    return f"/api/v1/projects/{request.project_id}/subject-requests/{request.pk}/export/"


@pytest.fixture
def ready_export(
    team,
    support,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
    sent_jobs,
):
    """An approved access request whose search ran and whose export is built; the
    inference archive holds one of Ann's requests and one of somebody else's."""
    from controlplane.gdpr.access import access_advance
    from controlplane.jobs.models import Job

    deployment = make_deployment(team.project, team.engineer)
    mine = record(1, subject=ANN, request={"messages": [{"role": "user", "content": "hi, Ann"}]})
    archive(deployment, [record(0), mine])
    from controlplane.gdpr.services import request_approve

    request = file_request(
        kind="access",
        identifiers=[{"type": "email", "value": ANN}],
        legal_basis="Art. 15: the subject asked for a copy",
    )
    with django_capture_on_commit_callbacks(execute=True):
        request_approve(request=request, actor=team.compliance, reason="checked the identity")
    request.refresh_from_db()
    assert request.state == "in_progress"
    job = Job.objects.get(kind="erasure")
    assert job.params["mode"] == "find"
    (spec,) = [args[0] for name, args, _ in sent_jobs if args and args[0]["kind"] == "erasure"]
    assert spec["subject_secrets"]["identifiers"] == [ANN]
    assert ANN not in json.dumps(spec["params"])
    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    assert not job.produced_versions.exists()  # nothing rewritten
    assert access_advance(request) == "waiting for the download"
    request.refresh_from_db()
    return request, mine


def test_the_export_holds_both_sources_and_is_downloaded_once(
    team, support, ready_export, api, client
):
    from controlplane.audit.models import AuditEvent
    from controlplane.storage import object_store

    request, mine = ready_export
    export = request.progress["export"]
    assert export["key"] == f"projects/{team.project.pk}/gdpr/requests/{request.pk}/export.zip"
    assert object_store().exists(export["key"])
    # the search's own parts are gone: only the export holds the records
    assert not object_store().exists(request.progress["found"][0]["part"]["key"])
    support.refresh_from_db()
    assert support.state == "ready"

    # "Downloadable once by the reviewer": the compliance officer who approved it, and
    # nobody else, not even the project's owner.
    page = f"/projects/{team.project.pk}/subject-requests/{request.pk}/"
    client.force_login(team.compliance)
    assert "Download the export (once)" in client.get(page).content.decode()
    for user in (team.owner, team.engineer):
        client.force_login(user)
        html = client.get(page).content.decode()
        assert "Download the export (once)" not in html
        assert f"{team.compliance.username}, who approved the request, downloads it" in html
    client.force_login(team.owner)
    refused = client.post(page + "export/")
    assert refused.status_code == 403
    html = refused.content.decode()  # the request's page, saying why
    assert f"only {team.compliance.username}, who approved this request" in html
    assert "Download the export (once)" not in html
    refused = api(team.owner).get(_export_url(request))
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith(
        f"only {team.compliance.username}, who approved this request, downloads its export"
    )
    for user in (team.engineer, team.viewer):
        assert api(user).get(_export_url(request)).status_code == 403
    assert api(team.outsider).get(_export_url(request)).status_code == 404
    assert object_store().exists(export["key"])

    response = api(team.compliance).get(_export_url(request))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as zipped:
        names = set(zipped.namelist())
        dataset = [json.loads(x) for x in zipped.read("datasets/support-v1.jsonl").splitlines()]
        served = [json.loads(x) for x in zipped.read("inference_archive.jsonl").splitlines()]
    assert names == {"datasets/support-v1.jsonl", "inference_archive.jsonl", "manifest.json"}
    assert [(r["file"], r["line"]) for r in dataset] == [("log.jsonl", n) for n in (1, 4, 7, 10)]
    assert all(r["record"]["customer"] == ANN for r in dataset)
    assert [r["request_id"] for r in served] == [mine["id"]]
    assert served[0]["record"]["request"]["messages"][0]["content"] == "hi, Ann"

    assert not object_store().exists(export["key"])  # deleted right after the download
    again = api(team.compliance).get(_export_url(request))
    assert again.status_code == 410
    assert "downloaded once" in json.dumps(again.json())

    request.refresh_from_db()
    assert request.state == "completed"
    certificate = request.certificate
    assert certificate["export"]["sha256"] == export["sha256"]
    assert certificate["export"]["size"] == len(response.content)
    assert certificate["export"]["downloaded_by"] == team.compliance.username
    assert {s["source"]: s["records"] for s in certificate["export"]["sources"]} == {
        "support v1": 4,
        "inference archive": 1,
    }
    exported = AuditEvent.objects.get(action="subject_request.exported")
    assert exported.actor_id == team.compliance.pk
    assert exported.payload["subjects"] == certificate["request"]["subjects"]
    assert exported.pk in certificate["audit_events"]
    assert ANN.lower() not in _everything_stored_about(request)
    client.force_login(team.compliance)
    printable = client.get(page + "certificate/").content.decode()
    assert "Access certificate (GDPR Art. 15)" in printable and export["sha256"] in printable
    assert "inference_archive.jsonl" in printable and "<script" not in printable
    # the page's download button, after the API's download: gone too
    assert client.post(page + "export/").status_code == 410


def test_an_export_not_downloaded_in_time_is_deleted(team, ready_export, api, settings):
    from django.utils import timezone

    from controlplane.audit.models import AuditEvent
    from controlplane.gdpr.access import exports_expire
    from controlplane.storage import object_store

    request, _ = ready_export
    key = request.progress["export"]["key"]
    assert exports_expire(timezone.now() + dt.timedelta(hours=71)) == []
    assert object_store().exists(key)
    assert exports_expire(timezone.now() + dt.timedelta(hours=73)) == [request.pk]
    assert not object_store().exists(key)
    assert AuditEvent.objects.filter(action="subject_request.export_expired").count() == 1
    request.refresh_from_db()
    assert request.state == "failed" and "not downloaded within 72 hours" in request.failure_reason
    assert api(team.compliance).get(_export_url(request)).status_code == 410


def test_the_certificate_page_of_a_completed_erasure(
    team,
    support,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
    client,
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    page = f"/projects/{team.project.pk}/subject-requests/{request.pk}/certificate/"
    client.force_login(team.owner)
    assert client.get(page).status_code == 404  # not completed yet
    assert client.get(page.rstrip("/") + ".json").status_code == 404
    run_on_worker(Job.objects.get(kind="erasure"))
    assert erasure_advance(request) == "completed"
    request.refresh_from_db()

    for user in (team.owner, team.compliance):
        client.force_login(user)
        response = client.get(page)
        assert response.status_code == 200
        text = response.content.decode()
        assert "Erasure certificate (GDPR Art. 17)" in text and "<script" not in text
        assert "@media print" in text
        assert team.compliance.username in text  # the reviewer
        assert "support v1" in text and "support v2" in text  # found, rewritten as
        for deleted in request.certificate["deleted"]:
            assert deleted["key"] in text and deleted["sha256"] in text
        assert request.certificate["chain_head"]["hash"] in text
        assert "Clean" in text
        assert ANN not in text
    download = client.get(
        f"/projects/{team.project.pk}/subject-requests/{request.pk}/certificate.json"
    )
    assert download.status_code == 200
    assert json.loads(download.content) == json.loads(json.dumps(request.certificate))
    for user in (team.engineer, team.viewer):
        client.force_login(user)
        assert client.get(page).status_code == 403


def test_a_failed_search_fails_the_request_and_leaves_no_part_behind(
    team, support, file_request, django_capture_on_commit_callbacks, monkeypatch
):
    from controlplane.gdpr import services
    from controlplane.gdpr.access import access_advance, accesses_advance_all
    from controlplane.jobs.models import Job
    from controlplane.storage import object_store

    monkeypatch.setattr(services, "on_approved", [])  # a lost hook: the beat starts it
    request = file_request(kind="access", identifiers=[{"type": "email", "value": ANN}])
    with django_capture_on_commit_callbacks(execute=True):
        services.request_approve(request=request, actor=team.compliance, reason="checked")
    outcome = accesses_advance_all()[request.pk]
    job = Job.objects.get(kind="erasure", params__mode="find")
    assert outcome == f"waiting for job {job.pk}"
    # an attempt that uploaded a part, then failed
    part = f"projects/{team.project.pk}/jobs/{job.pk}/attempt-1/access/v{support.pk}.jsonl"
    object_store().put_bytes(part, b'{"record": "x"}\n')
    Job.objects.filter(pk=job.pk).update(state="failed", error=f"could not read {ANN}")
    assert access_advance(request) == "failed"
    assert not object_store().exists(part)
    request.refresh_from_db()
    assert request.state == "failed" and ANN not in request.failure_reason.lower()
