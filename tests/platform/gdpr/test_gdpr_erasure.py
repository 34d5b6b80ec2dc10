"""An approved erasure request, end to end without a broker: holds and the job on approval,
the worker's rewrite applied as the control worker would, then the control steps (rebuild,
delete, archive, models, residue scan) up to the certificate."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

ANN = "ann@example.com"
PEOPLE = [ANN, "bob@example.com", "carl@example.com"]
WORDS = "order refund parcel courier invoice delay apology voucher address label".split()


def _support_log() -> dict[str, bytes]:
    lines = []
    for i in range(12):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] + str(j % (i + 2)) for j in range(40))
        lines.append(json.dumps({"text": f"ticket {i}: {text}", "customer": PEOPLE[i % 3]}))
    return {"log.jsonl": ("\n".join(lines) + "\n").encode()}


@pytest.fixture
def support(team, make_ready_version):
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


def _approve(team, file_request, capture, identifiers):
    from controlplane.gdpr.services import request_approve

    request = file_request(identifiers=identifiers)
    with capture(execute=True):
        request_approve(request=request, actor=team.compliance, reason="checked the identity")
    request.refresh_from_db()
    return request


def _everything_stored_about(request) -> str:
    """Job params, inputs, events, results and the audit trail, as one text."""
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job, JobEventRecord

    rows = [
        [j.params, j.inputs, j.result, j.error] for j in Job.objects.filter(project=request.project)
    ]
    rows += [e.payload for e in JobEventRecord.objects.all()]
    rows += [e.payload for e in AuditEvent.objects.all()]
    rows += [request.progress, request.certificate, request.failure_reason]
    return json.dumps(rows, default=str).lower()


def test_an_erasure_rewrites_deletes_flags_and_certifies(
    team,
    support,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
    sent_jobs,
    client,
):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create
    from controlplane.policies.models import ErasureHold
    from controlplane.storage import object_store
    from tests.platform.policies.compliance_fixtures import model_version

    pipeline = run_on_worker(
        job_create(
            project=team.project,
            kind="data_pipeline",
            actor=team.engineer,
            params={
                "dataset_version_id": support.pk,
                "val_fraction": 0.25,
                "pipeline": {"stages": ["normalize"]},
            },
        )
    )
    assert pipeline.state == "succeeded", pipeline.error
    cleaned = pipeline.produced_versions.get()
    trained = model_version(team.project, team.engineer, datasets=[cleaned, support])
    tuned = model_version(team.project, team.engineer, name="tuned")
    tuned.base_version = trained
    tuned.save(update_fields=["base_version"])
    old_keys = [f.object_key for v in (support, cleaned) for f in v.files.all()]

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    assert request.state == "in_progress"
    job = Job.objects.get(kind="erasure")
    assert job.params["request_id"] == request.pk
    assert [v["id"] for v in job.params["versions"]] == [support.pk, cleaned.pk]
    assert {h.dataset_version_id for h in ErasureHold.objects.filter(released_at=None)} == {
        support.pk,
        cleaned.pk,
    }
    # The identifiers travel in the dispatch message's secret field, and only there.
    (spec,) = [args[0] for name, args, _ in sent_jobs if args and args[0]["kind"] == "erasure"]
    assert spec["subject_secrets"]["identifiers"] == [ANN]
    assert ANN not in json.dumps(spec["params"])

    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    raw_new, cleaned_new = job.produced_versions.order_by("number")
    assert list(raw_new.parents.all()) == [support] and raw_new.state == "ready"
    assert raw_new.note == f"derived from v1 by erasure request #{request.pk}"
    stored = object_store().get_bytes(raw_new.files.get().object_key).decode()
    assert ANN not in stored and stored.count("\n") == 8
    assert list(cleaned_new.parents.all()) == [cleaned]

    # The token shards were cut by the worker (same bytes as re-tokenizing, tokenizer
    # kept): the new cleaned version trains as it is, no pipeline runs again.
    names = {f.name: f for f in cleaned_new.files.all()}
    old_names = {f.name: f for f in cleaned.files.all()}
    shards = [n for n in names if n.startswith("tokens/") and n.endswith(".bin")]
    assert shards and "tokens/manifest.json" in names and "tokens/tokenizer.json" in names
    assert set(names) <= set(old_names)
    manifest = json.loads(object_store().get_bytes(names["tokens/manifest.json"].object_key))
    assert manifest["metadata"]["documents"] == cleaned_new.record_count == 8
    assert sum(s["num_documents"] for s in manifest["splits"].values()) == 8
    assert names["tokens/tokenizer.json"].sha256 == old_names["tokens/tokenizer.json"].sha256
    assert Job.objects.filter(kind="data_pipeline").count() == 1
    assert erasure_advance(request) == "completed"

    request.refresh_from_db()
    assert request.state == "completed"
    for old in (support, cleaned):
        old.refresh_from_db()
        assert old.state == "erased" and old.erasure_request_id == request.pk
        assert old.erased_by == team.compliance and old.erased_at is not None
        assert old.preview is None
    assert not [key for key in old_keys if object_store().exists(key)]
    assert not ErasureHold.objects.filter(released_at=None).exists()
    assert {f.model_version_id for f in request.model_flags.all()} == {trained.pk, tuned.pk}

    certificate = request.certificate
    assert certificate["reviewer"]["username"] == team.compliance.username
    found = {row["label"]: row["records"] for row in certificate["found"]}
    assert found == {"support v1": 4, "support v2": 4}
    assert {e["old_version"] for e in certificate["rewritten"]} == {support.pk, cleaned.pk}
    (cut,) = [e for e in certificate["rewritten"] if e["old_version"] == cleaned.pk]
    assert cut["rebuild"] == [] and cut["token_shards"]["method"] == "cut"
    assert sum(cut["token_shards"]["documents_removed"].values()) == 4
    statuses = {f["name"]: f["status"] for f in cut["files"]}
    assert all(statuses[f"tokens/{p}"] == "unchanged" for p in cut["token_shards"]["unchanged"])
    assert {
        n for n, status in statuses.items() if status == "rewritten" and n.endswith(".bin")
    } <= {f"tokens/{p}" for p in cut["token_shards"]["affected"]}
    assert set(statuses) == set(names)
    assert certificate["rebuilds"] == []
    assert {d["key"] for d in certificate["deleted"]} == set(old_keys)
    assert {d["dataset_version"] for d in certificate["deleted"]} == {support.pk, cleaned.pk}
    assert all(len(d["sha256"]) == 64 for d in certificate["deleted"])
    assert certificate["residue_scan"]["clean"] is True
    assert certificate["residue_scan"]["object_versions_read"] > 0
    assert {m["id"] for m in certificate["models_flagged"]} == {trained.pk, tuned.pk}
    assert certificate["audit_events"] and certificate["chain_head"]["length"] > 0
    assert certificate["found_nowhere"] is False
    assert ANN not in _everything_stored_about(request)
    # Rule 4's gate: nothing is held any more, the new versions are ready to train on.
    assert DatasetVersion.objects.filter(dataset=support.dataset, state="ready").count() == 2

    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/datasets/{support.dataset_id}/v1/")
    assert page.status_code == 200
    assert f"erasure request #{request.pk}: its objects" in page.content.decode()
    page = client.get(f"/projects/{team.project.pk}/datasets/{support.dataset_id}/v3/")
    assert f"derived from v1 by erasure request #{request.pk}" in page.content.decode()
    assert "Run data pipeline" in page.content.decode()  # raw data again: it can be cleaned
    client.force_login(team.owner)
    detail = client.get(f"/projects/{team.project.pk}/subject-requests/{request.pk}/")
    assert detail.status_code == 200, detail.status_code
    text = detail.content.decode()
    assert "<td>scanned</td>" in text and "rewritten as support v3" in text


@pytest.mark.slow
def test_shards_that_cannot_be_cut_exactly_are_rebuilt_by_the_pipeline(
    team, file_request, django_capture_on_commit_callbacks, run_on_worker, make_ready_version
):
    from controlplane.datasets.services import dataset_create
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    log = _support_log()["log.jsonl"].decode().splitlines()
    pasted = json.loads(log[1])  # bob's ticket quotes a chat log's end-of-text marker
    pasted["text"] += " <|endoftext|> (pasted from the chat)"
    log[1] = json.dumps(pasted)
    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Chats",
        slug="chats",
        kind="text",
        subject_field="customer",
    )
    raw = make_ready_version(
        dataset, team.engineer, {"log.jsonl": ("\n".join(log) + "\n").encode()}
    )
    params = {
        "dataset_version_id": raw.pk,
        "val_fraction": 0.25,
        "pipeline": {"stages": ["normalize"]},
    }
    pipeline = run_on_worker(
        job_create(project=team.project, kind="data_pipeline", actor=team.engineer, params=params)
    )
    assert pipeline.state == "succeeded", pipeline.error
    cleaned = pipeline.produced_versions.get()

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    job = run_on_worker(Job.objects.get(kind="erasure"))
    assert job.state == "succeeded", job.error
    raw_new, cleaned_new = job.produced_versions.order_by("number")
    assert not cleaned_new.files.filter(name__startswith="tokens/").exists()
    waiting = erasure_advance(request)
    rebuild = Job.objects.get(kind="data_pipeline", params__dataset_version_id=raw_new.pk)
    assert waiting == f"waiting for job {rebuild.pk}"
    assert run_on_worker(rebuild).state == "succeeded"
    assert erasure_advance(request) == "completed"
    request.refresh_from_db()
    (entry,) = [e for e in request.certificate["rewritten"] if e["old_version"] == cleaned.pk]
    assert entry["rebuild"] == ["tokens"] and entry["token_shards"]["method"] == "rebuild"
    assert "end-of-text" in entry["token_shards"]["reason"]
    assert [r["job_id"] for r in request.certificate["rebuilds"]] == [rebuild.pk]


def test_the_model_version_page_says_it_was_trained_on_erased_data(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker, client
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from tests.platform.policies.compliance_fixtures import model_version

    trained = model_version(team.project, team.engineer, datasets=[support])
    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    run_on_worker(Job.objects.get(kind="erasure"))
    assert erasure_advance(request) == "completed"
    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/models/{trained.model.name}/v{trained.number}/")
    assert f"Trained on erased data (erasure request #{request.pk}," in page.content.decode()


def test_an_identifier_found_nowhere_completes_with_a_certificate_saying_so(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    request = _approve(
        team,
        file_request,
        django_capture_on_commit_callbacks,
        [{"type": "email", "value": "zed@example.com"}],
    )
    job = run_on_worker(Job.objects.get(kind="erasure"))
    assert job.state == "succeeded" and not job.produced_versions.exists()
    assert erasure_advance(request) == "completed"
    request.refresh_from_db()
    support.refresh_from_db()
    assert support.state == "ready"
    assert request.certificate["found_nowhere"] is True
    assert request.certificate["rewritten"] == [] and request.certificate["deleted"] == []
    assert request.certificate["residue_scan"]["clean"] is True


def test_a_store_failing_mid_delete_is_retried_and_never_reads_completed(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker, monkeypatch
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.storage import object_store
    from workers.storage import StorageError

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    run_on_worker(Job.objects.get(kind="erasure"))
    store = type(object_store())
    original = store.delete_all_versions

    def failing(self, key):
        raise StorageError("the store is down")

    monkeypatch.setattr(store, "delete_all_versions", failing)
    with pytest.raises(StorageError):
        erasure_advance(request)
    request.refresh_from_db()
    assert request.state == "in_progress" and "deleted" not in request.progress["done"]
    monkeypatch.setattr(store, "delete_all_versions", original)
    assert erasure_advance(request) == "completed"
    support.refresh_from_db()
    assert support.state == "erased"


def test_residue_left_in_the_store_fails_the_request_with_where(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.storage import object_store

    object_store().put_bytes(
        f"projects/{team.project.pk}/notes/export.txt", f"call {ANN} back\n".encode()
    )
    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    run_on_worker(Job.objects.get(kind="erasure"))
    assert erasure_advance(request) == "failed"
    request.refresh_from_db()
    assert request.state == "failed"
    assert f"projects/{team.project.pk}/notes/export.txt" in request.failure_reason
    assert ANN not in request.failure_reason.lower() and not request.certificate


def test_members_cannot_start_erasure_jobs_through_the_jobs_api(team, api):
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "erasure", "params": {}},
        format="json",
    )
    assert response.status_code == 400
    assert "approved erasure request" in json.dumps(response.json())


def _s3_ready_version(dataset, user, files: dict[str, bytes]):
    """A version uploaded as a browser does: each part PUT to its presigned URL."""
    import hashlib

    import requests

    from controlplane.datasets.services import (
        DeclaredFile,
        dataset_version_complete,
        dataset_version_start,
    )
    from controlplane.storage import object_store

    declared = [DeclaredFile(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in files.items()]
    version, uploads = dataset_version_start(dataset=dataset, actor=user, files=declared)
    parts = {}
    for upload in uploads:
        url = object_store().presigned_part_url(upload.file.object_key, upload.file.upload_id, 1)
        answer = requests.put(url, data=files[upload.file.name], timeout=30)
        answer.raise_for_status()
        parts[upload.file.pk] = [(1, answer.headers["ETag"])]
    return dataset_version_complete(version=version, actor=user, parts=parts)


def test_on_a_versioned_s3_bucket_no_version_of_the_old_objects_is_left(
    team,
    s3_platform_store,
    file_request,
    django_capture_on_commit_callbacks,
    run_on_worker,
):
    from controlplane.datasets.services import dataset_create
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Support",
        slug="support",
        kind="text",
        subject_field="customer",
    )
    support = _s3_ready_version(dataset, team.engineer, _support_log())
    old_keys = [f.object_key for f in support.files.all()]
    assert all(s3_platform_store.list_versions(key) for key in old_keys)
    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    assert run_on_worker(Job.objects.get(kind="erasure")).state == "succeeded"
    assert erasure_advance(request) == "completed"
    # Neither an old version nor a delete marker: every stored version went by its id.
    assert [s3_platform_store.list_versions(key) for key in old_keys] == [[] for _ in old_keys]
    request.refresh_from_db()
    deleted = {d["key"]: d["object_versions"] for d in request.certificate["deleted"]}
    assert set(deleted) == set(old_keys) and all(deleted.values())
    assert request.certificate["residue_scan"]["clean"] is True


def test_an_approval_whose_hook_was_lost_is_started_by_the_beat(
    team, support, file_request, django_capture_on_commit_callbacks, monkeypatch
):
    from controlplane.gdpr import services
    from controlplane.gdpr.erasure import erasures_advance_all
    from controlplane.jobs.models import Job

    monkeypatch.setattr(services, "on_approved", [])
    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    assert request.state == "approved" and not Job.objects.filter(kind="erasure").exists()
    assert erasures_advance_all() == {request.pk: f"waiting for job {Job.objects.get().pk}"}
    request.refresh_from_db()
    assert request.state == "in_progress" and request.progress["job_id"]


def test_a_job_reading_an_old_version_is_waited_for(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    reader = Job.objects.create(
        project=team.project,
        kind="data_pipeline",
        state="running",
        params={"dataset_version_id": support.pk},
        created_by=team.engineer,
    )
    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    run_on_worker(Job.objects.get(kind="erasure"))
    assert (
        erasure_advance(request) == f"waiting for job {reader.pk} (it reads a version being erased)"
    )
    support.refresh_from_db()
    assert support.state == "ready"
    Job.objects.filter(pk=reader.pk).update(state="succeeded")
    assert erasure_advance(request) == "completed"
    assert erasure_advance(request) == "completed"  # a later pass changes nothing


def test_a_worker_killed_mid_publish_is_run_again_to_completion(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker, monkeypatch
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.storage import object_store
    from workers.runtime import JobContext
    from workers.storage.retrying import StorageUnavailableError

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    job = Job.objects.get(kind="erasure")
    publish = JobContext.publish

    def store_goes_away(self, path, name):
        raise StorageUnavailableError("the store went away mid-publish")

    monkeypatch.setattr(JobContext, "publish", store_goes_away)
    job = run_on_worker(job)
    # An infrastructure failure: the platform runs the job again as its next attempt.
    assert job.state == "queued" and job.attempt == 2, (job.state, job.error)
    assert not job.produced_versions.exists()
    request.refresh_from_db()
    assert request.state == "in_progress"
    assert erasure_advance(request) == f"waiting for job {job.pk}"
    monkeypatch.setattr(JobContext, "publish", publish)
    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    (new,) = job.produced_versions.all()
    body = object_store().get_bytes(new.files.get().object_key).decode()
    assert ANN not in body and body.count("\n") == 8
    assert "attempt-2/" in new.files.get().object_key
    assert erasure_advance(request) == "completed"


def test_a_failed_erasure_job_fails_the_request_and_keeps_the_holds(
    team, support, file_request, django_capture_on_commit_callbacks
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.policies.models import ErasureHold

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    Job.objects.filter(kind="erasure").update(state="failed", error=f"could not read {ANN}")
    assert erasure_advance(request) == "failed"
    request.refresh_from_db()
    assert request.state == "failed" and "[subject]" in request.failure_reason
    assert ANN not in request.failure_reason.lower()
    # The data may still hold the subject: training on it stays blocked.
    assert ErasureHold.objects.filter(released_at=None, dataset_version=support).exists()


def test_identifiers_sealed_with_a_retired_key_fail_instead_of_finding_nobody(
    team, support, file_request, django_capture_on_commit_callbacks, settings
):
    from controlplane.jobs.models import Job

    request = file_request(identifiers=[{"type": "email", "value": ANN}])
    settings.SECRET_KEY = "a-new-secret-key-without-its-fallback-0123456789"
    from controlplane.gdpr.services import request_approve

    with django_capture_on_commit_callbacks(execute=True):
        request_approve(request=request, actor=team.compliance, reason="checked the identity")
    request.refresh_from_db()
    assert request.state == "failed" and "SECRET_KEY_FALLBACKS" in request.failure_reason
    assert not Job.objects.filter(kind="erasure").exists()


def test_every_role_sees_the_erasure_job_and_both_versions_and_outsiders_get_404(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker, client
):
    from django.urls import reverse

    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    request = _approve(
        team, file_request, django_capture_on_commit_callbacks, [{"type": "email", "value": ANN}]
    )
    job = run_on_worker(Job.objects.get(kind="erasure"))
    assert erasure_advance(request) == "completed"
    support.refresh_from_db()
    rewritten = job.produced_versions.get()
    pages = [
        reverse("job-detail", args=[team.project.pk, job.pk]),
        *(
            reverse("dataset-version", args=[team.project.pk, v.dataset_id, v.number])
            for v in (support, rewritten)
        ),
    ]
    for role in ("owner", "engineer", "viewer", "compliance"):
        client.force_login(getattr(team, role))
        for page in pages:
            assert client.get(page).status_code == 200, (role, page)
    client.force_login(team.outsider)
    assert [client.get(page).status_code for page in pages] == [404] * len(pages)
