"""`register_as`: a training job registers its model when it succeeds."""

from __future__ import annotations

import pytest

from controlplane.audit.models import AuditEvent
from controlplane.jobs.requests import JobRequestError
from controlplane.registry.models import ModelVersion, VersionState
from workers.protocol import EventType, JobEvent

pytestmark = pytest.mark.django_db


def finish(job, *events, result=None):
    """Apply started, the given events, then finished, as the control worker would."""
    from controlplane.jobs.services import job_apply_event

    seq = 0
    for event_type, payload in [
        (EventType.STARTED, {"worker": "w1"}),
        *events,
        (EventType.FINISHED, {"result": result or {"val_loss": 1.7}}),
    ]:
        job_apply_event(
            JobEvent(job_id=job.pk, attempt=1, seq=seq, type=event_type, payload=payload)
        )
        seq += 1
    job.refresh_from_db()
    return job


def test_register_as_is_validated_at_job_creation(team):
    from controlplane.jobs.kinds import validate_job_request

    with pytest.raises(JobRequestError) as caught:
        validate_job_request(project=team.project, kind="gan", params={"register_as": "a b"})
    assert "register_as" in caught.value.errors

    request = validate_job_request(
        project=team.project, kind="gan", params={"register_as": "digits", "preset": "tiny"}
    )
    assert request.params["register_as"] == "digits"

    with pytest.raises(JobRequestError) as caught:
        validate_job_request(project=team.project, kind="inspect", params={"register_as": "x"})
    assert caught.value.errors["register_as"] == ["unknown parameter"]


def test_a_job_with_register_as_registers_when_it_succeeds(
    team, make_model_job, commit_hooks, sent_jobs, finish_sent
):
    job = make_model_job("gan", state="queued", params={"register_as": "digits"})

    finish(job, result={"metrics": {"train/loss": 0.5}})

    version = ModelVersion.objects.get()
    assert (version.model.name, version.number, version.source_job) == ("digits", 1, job)
    assert version.created_by == team.engineer  # the job's creator
    assert version.metrics == {"train/loss": 0.5}
    registering = AuditEvent.objects.get(action="model_version.registering")
    succeeded = AuditEvent.objects.get(action="job.succeeded")
    assert registering.actor_id == team.engineer.pk
    assert succeeded.seq < registering.seq  # in event order: the job's events first
    finish_sent()
    version.refresh_from_db()
    assert version.state == VersionState.READY


def test_a_registration_that_cannot_be_made_leaves_the_job_succeeded(team, make_model_job):
    from controlplane.registry.services import model_create

    model_create(project=team.project, actor=team.owner, name="gpt", task="text-generation")
    job = make_model_job("vae", state="queued", params={"register_as": "gpt"})

    job = finish(job)

    assert job.state == "succeeded"
    assert not ModelVersion.objects.exists()
    failed = AuditEvent.objects.get(action="model_version.register_failed")
    assert "text-generation model" in failed.payload["error"]


def test_the_jobs_api_takes_register_as_and_refuses_a_bad_name(team, api):
    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    client = api(team.engineer)

    bad = client.post(
        url, {"kind": "vae", "params": {"preset": "tiny", "register_as": "no/slash"}}, format="json"
    )
    assert bad.status_code == 400
    assert "params.register_as" in bad.json()["error"]["fields"]

    good = client.post(
        url, {"kind": "vae", "params": {"preset": "tiny", "register_as": "digits"}}, format="json"
    )
    assert good.status_code == 201, good.content
    assert good.json()["params"]["register_as"] == "digits"
