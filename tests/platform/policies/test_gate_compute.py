"""Rule 7 (compute): allowed queues and GPUs per job, at creation and at resume."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def tokens(make_dataset, uploaded, derived):
    return derived(uploaded(make_dataset()))


def test_a_job_on_an_allowed_queue_is_created(team, set_policy, tokens, pretrain, decisions):
    set_policy(compute={"enabled": True, "allowed_queues": ["cpu"], "max_gpus_per_job": 0})

    job = pretrain(tokens)

    assert job.queue == "cpu"
    (event,) = decisions("policy.allowed", job)
    assert event.payload["rules"] == ["compute"] and event.payload["policy"] == "project v1"


def test_a_job_on_a_queue_the_project_may_not_use_is_refused(
    team, set_policy, tokens, pretrain, settings, decisions
):
    from controlplane.jobs.models import Job
    from controlplane.policies.errors import PolicyDenied

    set_policy(compute={"enabled": True, "allowed_queues": ["cpu"], "max_gpus_per_job": 0})
    pretrain(tokens)  # the fixture's queue (cpu) passes
    settings.TRAINING_QUEUE = "gpu"

    with pytest.raises(PolicyDenied) as refused:
        pretrain(tokens)

    reasons = [d.reason for d in refused.value.decision.denials]
    assert reasons == [
        "pretrain jobs would run on the gpu queue, which the project may not use (allowed: cpu)",
        "the job asks for 1 GPU(s); the policy allows 0 per job",
    ]
    assert Job.objects.filter(kind="pretrain").count() == 1
    # A job that does not exist yet: the refusal is on the project's timeline.
    (event,) = decisions("policy.denied", ("project", team.project.pk))
    assert event.payload["gate"] == "job.create"


def test_more_gpus_than_the_policy_allows_is_refused(team, set_policy, tokens, pretrain, settings):
    from controlplane.policies.errors import PolicyDenied

    settings.TRAINING_QUEUE = "gpu"
    set_policy(compute={"enabled": True, "max_gpus_per_job": 1})
    assert pretrain(tokens).queue == "gpu"  # one GPU: within the limit

    set_policy(compute={"max_gpus_per_job": 0})
    with pytest.raises(PolicyDenied, match="asks for 1 GPU"):
        pretrain(tokens)


def test_the_gpu_count_is_devices_times_nodes_when_the_job_says():
    from controlplane.policies.plans import gpu_count

    assert gpu_count("gpu", {"resources": {"devices": 4, "nodes": 2}}) == 8
    assert gpu_count("gpu", {"resources": {"devices": 4}}) == 4
    assert gpu_count("gpu", {}) == 1
    assert gpu_count("cpu", {}) == 0
    assert gpu_count("gpu", {"resources": {"devices": "many"}}) == 1


def test_the_api_answers_409_for_a_refused_queue(team, api, set_policy, make_upload):
    set_policy(compute={"enabled": True, "allowed_queues": ["gpu"]})
    upload = make_upload(team.project, team.engineer, b"a\nb\n")

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "inspect", "params": {"upload_id": upload.pk}},
        format="json",
    )

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    (denial,) = error["denials"]
    assert denial["rule"] == "compute" and denial["rule_number"] == 7
    assert "cpu queue" in denial["reason"]
    assert "ask a compliance officer to allow the queue" in denial["fix"]


# --- resume ------------------------------------------------------------------------------


@pytest.fixture
def failed_gpu_job(team, tokens):
    """A pre-training job that failed on the gpu queue after writing a checkpoint."""
    from controlplane.jobs.models import Job, JobArtifact

    job = Job.objects.create(
        project=team.project,
        kind="pretrain",
        state="failed",
        queue="gpu",
        params={"dataset_version_id": tokens.pk},
        created_by=team.engineer,
    )
    checkpoint = JobArtifact.objects.create(
        job=job,
        kind="checkpoint",
        name="checkpoints/step-10.pt",
        step=10,
        object_key=f"{job.output_prefix}attempt-1/checkpoints/step-10.pt",
        sha256="0" * 64,
        size=1,
    )
    return job, checkpoint


def test_a_resume_the_policy_now_refuses_needs_a_waiver_on_the_job(
    team, api, set_policy, failed_gpu_job, waive, decisions
):
    job, checkpoint = failed_gpu_job
    set_policy(compute={"enabled": True, "allowed_queues": ["cpu"]})
    url = f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/resume/"
    engineer = api(team.engineer)

    refused = engineer.post(url, {"checkpoint_id": checkpoint.pk}, format="json")
    assert refused.status_code == 409, refused.content
    assert refused.json()["error"]["denials"][0]["subject"]["id"] == job.pk
    job.refresh_from_db()
    assert job.state == "failed" and job.attempt == 1
    assert decisions("policy.denied", job)

    waive("compute", "job", job.pk, days=-1)  # expired: still refused
    assert engineer.post(url, {"checkpoint_id": checkpoint.pk}, format="json").status_code == 409

    waiver = waive("compute", "job", job.pk)
    resumed = engineer.post(url, {"checkpoint_id": checkpoint.pk}, format="json")
    assert resumed.status_code == 200, resumed.content
    assert resumed.json()["state"] == "queued"
    (allowed,) = decisions("policy.allowed", job)
    assert allowed.payload["waived"][0]["waiver"] == waiver.pk


def test_the_job_page_shows_a_refused_resume_as_a_banner(team, client, set_policy, failed_gpu_job):
    job, checkpoint = failed_gpu_job
    set_policy(compute={"enabled": True, "allowed_queues": ["cpu"]})
    client.force_login(team.engineer)

    response = client.post(
        f"/projects/{team.project.pk}/jobs/{job.pk}/resume/",
        {"checkpoint_id": checkpoint.pk},
        follow=True,
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Rule 7: Compute" in html
    assert "pretrain jobs would run on the gpu queue" in html
    # Shown once: the next page has no banner.
    again = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "Rule 7: Compute" not in again
