"""After an erasure: rule 4's `running_jobs` (wait for, or cancel, the jobs reading a
version being erased), and the Retrain action of a model version flagged "trained on
erased data" (its source job again, on the version the erasure derived)."""

from __future__ import annotations

import pytest

from tests.platform.gdpr.test_gdpr_erasure import ANN, _approve, _support_log
from tests.platform.policies import compliance_fixtures as fixtures

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them

EMAIL = [{"type": "email", "value": ANN}]


@pytest.fixture(name="support")
def support_fixture(team, make_ready_version):
    """The support log of test_gdpr_erasure.py: Ann in 4 of its 12 tickets."""
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


def _reader(team, version, state: str):
    from controlplane.jobs.models import Job

    return Job.objects.create(
        project=team.project,
        kind="data_pipeline",
        state=state,
        params={"dataset_version_id": version.pk},
        created_by=team.engineer,
    )


# -- running_jobs ----------------------------------------------------------------------------


def test_by_default_the_erasure_waits_for_a_job_reading_an_old_version(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker
):
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    fixtures.set_policy(team.project, team.compliance, {"pending_erasure": {"enabled": True}})
    reader = _reader(team, support, "running")
    request = _approve(team, file_request, django_capture_on_commit_callbacks, EMAIL)
    run_on_worker(Job.objects.get(kind="erasure"))

    assert erasure_advance(request).startswith(f"waiting for job {reader.pk}")
    reader.refresh_from_db()
    assert reader.state == "running" and reader.cancel_requested_at is None


def test_with_cancel_the_erasure_cancels_the_readers_with_itself_as_the_reason(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker
):
    from controlplane.audit.models import AuditEvent
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job

    fixtures.set_policy(
        team.project,
        team.compliance,
        {"pending_erasure": {"enabled": True, "running_jobs": "cancel"}},
    )
    queued = _reader(team, support, "queued")
    running = _reader(team, support, "running")
    request = _approve(team, file_request, django_capture_on_commit_callbacks, EMAIL)
    run_on_worker(Job.objects.get(kind="erasure"))

    assert erasure_advance(request) == "completed"

    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.state == "cancelled"
    assert running.cancel_requested_at is not None  # it stops at its next check
    request.refresh_from_db()
    assert request.progress["cancelled_jobs"] == [queued.pk, running.pk]
    assert "readers_cancelled" in request.progress["done"]
    events = AuditEvent.objects.filter(
        action__in=["job.cancelled", "job.cancel_requested"]
    ).order_by("seq")
    assert [(e.action, e.artifact_id) for e in events] == [
        ("job.cancelled", str(queued.pk)),
        ("job.cancel_requested", str(running.pk)),
    ]
    for event in events:
        assert event.payload["request"] == request.pk
        assert event.payload["reason"].startswith(f"erasure request #{request.pk}")


# -- retrain -------------------------------------------------------------------------------


@pytest.fixture
def erased(
    team, support, file_request, django_capture_on_commit_callbacks, run_on_worker, settings
):
    """A model version pre-trained on the cleaned support log, then the erasure of Ann
    (which rewrites both versions, cutting Ann's documents out of the cleaned one's token
    shards): (the model version, the request, the rewritten token version)."""
    from controlplane.gdpr.erasure import erasure_advance
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    settings.TRAINING_QUEUE = "cpu"
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
    cleaned = pipeline.produced_versions.get()
    source = job_create(
        project=team.project,
        kind="pretrain",
        actor=team.engineer,
        params={"dataset_version_id": cleaned.pk},
        experiment="support-bot",
    )
    Job.objects.filter(pk=source.pk).update(state="succeeded")  # trained (no worker here)
    version = fixtures.model_version(team.project, team.engineer, datasets=[cleaned, support])
    version.source_job = source
    version.save(update_fields=["source_job"])

    request = _approve(team, file_request, django_capture_on_commit_callbacks, EMAIL)
    erasure = run_on_worker(Job.objects.get(kind="erasure"))
    assert erasure_advance(request) == "completed"  # the shards were cut: nothing to rebuild
    assert not Job.objects.filter(kind="data_pipeline").exclude(pk=pipeline.pk).exists()
    request.refresh_from_db()
    return version, request, erasure.produced_versions.get(parents=cleaned)


def _retrain_url(team, version) -> str:
    return (
        f"/api/v1/projects/{team.project.pk}/models/{version.model.name}/versions/"
        f"{version.number}/retrain/"
    )


def test_retrain_starts_the_source_job_on_the_rewritten_data(team, erased, api):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job

    version, request, rebuilt = erased

    response = api(team.engineer).post(_retrain_url(team, version))

    assert response.status_code == 201, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.kind == "pretrain" and job.state == "queued"
    assert job.params["dataset_version_id"] == rebuilt.pk
    assert job.experiment == "support-bot"
    source = version.source_job

    def same(params):
        return {k: v for k, v in params.items() if k not in ("dataset_version_id", "input_names")}

    assert same(job.params) == same(source.params)  # the same job, on the new data
    (event,) = AuditEvent.objects.filter(action="model_version.retrain_started")
    assert event.artifact_id == str(version.pk)
    assert event.payload["job_id"] == job.pk
    assert event.payload["requests"] == [request.pk]
    assert event.payload["dataset_version"]["new"] == rebuilt.pk


def test_the_version_page_has_the_retrain_button_and_it_starts_the_job(team, erased, client):
    from controlplane.jobs.models import Job

    version, _request, rebuilt = erased
    page_url = f"/projects/{team.project.pk}/models/{version.model.name}/v{version.number}/"
    client.force_login(team.owner)

    assert "<button>Retrain</button>" in client.get(page_url).content.decode()
    response = client.post(page_url + "retrain/")

    job = Job.objects.get(kind="pretrain", params__dataset_version_id=rebuilt.pk)
    assert response.status_code == 302 and response["Location"].endswith(f"/jobs/{job.pk}/")


def test_only_owners_and_engineers_retrain(team, erased, api):
    version, _request, _rebuilt = erased
    for user in (team.viewer, team.compliance):
        assert api(user).post(_retrain_url(team, version)).status_code == 403
    assert api(team.outsider).post(_retrain_url(team, version)).status_code == 404
    assert api(team.owner).post(_retrain_url(team, version)).status_code == 201


def test_a_version_not_flagged_is_a_409(team, api):
    version = fixtures.model_version(team.project, team.engineer)

    response = api(team.engineer).post(_retrain_url(team, version))

    assert response.status_code == 409
    assert "not flagged as trained on erased data" in response.json()["error"]["message"]


def _flagged_without_rewrite(team, *, params: dict):
    """A version flagged by a request whose erasure derived nothing (yet)."""
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.gdpr.models import ErasedDataFlag, SubjectRequest
    from controlplane.jobs.models import Job

    version = fixtures.model_version(team.project, team.engineer)
    Job.objects.filter(pk=version.source_job_id).update(params=params)
    now = timezone.now()
    request = SubjectRequest.objects.create(
        project=team.project,
        kind="erasure",
        legal_basis="Art. 17",
        state="in_progress",
        filed_by=team.engineer,
        received_at=now,
        deadline_at=now + timedelta(days=30),
        progress={"versions": [{"old": params.get("dataset_version_id", 0), "new": 0}]},
    )
    ErasedDataFlag.objects.create(model_version=version, request=request)
    return version, request


def test_no_rewritten_data_is_a_409(team, support, api):
    version, request = _flagged_without_rewrite(team, params={"dataset_version_id": support.pk})

    response = api(team.engineer).post(_retrain_url(team, version))

    assert response.status_code == 409
    assert response.json()["error"]["message"].startswith(
        f"no rewritten data exists for gpt v{version.number}: erasure request #{request.pk}"
    )


def test_a_post_training_job_whose_base_needs_retraining_is_a_409(team, support, api):
    from controlplane.gdpr.models import ErasedDataFlag
    from controlplane.jobs.models import Job

    base_version, request = _flagged_without_rewrite(
        team, params={"dataset_version_id": support.pk}
    )
    tuned = fixtures.model_version(team.project, team.engineer, name="tuned")
    Job.objects.filter(pk=tuned.source_job_id).update(
        kind="sft",
        params={"base_job_id": base_version.source_job_id, "dataset_version_id": support.pk},
    )
    ErasedDataFlag.objects.create(model_version=tuned, request=request)

    response = api(team.engineer).post(_retrain_url(team, tuned))

    assert response.status_code == 409
    assert "retrain the base model first" in response.json()["error"]["message"]
